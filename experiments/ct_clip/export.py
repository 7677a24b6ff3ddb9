"""`export`: a trained CT-CLIP as a transformers directory that loads without this repository.

    medrepro ct_clip export [--variant cxr_bert] [--run DIR] [--checkpoint best|final|PATH] --out DIR

    <export>/config.json, model.safetensors, modeling_ct_clip.py
                                  the whole model: CTViT, the text tower, both projections and the
                                  temperature (`AutoModel.from_pretrained(DIR, trust_remote_code=True)`);
                                  config.json also records the input the model was trained on
    <export>/tokenizer.json, tokenizer_config.json
                                  the report tokenizer (BERT's WordPiece; `AutoTokenizer`)
    <export>/text_encoder/        the text tower alone, a plain BertModel with its tokenizer
                                  (`AutoModel` and `AutoTokenizer`, no custom code)
    <export>/README.md            the model card

The text tower's weights are in both model.safetensors files: each directory loads on its own.
"""

import argparse
import json
from pathlib import Path

from transformers import BertConfig, BertTokenizerFast

from experiments.ct_clip import modeling_ct_clip as modeling
from experiments.ct_clip.config import SELECTION_FILE, CtClipConfig
from experiments.ct_clip.ctrate import LABELS
from experiments.ct_clip.model import clip_config
from experiments.ct_clip.prompts import prompts
from medrepro.config_sections import encoder_path
from medrepro.export import model_dir, refuse_unfinished
from medrepro.rundir import RunDir
from medrepro.shards import read_manifest

TEXT_ENCODER = "text_encoder"
MODEL_CARD = "README.md"


def export_command(cfg: CtClipConfig, args: argparse.Namespace) -> Path:
    """`export`: the checkpoint `--checkpoint` of the run `--run` (default: the variant's run), into `--out`."""
    run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
    refuse_unfinished(run, args, "ct_clip")
    return export(cfg, args.variant, run, args.checkpoint, args.out)


