"""`export`: a trained RET-CLIP as an open_clip model directory, with what open_clip cannot express beside it.

    medrepro retclip export --variant V [--run DIR] [--seed S] [--checkpoint best|final|PATH] [--eye left|right]
                            --out DIR

    <export>/open_clip_config.json        `model_cfg` (CustomTextCLIP: open_clip vision tower, Hugging Face
                                          text tower) and `preprocess_cfg`: what open_clip's loader reads
    <export>/open_clip_model.safetensors  its weights: the image tower with the chosen eye's projection folded
                                          into `visual.proj`, the text tower, that eye's logit scale
    <export>/config.json, tokenizer*      the text tower's Hugging Face config and tokenizer
    <export>/retclip_heads.safetensors    what open_clip cannot express: `visual.proj` as trained, the patient,
                                          left and right image projections, the three text heads, the three
                                          logit scales
    <export>/retclip_config.json          format, provenance (variant, seed, step, encoder), the eye, the
                                          logit-scale settings
    <export>/prompts.yaml                 the prompt templates the model was trained and evaluated with
    <export>/README.md                    the model card

open_clip's `local-dir:` loader (open_clip 3.3.0) builds the Hugging Face text tower from
`AutoConfig.from_pretrained(text_cfg.hf_model_name)`: it has no way to embed that config or to read it
relative to the directory, and transformers resolves a relative path from the process's working
directory. So `hf_model_name` holds the export's absolute path: `create_model_and_transforms("local-dir:DIR")`
works from any working directory while the directory stays where it was written, and a moved or copied
directory loads when the caller passes `text_cfg` with `hf_model_name` set to its new place (the model
card shows the code). Only the config is read from there: with weights in the directory, open_clip
builds the tower with `hf_model_pretrained` false. The tokenizer comes from the directory itself.

RET-CLIP's text heads (Linear with bias, ReLU, Linear with bias) are none of open_clip's text
projections ('linear' has no bias, 'mlp' uses GELU, no bias and a (width + embed) / 2 hidden layer),
and its patient head reads both eyes while `encode_image` takes one image. open_clip's model therefore
returns the chosen eye's image feature exactly, while the text feature is its text head applied to the
tower's [CLS] state (model card). `load_exported` rebuilds the whole RET-CLIP from the same directory.
"""

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from experiments.retclip.config import RetClipConfig, seed_run
from experiments.retclip.prompts import DEFAULT_PATH, Prompts, load_prompts
from medrepro.config_sections import encoder_path
from medrepro.errors import DataError
from medrepro.export import model_dir, refuse_unfinished
from medrepro.rundir import RunDir

FORMAT = "retclip-export"
VERSION = 2
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
HEADS = "retclip_heads.safetensors"
CONFIG = "retclip_config.json"
PROMPTS = "prompts.yaml"
# The tower's output that RET-CLIP's heads read: the [CLS] state, unprojected.
POOLER = "cls_last_hidden_state_pooler"


@dataclass
class Exported:
    model: "object"  # RetClip, in eval mode
    tokenizer: "object"  # open_clip HFTokenizer
    transform: "object"  # the eval image transform
    prompts: Prompts
    config: dict


def open_clip_model_cfg(cfg: RetClipConfig, text_config: str) -> dict:
    """open_clip's `model_cfg` of RET-CLIP's towers, the text tower's Hugging Face config read from
    `text_config` (a directory or hub id)."""
    from experiments.retclip.model import quick_gelu, vision_config

    return {"embed_dim": cfg.model.embed_dim, "quick_gelu": quick_gelu(cfg.model),
            "vision_cfg": vision_config(cfg.model),
            "text_cfg": {"hf_model_name": text_config, "hf_tokenizer_name": text_config, "hf_model_pretrained": False,
                         "hf_pooler_type": POOLER, "hf_proj_type": None, "context_length": cfg.model.context_length}}


