"""A trained RET-CLIP as a self-contained directory, and `load_exported` to get it back.

    <export>/model.safetensors   every weight: image tower, text tower, the six heads, three logit scales
    <export>/config.json         what rebuilds the architecture (open_clip vision config, QuickGELU,
                                 embedding size, context length, logit-scale clamp) and where it came from
    <export>/text_encoder/       the text tower's Hugging Face config and tokenizer files (its weights
                                 are in model.safetensors)
    <export>/prompts.yaml        the prompt templates the model was trained and evaluated with
    <export>/README.md           how to load it

Nothing in it points at the run directory, the repository's data or a hub: a copy of the directory
is enough for `load_exported` on another machine.
"""

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from experiments.retclip.config import RetClipConfig, seed_run
from experiments.retclip.prompts import DEFAULT_PATH, Prompts, load_prompts
from medrepro import atomic
from medrepro.config_sections import encoder_path
from medrepro.errors import DataError
from medrepro.rundir import RunDir

FORMAT = "retclip-export"
VERSION = 1

README = """# RET-CLIP ({variant}, training seed {seed})

Exported by `medrepro retclip export` from {checkpoint} (step {step}).

```python
from experiments.retclip.export import load_exported
from experiments.retclip import zeroshot
from medrepro.config_sections import encoder_path

exported = load_exported("{name}")           # RetClip in eval mode, tokenizer, transform, prompts
model, tokenizer, transform = exported.model, exported.tokenizer, exported.transform
# zero-shot on an LMDB split in the RET-CLIP layout:
pred = zeroshot.predict(model, tokenizer, transform, exported.prompts, split_dir, batch_size=64)
# or by hand: model.encode_eye(transform(image)[None], "left"), model.encode_text(tokenizer(texts), "left")
```

`load_exported` needs the medrepro package (the `RetClip` class) and open_clip; nothing else from
the run. Files: `model.safetensors` (every weight; `safetensors.torch.load_file` reads it),
`config.json` (architecture and provenance), `text_encoder/` (Hugging Face config and tokenizer of
the text tower: `transformers.AutoTokenizer.from_pretrained("text_encoder")` works),
`prompts.yaml` (the class prompts).
"""


@dataclass
class Exported:
    model: "object"  # RetClip, in eval mode
    tokenizer: "object"  # open_clip HFTokenizer
    transform: "object"  # the eval image transform
    prompts: Prompts
    config: dict


def export(cfg: RetClipConfig, variant: str, run: RunDir, which: str, out: Path, seed: int) -> Path:
    """Write the model of checkpoint `which` (`best`, `final` or a path) of `run`, a run of `variant` with
    `seed`, as a self-contained directory `out`."""
    from safetensors.torch import save_file

    from experiments.retclip.model import build_model, quick_gelu, vision_config

    model, tokenizer, _ = build_model(cfg.model, encoder_path(cfg.encoders, variant))
    saved = run.load_into(model, which, variant)
    ckpt = run.checkpoint_path(which)
    config = {
        "format": FORMAT, "version": VERSION, "variant": variant, "seed": seed,
        "step": saved["train_state"]["step"], "encoder": encoder_path(cfg.encoders, variant),
        "vision_cfg": vision_config(cfg.model), "quick_gelu": quick_gelu(cfg.model), "embed_dim": cfg.model.embed_dim,
        "context_length": cfg.model.context_length, "init_logit_scale": cfg.model.init_logit_scale,
        "max_logit_scale": cfg.model.max_logit_scale,
    }
    with atomic.atomic_dir(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        model.text.transformer.config.save_pretrained(tmp / "text_encoder")
        tokenizer.tokenizer.save_pretrained(tmp / "text_encoder")
        shutil.copyfile(Path(cfg.prompts) if cfg.prompts else DEFAULT_PATH, tmp / "prompts.yaml")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(README.format(variant=variant, seed=seed, checkpoint=ckpt.name,
                                                     step=config["step"], name=out.name))
        # Readable by the group and others, as model directories on a shared cluster should be
        # (safetensors writes its file 0600).
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return out


def load_exported(path: str | Path) -> Exported:
    """Rebuild an exported RET-CLIP from its directory alone: model (eval mode, CPU), tokenizer,
    eval transform, prompts and config. Raises DataError naming the file when something is missing."""
    import open_clip
    from safetensors.torch import load_file

    from experiments.retclip.model import RetClip, build_towers

    path = Path(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{config_file}: cannot read the export's config ({e}); export the model again") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise DataError(f"{config_file} is not a {FORMAT} version {VERSION} directory")
    visual, text, tokenizer = build_towers(config["vision_cfg"], config["embed_dim"], config["quick_gelu"],
                                           str(path / "text_encoder"), config["context_length"], pretrained_text=False)
    model = RetClip(visual, text, text.transformer.config.hidden_size, config["embed_dim"],
                    config["init_logit_scale"], config["max_logit_scale"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.eval()
    transform = open_clip.image_transform(visual.image_size, is_train=False)
    return Exported(model, tokenizer, transform, load_prompts(path / "prompts.yaml"), config)


def export_command(cfg: RetClipConfig, args: argparse.Namespace) -> Path:
    seed = cfg.seeds[0] if args.seed is None else args.seed
    run = seed_run(RunDir(args.run or Path(cfg.paths.runs) / args.variant), seed)
    ckpt = run.checkpoint_path(args.checkpoint)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} not found: train the variant first, or name another --seed/--checkpoint")
    out = export(cfg, args.variant, run, args.checkpoint, args.out, seed)
    print(f"exported {args.variant} (seed {seed}, {ckpt}) to {out}/; load it with "
          "experiments.retclip.export.load_exported")
    return out
