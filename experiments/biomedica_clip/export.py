"""`export`: the fine-tuned model of a run as an open_clip `local-dir:` directory.

    medrepro biomedica_clip export [--run DIR] [--checkpoint best|final|PATH] --out DIR

    <export>/open_clip_config.json        `model_cfg` (the open_clip config the run trained) and
                                          `preprocess_cfg` (the transform evaluate uses)
    <export>/open_clip_model.safetensors  the model's weights only: no optimizer or scaler state, no `module.`
    <export>/tokenizer*                   the Hugging Face tokenizer, when the model has one (open_clip's own
                                          BPE tokenizer needs no file)
    <export>/config.json                  the Hugging Face text tower's config, when the model has one
    <export>/README.md                    the model card

`open_clip.create_model_and_transforms("local-dir:DIR")` and `open_clip.get_tokenizer("local-dir:DIR")`
load it; nothing else from the run, the repository or a hub is read. A Hugging Face text tower is the one
exception to "anywhere": open_clip 3.3.0 builds it from `AutoConfig.from_pretrained(text_cfg.hf_model_name)`,
which transformers resolves from the working directory, so `hf_model_name` holds the export's absolute
path and a moved copy is loaded with `text_cfg` pointing at its new place (the model card shows how).

Which checkpoint: open_clip_train writes `epoch_N.pt` (model, optimizer, scaler) per saved epoch and keeps
no best one, and its validation set is the held-out shard that `evaluate` reports on, so choosing an
epoch by it would choose on the test set. `best` and `final` are both the last epoch's checkpoint, the
weights `evaluate` scores (`best` only of a finished run); any other epoch by its path.
"""

import argparse
import copy
import json
import re
from pathlib import Path

from experiments.biomedica_clip.config import BiomedicaClipConfig, checkpoint_path, logs_dir
from medrepro.errors import DataError
from medrepro.export import model_dir, refuse_unfinished
from medrepro.rundir import RunDir

OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def chosen_checkpoint(cfg: BiomedicaClipConfig, run: RunDir, which: str) -> Path:
    """`best` and `final`: the last epoch's checkpoint (see the module docstring); otherwise the path given."""
    return checkpoint_path(run, cfg.train.epochs) if which in ("best", "final") else Path(which)


def export_command(cfg: BiomedicaClipConfig, args: argparse.Namespace) -> Path:
    """`export`: checkpoint `--checkpoint` of the run `--run` (default: the variant's run), into `--out`."""
    run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
    refuse_unfinished(run, args, "biomedica_clip")
    ckpt = chosen_checkpoint(cfg, run, args.checkpoint)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} not found: train the run to its last epoch, or name an "
                        "epoch_N.pt with --checkpoint PATH")
    out = export(cfg, run, ckpt, args.out)
    print(f"exported {ckpt} to {out}/: open_clip.create_model_and_transforms(\"local-dir:{out.resolve()}\")")
    return out


def export(cfg: BiomedicaClipConfig, run: RunDir, ckpt: Path, out: Path) -> Path:
    """Write the model of the open_clip_train checkpoint `ckpt`, loaded as `evaluate` loads it, with a model
    card naming `run`'s validation numbers of that epoch, as the directory `out`."""
    import open_clip

    from experiments.biomedica_clip.model import TINY_NAME, load

    model, _, tokenizer = load(cfg, ckpt)
    # The config open_clip built it from (load registers the tiny model's).
    model_cfg = local_model_cfg(open_clip.get_model_config(TINY_NAME if cfg.model.tiny else cfg.model.name), out)
    card = model_card(cfg, ckpt, model_cfg, validation_at(run, ckpt), str(Path(out).resolve()))
    return write_model_dir(model, tokenizer, model_cfg, out, card)


def local_model_cfg(model_cfg: dict, out: Path) -> dict:
    """`model_cfg` as written to `out`: a Hugging Face text tower's config read from there (absolute, see
    the module docstring) and never its pretrained weights."""
    model_cfg = copy.deepcopy(model_cfg)
    if model_cfg["text_cfg"].get("hf_model_name"):
        model_cfg["text_cfg"].update(hf_model_name=str(Path(out).resolve()), hf_model_pretrained=False)
    return model_cfg


def write_model_dir(model, tokenizer, model_cfg: dict, directory: Path, card: str) -> Path:
    """An open_clip local directory: weights (CPU, contiguous), config and preprocessing (open_clip's own
    writer), a Hugging Face tokenizer's and text tower's files when there are such, and `card`."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.tokenizer import HFTokenizer
    from safetensors.torch import save_file

    with model_dir(directory) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        save_config_for_hf(model, tmp / OPEN_CLIP_CONFIG, model_cfg)
        if isinstance(tokenizer, HFTokenizer):
            tokenizer.save_pretrained(tmp)
        if model_cfg["text_cfg"].get("hf_model_name"):
            model.text.transformer.config.save_pretrained(tmp)
        (tmp / "README.md").write_text(card)
    return Path(directory)


def validation_at(run: RunDir, ckpt: Path) -> dict[str, float]:
    """open_clip_train's validation numbers (checkpoints/results.jsonl) of the checkpoint's epoch, when the
    checkpoint is one of `run`'s epoch_N.pt; else none."""
    checkpoints = logs_dir(run) / "checkpoints"
    match = _EPOCH_FILE.fullmatch(ckpt.name)
    results = checkpoints / "results.jsonl"
    if match is None or ckpt.resolve().parent != checkpoints.resolve() or not results.is_file():
        return {}
    found: dict[str, float] = {}
    for line in results.read_text().splitlines():
        record = json.loads(line)
        if record.get("epoch") == int(match.group(1)):  # a resumed epoch's repeat: the last one counts
            found = {k: v for k, v in record.items() if k not in ("epoch", "num_samples")}
    return found


