"""`export`: a fine-tuned ExMed-BERT as a transformers directory that loads without this repository.

    medrepro exmed_bert export --variant clinvec_init [--run DIR] [--checkpoint best|final|PATH] --out DIR

    <export>/config.json              ExMedBertConfig; its auto_map names the classes of the file below
    <export>/model.safetensors        the weights, under the names of the training checkpoint
    <export>/modeling_exmed_bert.py   the architecture (imports torch and transformers only)
    <export>/vocabulary.json          what turns a patient's codes, ages, sex and state into the model's ids
    <export>/README.md                the model card, with the loading and encoding code

`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` gives the endpoint
model (one logit per patient), `AutoModel` the encoder alone, `AutoConfig` the config.
"""

import argparse
import json
from pathlib import Path

import torch

from experiments.exmed_bert import dataset
from experiments.exmed_bert import modeling_exmed_bert as modeling
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.model import encoder_config, preset_sizes
from experiments.exmed_bert.patients import EVENT_FIELDS
from medrepro.errors import CheckpointError
from medrepro.export import model_dir, refuse_unfinished
from medrepro.rundir import RunDir

VOCABULARY_FILE = "vocabulary.json"
MODEL_CARD = "README.md"
LABEL = "endpoint"  # the one output: sigmoid(logit) is the probability of the endpoint


def export_command(cfg: ExMedBertConfig, args: argparse.Namespace) -> Path:
    """`export`: the checkpoint `--checkpoint` of the run `--run` (default: the variant's run), into `--out`."""
    run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
    refuse_unfinished(run, args, "exmed_bert")
    return export(cfg, args.variant, run, args.checkpoint, args.out)


def export(cfg: ExMedBertConfig, variant: str, run: RunDir, which: str, out: Path) -> Path:
    """Write checkpoint `which` (`best`, `final` or a path) of `run`, a fine-tuning run of `variant`, with
    its vocabulary and model card as the directory `out`."""
    vocab = dataset.read_vocab(cfg.paths.prepared)
    saved = run.load(which, variant)
    model = endpoint_model(cfg, vocab, saved["model"], run.checkpoint_path(which))
    step = saved["train_state"]["step"]
    card = model_card(cfg, variant, out.name, step, run.validation_at(step))
    with model_dir(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / VOCABULARY_FILE).write_text(json.dumps(vocabulary(cfg, vocab), indent=1) + "\n")
        (tmp / MODEL_CARD).write_text(card)
    print(f"exported {run.checkpoint_path(which)} (step {step}) to {out}; load it with "
          f"AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return out


def endpoint_model(cfg: ExMedBertConfig, vocab: dataset.Vocab, state: dict[str, torch.Tensor], checkpoint: Path
                   ) -> modeling.ExMedBertForSequenceClassification:
    """The transformers endpoint model holding `state`, set up so that `save_pretrained` writes the
    modeling file beside it and names its classes for the Auto loaders."""
    projection = state["encoder.code_vectors"].shape[1] if "encoder.code_vectors" in state else 0
    config = encoder_config(cfg.model, len(vocab.tokens), len(vocab.sexes), len(vocab.states), projection)
    config.id2label, config.label2id = {0: LABEL}, {LABEL: 0}
    module = modeling.__name__.rsplit(".", 1)[-1]
    # save_pretrained names the saved class and the config's; the encoder alone is named here.
    config.auto_map = {"AutoModel": f"{module}.{modeling.ExMedBertModel.__name__}"}
    modeling.ExMedBertConfig.register_for_auto_class()
    modeling.ExMedBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    model = modeling.ExMedBertForSequenceClassification(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint} does not hold an endpoint model of this config and vocabulary "
                              f"({cfg.paths.prepared}): {str(e).splitlines()[0][:200]}") from None
    return model.eval()


def vocabulary(cfg: ExMedBertConfig, vocab: dataset.Vocab) -> dict:
    """Everything that turns a patient into the model's inputs (the model card's `encode` reads it)."""
    return {
        "tokens": vocab.tokens,
        "specials": {token: i for i, token in enumerate(dataset.SPECIALS)},
        "code_types": dataset.TYPE_IDS,
        "event_fields": EVENT_FIELDS,
        "sexes": vocab.sexes,
        "states": vocab.states,
        "max_length": cfg.data.max_length,
        "truncation": cfg.data.truncation,
        "index_date": cfg.data.index_date,
    }