def export(cfg: CtClipConfig, variant: str, run: RunDir, which: str, out: Path) -> Path:
    """Write checkpoint `which` (`best`, `final` or a path) of `run`, a run of `variant`, with its tokenizer,
    the text tower alone and the model card as the directory `out`."""
    encoder = encoder_path(cfg.encoders, variant)
    train = read_manifest(Path(cfg.paths.shards) / "train" / "manifest.json")
    model = clip_model(cfg, encoder, train["preprocessing"])
    saved = run.load_into(model, which, variant)
    tokenizer = BertTokenizerFast.from_pretrained(encoder)
    # CXR-BERT's tokenizer_config.json names its own tokenizer code (auto_map), which AutoTokenizer would
    # then ask to run; the tokenizer is BERT's (model.build_model), so the export names BERT's alone.
    tokenizer.init_kwargs.pop("auto_map", None)
    tokenizer.model_max_length = cfg.model.context_length
    step = saved["train_state"]["step"]
    card = model_card(cfg, variant, out.name, step, run.validation_at(step), train, run)
    with model_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        model.text.save_pretrained(tmp / TEXT_ENCODER)
        tokenizer.save_pretrained(tmp / TEXT_ENCODER)
        (tmp / MODEL_CARD).write_text(card)
    print(f"exported {run.checkpoint_path(which)} (step {step}) to {out}; load it with "
          f"AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return out


def clip_model(cfg: CtClipConfig, encoder: str, preprocessing: dict) -> modeling.CTClipModel:
    """The transformers model of `cfg` with the text tower of `encoder`'s config (weights still to load),
    recording `preprocessing` (the training shards'), set up so that `save_pretrained` writes the modeling
    file beside it and names its classes for the Auto loaders."""
    text_config = BertConfig.from_pretrained(encoder)
    # CXR-BERT's config.json names its own model code (auto_map) likewise: the tower is a BertModel.
    if hasattr(text_config, "auto_map"):
        del text_config.auto_map
    config = clip_config(cfg.model, tuple(preprocessing["shape"]), text_config)
    config.spacing, config.hu_window = preprocessing["spacing"], preprocessing["hu_range"]
    config.pad_value = preprocessing["pad_value"]
    modeling.CTClipConfig.register_for_auto_class()
    modeling.CTClipModel.register_for_auto_class("AutoModel")
    return modeling.CTClipModel(config)


def model_card(cfg: CtClipConfig, variant: str, name: str, step: int, val: dict[str, float], train: dict,
               run: RunDir) -> str:
    """README.md of the export: what it computes, how to load and feed it, data, training, the selection
    figures at the exported step, and limits."""
    m, t, pre = cfg.model, cfg.train, train["preprocessing"]
    synthetic = cfg.data.source == "synthetic"
    data = ("A synthetic CT-RATE (smoke profile): generated volumes in the release's layout, reports and labels "
            "with a planted signal, and a tiny text encoder built locally from random weights; its figures show "
            "that the pipeline learns, not how CT-CLIP does on CT scans" if synthetic else
            f"CT-RATE ({cfg.data.release} volumes), reports from {' + '.join(cfg.data.report_fields)}, text encoder "
            f"`{encoder_path(cfg.encoders, variant)}`")
    selection = json.loads((run / SELECTION_FILE).read_text()) if (run / SELECTION_FILE).is_file() else None
    held_out = (f"; {len(selection['patients'])} training patients ({len(selection['volumes'])} volumes) held out "
                "to choose the checkpoint, never trained on" if selection else "")
    figures = "\n".join(f"| {k.removeprefix('val/')} | {v:.3f} |" for k, v in sorted(val.items())) or \
        "| (not evaluated at this step) | |"
    labels = ", ".join(LABELS)
    first = prompts()[0]
    return f"""# CT-CLIP ({variant}): chest CT volumes and radiology reports in one embedding

A CTViT volume encoder and a BERT report encoder trained contrastively (symmetric InfoNCE) on pairs of
chest CT volumes and their reports, as CT-CLIP (Hamamci et al.); zero-shot, each of 18 abnormalities is
scored by the softmax over the prompt pair ("{first[0]}", "{first[1]}"). Trained by `medrepro ct_clip`
(checkpoint of step {step}).

## Files
- `config.json`, `model.safetensors`, `modeling_ct_clip.py`: the whole model (custom code:
  `trust_remote_code=True`): `encode_image`, `encode_text`, `temperature` (logits = exp(temperature) × cosine);
  calling the model on volumes and tokens gives both embeddings and the logits between them.
- `tokenizer.json`, `tokenizer_config.json`: the report tokenizer (BERT WordPiece).
- `{TEXT_ENCODER}/`: the text tower alone, a plain `BertModel` and its tokenizer (no custom code); the
  report embedding is its [CLS] state projected by the full model's `to_text_latent`.

## Input
A volume is preprocessed as upstream's data_inference_nii.py does: Hounsfield units (CT-RATE v1 volumes need
the CSV's RescaleSlope/Intercept first) clipped to [{pre["hu_range"][0]:g}, {pre["hu_range"][1]:g}], resampled
(trilinear) to spacing {", ".join(f"{s:g}" for s in pre["spacing"])} mm (x, y, z), transposed to
(z, x, y), divided by {pre["hu_range"][1]:g}, then centre-cropped or padded with {pre["pad_value"]:g} to
{" × ".join(str(n) for n in pre["shape"])} (slices × rows × columns): float values in [-1, 1], a batch of
shape (B, 1, {", ".join(str(n) for n in pre["shape"])}). `config.json` holds the same numbers (`volume_shape`,
`spacing`, `hu_window`, `pad_value`). Reports and prompts are tokenised to {m.context_length} tokens, padded
to that length as in training.

## Load it and score volumes
```python
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

path = "{name}"  # this directory
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # BERT's; the config is custom code
labels = [{", ".join(repr(label) for label in LABELS)}]
prompts = [text for label in labels for text in (f"{{label}} is present.", f"{{label}} is not present.")]
tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=model.config.context_length,
                   return_tensors="pt")
volumes = torch.from_numpy(np.load("volumes.npy")).float()  # (B, 1, slices, rows, columns), preprocessed
with torch.inference_mode():
    text = F.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]), dim=-1)
    image = F.normalize(model.encode_image(volumes), dim=-1)
    logits = model.temperature.exp() * torch.einsum("bd,lpd->blp", image, text.view(len(labels), 2, -1))
    probability = logits.softmax(dim=-1)[..., 0]  # (B, 18): "present" against "not present"
```
The text tower alone, without custom code: `AutoModel.from_pretrained(f"{{path}}/{TEXT_ENCODER}",
add_pooling_layer=False)` (its [CLS] state is what CT-CLIP reads; it has no trained pooler) and
`AutoTokenizer.from_pretrained(f"{{path}}/{TEXT_ENCODER}")`.

## Data
{data}. Training shards: {train["samples"]} volumes{held_out}. Labels: {labels}.

## Training
CTViT: patches {m.temporal_patch} × {m.patch} × {m.patch} voxels, width {m.dim}, {m.spatial_depth} spatial and
{m.temporal_depth} temporal blocks, {m.heads} heads of {m.dim_head}; joint embedding {m.latent}; temperature from
{m.init_temperature:g}, clamped at {m.max_temperature:g}. {t.epochs:g} epochs, batch {t.batch_size}
({t.grad_accum} accumulation steps), AdamW (lr {t.lr:g}, weight decay {t.weight_decay:g}), {t.schedule} schedule,
precision {t.precision}, seed {cfg.seed}; the checkpoint with the best `{t.best_metric}`.

## Selection figures at step {step} (zero-shot on the held-out training patients)
| metric | value |
|---|---|
{figures}

These patients chose the checkpoint, so the figures are optimistic; the validation-split figures, with
bootstrap intervals over patients, are in `results/ct_clip/{variant}/` of the run that made it
(`medrepro ct_clip evaluate`).

## Limits
- Chest CT of CT-RATE's population and scanners only; the 18 labels were extracted from reports, not read
  by radiologists for this purpose, and zero-shot scores depend on the prompt wording above.
- Only inputs preprocessed exactly as above (spacing, HU window, shape, axis order) match what the model saw.
- A research model: not validated for clinical decisions.
"""