def loading_code(located: str, hf_text: bool) -> str:
    """The Python that loads the directory `located` with open_clip alone."""
    if not hf_text:
        return f"""import open_clip

path = {located!r}  # this directory
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{path}}")
model.eval()
tokenizer = open_clip.get_tokenizer(f"local-dir:{{path}}")
"""
    return f"""import json
from pathlib import Path

import open_clip

path = {located!r}  # this directory
# open_clip reads the Hugging Face text tower's config from text_cfg.hf_model_name: point it at where the
# directory is now (as written, it names the place the export was written to).
text_cfg = json.loads(Path(path, "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{path}}",
                                                             text_cfg={{**text_cfg, "hf_model_name": path}})
model.eval()
tokenizer = open_clip.get_tokenizer(f"local-dir:{{path}}")
"""


def model_card(cfg: BiomedicaClipConfig, ckpt: Path, model_cfg: dict, validation: dict[str, float],
               located: str) -> str:
    """README.md of the export written to `located`: what the model is, how to load it, data, training
    settings, open_clip_train's validation numbers of the exported epoch, limits."""
    t, s = cfg.train, cfg.data.synthetic
    hf_text = bool(model_cfg["text_cfg"].get("hf_model_name"))
    if cfg.model.tiny:
        start = ("the smoke profile's tiny open_clip CLIP (`model.tiny`), from seeded random weights written by "
                 "`prepare`")
    else:
        weights = f"open_clip's `{cfg.model.pretrained}` weights" if cfg.model.pretrained else "random weights"
        start = f"open_clip's `{cfg.model.name}` from {weights}"
    if cfg.data.source == "synthetic":
        data = (f"Synthetic BIOMEDICA-style WebDataset shards: {s.train_shards} training shards of "
                f"{s.samples_per_shard} image-caption pairs and a held-out shard of {s.heldout_samples} pairs of other "
                f"classes and articles, {s.image_size} px (smoke profile: its numbers only show that the pipeline "
                "learns)")
    else:
        weights = f", sources weighted {cfg.data.upsampling}" if cfg.data.upsampling else ""
        data = f"BIOMEDICA shards `{cfg.data.train}`{weights}; held out: `{cfg.data.heldout}`"
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(validation.items()))
    val = (f"| metric | value |\n|---|---|\n{rows}" if rows else
           f"`{ckpt}` is not an `epoch_N.pt` of the run, or the run's `results.jsonl` has no line for its epoch.")
    options = []
    if t.lock_image:
        options.append(f"image tower locked but {t.lock_image_unlocked_groups} groups")
    if t.lock_text:
        options.append(f"text tower locked but {t.lock_text_unlocked_layers} layers")
    if t.grad_clip_norm:
        options.append(f"gradient clipping {t.grad_clip_norm:g}")
    if t.extra_args:
        options.append(f"extra arguments `{' '.join(t.extra_args)}`")
    settings = "".join(f"; {option}" for option in options)
    return f"""# biomedica_clip: `{cfg.model.name}` fine-tuned on BIOMEDICA-style figures and captions

A CLIP model (an image and a text tower in one embedding space, for zero-shot classification and
image↔text retrieval of biomedical figures): {start}, fine-tuned contrastively with open_clip's own
trainer (open_clip_train). Exported by `medrepro biomedica_clip export` from `{ckpt}`.

## Load it
With open_clip alone; everything it reads is in this directory.
```python
{loading_code(located, hf_text)}```
`model.encode_image(preprocess(image)[None])` and `model.encode_text(tokenizer(["a figure showing ..."]))`,
normalised, are the features that `medrepro biomedica_clip evaluate` scores.

## Data
{data}. Zero-shot prompt of the evaluation: `{cfg.eval.template}`, labels from `{cfg.data.label_field}`.

## Training
open_clip_train, with the arguments recorded in the run's `open_clip_args.json`:
- {t.epochs} epochs of `{t.dataset_type}` data{" resampled" if t.dataset_resampled else ""}; batch {t.batch_size} per
  process × {t.processes} process(es) × {t.accum_freq} accumulation step(s);
- AdamW, lr {t.lr:g}, weight decay {t.wd:g}, {t.warmup} warmup steps; precision {t.precision};
  seed {cfg.seed}{settings}.

`best` and `final` both name the last epoch's checkpoint: open_clip_train keeps no best one, and its
validation set is the held-out shard that the evaluation reports on.

## open_clip_train's validation on the held-out shard, this epoch
{val}

The held-out evaluation of the last epoch (zero-shot and retrieval before and after fine-tuning, with
intervals) is `results/biomedica_clip/finetune/` of the repository that trained it.

## Limits
- The validation numbers above come from the held-out shard the evaluation reports on; no checkpoint
  was chosen by them.
- Figures and captions of open-access biomedical articles, in English; other sources of images shift
  the scores.
- A research model, not a diagnostic device.
"""