def model_card(cfg: ExMedBertConfig, variant: str, name: str, step: int, val: dict[str, float]) -> str:
    """README.md of the export: what it predicts, how to load and feed it, data, training, validation
    figures at the exported step, and limits."""
    sizes = preset_sizes(cfg.model)
    summary = json.loads((Path(cfg.paths.prepared) / "summary.json").read_text())
    patients, positives = summary["patients"], summary["positives"]
    synthetic = cfg.data.source == "synthetic"
    data = ("The synthetic twin of the import format (smoke profile): generated patients whose endpoint follows "
            "planted risk code families, a tiny model; its figures show that the pipeline learns, not how the "
            "model would do on real patients" if synthetic else
            f"The patients file `{Path(cfg.data.patients).name}` in the import format")
    init = ("ClinVec vectors of the codes (nearest ancestor's where missing; resize "
            f"`{cfg.clinvec.resize}`)" if variant == "clinvec_init" else "random")
    pre, fine = cfg.pretrain.train, cfg.train
    figures = "\n".join(f"| {k.removeprefix('val/')} | {v:.3f} |" for k, v in sorted(val.items())) or \
        "| (not evaluated at this step) | |"
    return f"""# ExMed-BERT ({variant}): a patient endpoint from medical-code sequences

A BERT over a patient's dated diagnoses (ICD-10-CM), drugs (ATC) and procedures (CPT) before an index
date, pretrained by masked-code prediction{" and prolonged length of stay" if cfg.pretrain.plos else ""},
then fine-tuned for one binary endpoint: the model returns one logit per patient, and sigmoid(logit) is
the probability of the endpoint. Trained by `medrepro exmed_bert` (checkpoint of step {step}).

## Files
- `config.json`, `model.safetensors`, `modeling_exmed_bert.py`: the model (transformers, custom code:
  `trust_remote_code=True`); `AutoModel` gives the encoder alone (last hidden states).
- `vocabulary.json`: the code tokens (`{{code}}:{{vocabulary}}`, a token's id is its position), specials,
  code types, the sex and state categories (`[UNK]` first), the maximum length and truncation side.

## Load it and score patients
```python
import json
from datetime import date

import torch
from transformers import AutoModelForSequenceClassification

path = "{name}"  # this directory
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
with open(f"{{path}}/vocabulary.json") as f:
    vocabulary = json.load(f)
ids = {{token: i for i, token in enumerate(vocabulary["tokens"])}}
special = vocabulary["specials"]


def encode(patient: dict) -> dict:
    \"\"\"A patient in the import format → the model's inputs (lists of ids). Codes must be valid and
    in the form the vocabulary holds (dotted ICD-10-CM such as E11.65, ATC, CPT); others become [UNK].\"\"\"
    # Events on or after the index date are left out (index_date "none": data already cut there).
    index = date.fromisoformat(patient["index_date"]) if vocabulary["index_date"] == "field" else date.max
    events = [(date.fromisoformat(e["date"]), kind, e["code"])
              for field, kind in vocabulary["event_fields"].items() for e in patient.get(field, [])]
    events = sorted((e for e in events if e[0] < index), key=lambda e: e[0])  # stable within a day
    tokens, types, ages, visits = [special["[CLS]"]], [0], [0], [0]
    visit = 0
    for i, (day, kind, code) in enumerate(events):
        visit += i == 0 or day != events[i - 1][0]  # events of one date form a visit
        age = max(0, day.year - patient["birth_year"])
        tokens.append(ids.get(f"{{code}}:{{kind}}", special["[UNK]"]))
        types.append(vocabulary["code_types"][kind])
        ages.append(age)
        visits.append(visit)
        if i + 1 == len(events) or events[i + 1][0] != day:  # a visit ends with [SEP]
            tokens.append(special["[SEP]"])
            types.append(0)
            ages.append(age)
            visits.append(visit)
    if len(tokens) > vocabulary["max_length"]:  # [CLS], then the last (or first) positions that fit
        keep = vocabulary["max_length"] - 1
        cut = slice(len(tokens) - keep, None) if vocabulary["truncation"] == "keep_last" else slice(1, 1 + keep)
        tokens, types, ages, visits = ([column[0], *column[cut]] for column in (tokens, types, ages, visits))
        visits = [0, *(v - visits[1] + 1 for v in visits[1:])]  # visits numbered from 1 in the window
    sex = patient["sex"].upper()[:1]
    return {{"input_ids": tokens, "code_type_ids": types, "age_ids": ages, "visit_ids": visits,
            "sex_ids": vocabulary["sexes"].index(sex) if sex in vocabulary["sexes"] else 0,
            "state_ids": vocabulary["states"].index(patient["state"]) if patient["state"] in vocabulary["states"]
            else 0}}


def batch(sequences: list[dict]) -> dict[str, torch.Tensor]:
    \"\"\"Right-padded with [PAD] (id 0); attention_mask is 1 on real positions.\"\"\"
    n = max(len(s["input_ids"]) for s in sequences)
    out = {{key: torch.tensor([s[key] + [0] * (n - len(s[key])) for s in sequences])
           for key in ("input_ids", "code_type_ids", "age_ids", "visit_ids")}}
    out["attention_mask"] = (out["input_ids"] != special["[PAD]"]).long()
    out.update({{key: torch.tensor([s[key] for s in sequences]) for key in ("sex_ids", "state_ids")}})
    return out


with open("patients.json") as f:  # your patients: a JSON array in the import format
    patients = json.load(f)
sequences = [encode(p) for p in patients]
with torch.inference_mode():
    probability = torch.sigmoid(model(**batch(sequences)).logits[:, 0])
```
The import format (experiments/exmed_bert/README.md, Data):
`{{"patient_id", "birth_year", "sex", "state", "diagnoses": [{{"code", "date"}}], "prescriptions": [...],
"procedures": [...], "index_date"}}`, dates as YYYY-MM-DD. `medrepro exmed_bert prepare` also validates
the codes against the ICD-10-CM table (undotted forms normalised, codes of older releases mapped to their
nearest ancestor); `encode` above does not. Inputs, one per position: code id, code type (0 special,
1 ICD-10-CM, 2 ATC, 3 CPT), age in whole years (event year − birth year, at most {cfg.model.max_age}),
visit number ([CLS] 0, visits from 1, at most {cfg.model.max_visits}); one per patient: sex and state.

## Data
{data}. Patients (train / validation / test): {patients["train"]} / {patients["val"]} / {patients["test"]},
with the endpoint {positives["train"]} / {positives["val"]} / {positives["test"]}; split by a hash of
(seed {cfg.seed}, patient id). Vocabulary: {summary["vocabulary"]["tokens"]} tokens from the training split
(codes seen at least {cfg.data.min_count} times); sequences of at most {cfg.data.max_length} positions
({cfg.data.truncation}; {summary["truncated_patients"]} patients truncated).

## Training
Preset `{cfg.model.preset}`: {sizes["layers"]} layers × hidden {sizes["hidden_size"]} ({sizes["heads"]} heads,
intermediate {sizes["intermediate_size"]}), dropout {cfg.model.dropout:g}, `{cfg.model.init}` initialisation,
code embeddings initialised from {init}. Pretraining on the training split: {cfg.pretrain.mask_probability:g} of
code positions masked, {pre.epochs:g} epochs, batch {pre.batch_size}, lr {pre.lr:g}. Fine-tuning: sum pooling →
one logit, BCE weighted by negatives/positives, AdamW (lr {fine.lr:g}, weight decay {fine.weight_decay:g}),
{fine.epochs:g} epochs, batch {fine.batch_size}, {fine.schedule} schedule, seed {cfg.seed}; the checkpoint with
the best `{fine.best_metric}` on the validation split.

## Validation figures at step {step} (threshold {cfg.eval.threshold:g})
| metric | value |
|---|---|
{figures}

The split that chose the checkpoint: the figures are optimistic; the test-split figures, with bootstrap intervals,
are in `results/exmed_bert/{variant}/` of the run that made it (`medrepro exmed_bert evaluate`).

## Limits
- One endpoint, as the training data defined it; another cohort, coding practice, vocabulary release or
  index-date rule shifts the inputs and the calibration of the probability.
- Codes missing from the vocabulary become [UNK]; sequences longer than {cfg.data.max_length} positions keep
  [CLS] and the {"most recent" if cfg.data.truncation == "keep_last" else "first"} ones; sum pooling makes the
  logit grow with the length of the history.
- A research model: not validated for clinical decisions.
"""