def build_retclip(model_cfg: dict, init_logit_scale: float, max_logit_scale: float):
    """An untrained RET-CLIP of `model_cfg`'s towers (text config and tokenizer from its hf_model_name),
    its tokenizer and eval transform."""
    import open_clip

    from experiments.retclip.model import RetClip, build_towers

    text_cfg = model_cfg["text_cfg"]
    visual, text, tokenizer = build_towers(model_cfg["vision_cfg"], model_cfg["embed_dim"], model_cfg["quick_gelu"],
                                           text_cfg["hf_model_name"], text_cfg["context_length"], pretrained_text=False)
    model = RetClip(visual, text, text.transformer.config.hidden_size, model_cfg["embed_dim"], init_logit_scale,
                    max_logit_scale)
    return model, tokenizer, open_clip.image_transform(visual.image_size, is_train=False)


def split_weights(model, eye: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """RET-CLIP's weights as (open_clip CustomTextCLIP's, the rest).

    The image tower ends in `pooled @ visual.proj` and the eye's projection is a linear map without
    bias, so `pooled @ (visual.proj @ W_eye.T)` is that eye's feature: the product is taken in float64
    and stored in the tower's dtype.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    towers = {k: v for k, v in state.items() if k.startswith(("visual.", "text."))}
    rest = {k: v for k, v in state.items() if k not in towers}
    proj = state["visual.proj"]
    towers["visual.proj"] = (proj.double() @ state[f"{eye}_proj.weight"].double().T).to(proj.dtype).contiguous()
    towers["logit_scale"] = state[f"logit_scales.{eye}"].clone()
    return towers, {"visual.proj": proj, **rest}


def export(cfg: RetClipConfig, variant: str, run: RunDir, which: str, out: Path, seed: int, eye: str) -> Path:
    """Write the model of checkpoint `which` (`best`, `final` or a path) of `run`, a run of `variant` with
    `seed`, as an open_clip directory `out` whose image feature is `eye`'s head, with the rest beside it."""
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf
    from open_clip.transform import PreprocessCfg
    from safetensors.torch import save_file

    encoder = encoder_path(cfg.encoders, variant)
    model, tokenizer, _ = build_retclip(open_clip_model_cfg(cfg, encoder), cfg.model.init_logit_scale,
                                        cfg.model.max_logit_scale)
    saved = run.load_into(model, which, variant)
    step = saved["train_state"]["step"]
    towers, heads = split_weights(model, eye)
    # open_clip's own model class checks the weights' names and shapes before anything is written.
    clip = open_clip.CustomTextCLIP(**open_clip_model_cfg(cfg, encoder))
    clip.load_state_dict(towers)
    # RET-CLIP's eval transform is open_clip's default one at the tower's size.
    open_clip.set_model_preprocess_cfg(clip, asdict(PreprocessCfg(size=clip.visual.image_size)))
    config = {"format": FORMAT, "version": VERSION, "variant": variant, "seed": seed, "step": step, "eye": eye,
              "encoder": encoder, "init_logit_scale": cfg.model.init_logit_scale,
              "max_logit_scale": cfg.model.max_logit_scale}
    out = Path(out)
    located = str(out.resolve())
    model_cfg = open_clip_model_cfg(cfg, located)
    # The run's own validation numbers, unless the checkpoint was named from elsewhere.
    ours = run.checkpoint_path(which).resolve().is_relative_to(run.path.resolve())
    validation = run.validation_at(step) if ours else {}
    card = model_card(cfg, config, model_cfg, run.checkpoint_path(which), validation,
                      text_width=model.text.transformer.config.hidden_size)
    with model_dir(out) as tmp:
        save_for_hf(clip, tokenizer, model_cfg, tmp, safe_serialization=True)
        clip.text.transformer.config.save_pretrained(tmp)
        save_file(heads, tmp / HEADS)
        shutil.copyfile(Path(cfg.prompts) if cfg.prompts else DEFAULT_PATH, tmp / PROMPTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(card)
    return out


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: cannot read the export's file ({e}); export the model again") from None


def load_exported(path: str | Path) -> Exported:
    """Rebuild the whole exported RET-CLIP from its directory alone: model (eval mode, CPU), tokenizer,
    eval transform, prompts and config. Raises DataError naming the file when something is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    config = _read_json(path / CONFIG)
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise DataError(f"{path / CONFIG} is not a {FORMAT} version {VERSION} directory: export the model again")
    model_cfg = _read_json(path / OPEN_CLIP_CONFIG)["model_cfg"]
    # The text config and tokenizer from this directory, wherever it has moved.
    model_cfg["text_cfg"]["hf_model_name"] = str(path)
    model, tokenizer, transform = build_retclip(model_cfg, config["init_logit_scale"], config["max_logit_scale"])
    try:
        state = load_file(path / OPEN_CLIP_WEIGHTS)
        state.update(load_file(path / HEADS))  # visual.proj as trained replaces the folded one
    except OSError as e:
        raise DataError(f"{path}: cannot read the export's weights ({e}); export the model again") from None
    del state["logit_scale"]
    model.load_state_dict(state)
    model.eval()
    return Exported(model, tokenizer, transform, load_prompts(path / PROMPTS), config)


def export_command(cfg: RetClipConfig, args: argparse.Namespace) -> Path:
    """`export`: seed `--seed`'s checkpoint `--checkpoint` of the variant's run, into `--out`."""
    seed = cfg.seeds[0] if args.seed is None else args.seed
    run = seed_run(RunDir(args.run or Path(cfg.paths.runs) / args.variant), seed)
    refuse_unfinished(run, args, "retclip")
    ckpt = run.checkpoint_path(args.checkpoint)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} not found: train the variant first, or name another --seed/--checkpoint")
    out = export(cfg, args.variant, run, args.checkpoint, args.out, seed, args.eye)
    print(f"exported {args.variant} (seed {seed}, {ckpt}, {args.eye}-eye head) to {out}/: "
          f'open_clip.create_model_and_transforms("local-dir:{out.resolve()}"); README.md says what it holds')
    return out


def model_card(cfg: RetClipConfig, config: dict, model_cfg: dict, ckpt: Path, validation: dict[str, float],
               text_width: int) -> str:
    """README.md of the export: what the model is, how to load it, what open_clip gives and cannot, the
    data and training settings, the validation numbers at the exported step, the limits."""
    t, m, eye = cfg.train, cfg.model, config["eye"]
    located = model_cfg["text_cfg"]["hf_model_name"]
    if cfg.data.source == "synthetic":
        data = (f"Synthetic patients in ODIR-5K's format ({cfg.data.synthetic_patients} patients; smoke profile: "
                "tiny towers trained from scratch, so its numbers only show that the pipeline learns)")
    else:
        data = f"ODIR-5K (`{cfg.data.odir_root}`)"
    vision = (f"{m.vision_model} from open_clip's `{m.vision_pretrained}` weights" if m.vision_pretrained
              else f"{m.vision_model}, randomly initialised")
    warmup = f"{t.warmup_steps} steps" if t.warmup_steps else f"{t.warmup_epochs:g} epochs"
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(validation.items()))
    val = (f"| metric | value |\n|---|---|\n{rows}" if rows else
           f"`{ckpt}` is not one of the run's checkpoints, or the run's log has no validation at step "
           f"{config['step']}.")
    if text_width == m.embed_dim:
        raw_text = (f"`model.encode_text(tokens)` returns the text tower's [CLS] state (the tower is {text_width} "
                    "wide, as the embedding), not RET-CLIP's text feature")
    else:
        raw_text = (f"`model.encode_text` raises: open_clip builds no projection for a {text_width}-wide tower and a "
                    f"{m.embed_dim}-dimensional embedding when `hf_proj_type` is null")
    return f"""# RET-CLIP ({config['variant']}, training seed {config['seed']}): {eye}-eye fundus photographs ↔ reports

RET-CLIP trained contrastively on the fundus photographs of both eyes and each patient's report: one
image tower for both eyes, a Hugging Face BERT text tower ([CLS] state), a patient head over the eye
pair, a left and a right eye head, one text head for each, and three logit scales. Exported by
`medrepro retclip export` from `{ckpt}` (step {config['step']}).

## Load it with open_clip
open_clip's `encode_image` gives the image feature of the **{eye}-eye head**; RET-CLIP's {eye} text head,
which open_clip cannot express, is applied to the text tower's [CLS] state from `retclip_heads.safetensors`:
```python
import json
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

path = {located!r}  # this directory
# open_clip reads the text tower's Hugging Face config from text_cfg.hf_model_name: point it at where the
# directory is now (as written, it names the place the export was written to).
text_cfg = json.loads(Path(path, "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{path}}",
                                                             text_cfg={{**text_cfg, "hf_model_name": path}})
model.eval()
tokenizer = open_clip.get_tokenizer(f"local-dir:{{path}}")
heads = load_file(f"{{path}}/retclip_heads.safetensors")


def encode_text(tokens: torch.Tensor) -> torch.Tensor:
    \"\"\"RET-CLIP's {eye} text head (Linear, ReLU, Linear) on the text tower's [CLS] state.\"\"\"
    mask = (tokens != model.text.config.pad_token_id).long()
    cls = model.text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state[:, 0]
    hidden = F.relu(F.linear(cls, heads["text_heads.{eye}.0.weight"], heads["text_heads.{eye}.0.bias"]))
    return F.linear(hidden, heads["text_heads.{eye}.2.weight"], heads["text_heads.{eye}.2.bias"])
```
Zero-shot, for a PIL image of a {eye} eye and prompts such as `"{eye.capitalize()} eye: normal fundus."`:
```python
with torch.no_grad():
    image_features = F.normalize(model.encode_image(preprocess(image)[None]), dim=-1)
    text_features = F.normalize(encode_text(tokenizer(prompts)), dim=-1)
    probs = (model.logit_scale.exp() * image_features @ text_features.T).softmax(dim=-1)
```
While the directory stays where it was written, `open_clip.create_model_and_transforms("local-dir:" + path)`
alone loads it too, from any working directory.

## What open_clip gives, and what it cannot
- `model.encode_image`: RET-CLIP's {eye}-eye feature, exactly: the eye's projection, a linear map without
  bias, is folded into `visual.proj`. `model.logit_scale`: the {eye} head's logit scale.
- {raw_text}. RET-CLIP's text heads (Linear with bias, ReLU, Linear with bias) are none of open_clip's
  text projections ('linear': no bias; 'mlp': GELU, no bias, another hidden width), hence `encode_text`
  above.
- Not in open_clip's model: the patient head (it maps the features of both eyes together; open_clip
  encodes one image at a time), the other eye's projection, the other two text heads and logit scales.
  They are in `retclip_heads.safetensors`, with `visual.proj` as trained, and `load_exported` rebuilds
  the whole model from this directory (it needs the medrepro repository on the Python path):
```python
from experiments.retclip.export import load_exported
exported = load_exported(path)   # .model (RetClip, eval mode), .tokenizer, .transform, .prompts, .config
features = exported.model.encode_eyes(left, right)["patient"]   # and encode_text(tokens, "patient")
```

## Data
{data}, split {"/".join(f"{f:g}" for f in cfg.data.split)} (train/validation/test) by patient. The
training text of a patient is the report built from both eyes' keywords with `prompts.yaml`; the
zero-shot prompts come from the same file.

## Training
- Towers: {vision}; text `{config['encoder']}`.
- Loss: the sum of three symmetric InfoNCE losses (patient, left, right), each against the report.
- AdamW, lr {t.lr:g}, weight decay {t.weight_decay:g}; {t.schedule} schedule, {warmup} of warmup;
  {t.epochs:g} epochs of global batches of {t.batch_size} patients ({t.grad_accum} accumulation step(s));
  gradient clipping {t.clip_grad_norm:g}; precision {"fp32" if t.precision == "no" else t.precision}.
- Images {model_cfg['vision_cfg']['image_size']} px, context length {m.context_length}, embedding
  {m.embed_dim}; logit scales start at {m.init_logit_scale:.4f} and are clamped to [0, {m.max_logit_scale:.4f}]
  (natural log).
- Training seed {config['seed']}; `best` is the step with the best `{t.best_metric}` ({t.best_mode}).

## Validation at step {config['step']} (zero-shot on the validation split, single-label eyes)
{val}

The test split's numbers are the run's evaluation, `results/retclip/{config['variant']}/` of the
repository that trained it; they are means over the training seeds, not this model's alone.

## Limits
- Zero-shot over ODIR-5K's 8 classes with the prompts of `prompts.yaml`, on eyes with a single class;
  other wording, cameras or populations shift the scores.
- A research model reproduced for a comparison of text encoders, not a diagnostic device.
"""
