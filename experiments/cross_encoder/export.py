"""`export`: a trained checkpoint as a directory that others load with transformers or
sentence-transformers and that returns calibrated probabilities without any code from this repository.

    medrepro cross_encoder export --variant sapbert [--run DIR] [--checkpoint best|final|PATH] --out DIR

The checkpoint (by default the best of the finished run) is calibrated on the calibration half of dev,
exactly as `evaluate` calibrates it, and written with a model card to --out (what `link --model`
reads).

Platt scaling, p = σ(a z + b), is folded into the one-logit classification head: its weight is
multiplied by a and b is added to its bias, so that σ(logit) of the saved model is the calibrated
probability (a > 0 keeps the ranking). `calibration.json` keeps the fitted parameters (and the
retrieval weight the linking order uses), so the raw logit is (logit - b) / a.
"""

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text, scoring
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.layout import CALIBRATION_FILE, MODEL_CARD
from experiments.cross_encoder.readers import read_mentions, read_pairs
from medrepro.export import model_dir, refuse_unfinished
from medrepro.metrics import binary_metrics
from medrepro.rundir import RunDir

_log = logging.getLogger(__name__)
LABEL = "match"  # the one output: the (mention, name) pair names the same concept


def classification_head(model: nn.Module) -> nn.Linear:
    """The final linear layer with one output (BERT's `classifier`; other heads end in one too)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if head.out_features != 1:
        raise ValueError(f"expected a one-logit classification head, found {head}")
    return head


def fold_platt(model: nn.Module, a: float, b: float) -> nn.Module:
    """A copy of `model` whose logit is a × logit + b. A slope a <= 0 (a model that ranks matches below
    non-matches on the calibration pairs, e.g. after a few steps) still gives calibrated probabilities,
    but reverses or flattens the ranking: it is folded as fitted, with a warning."""
    if not a > 0:
        _log.warning("the Platt slope fitted on the calibration pairs is %.4g: the model does not rank matches "
                     "above non-matches there, and its calibrated scores do not rank candidates; train longer", a)
    folded = copy.deepcopy(model)
    head = classification_head(folded)
    with torch.no_grad():
        head.weight.mul_(a)
        head.bias.mul_(a).add_(b)
    return folded


def export_command(cfg: CrossEncoderConfig, args: argparse.Namespace) -> Path:
    """`export`: the checkpoint `--checkpoint` of the run `--run` (default: the variant's run), into `--out`."""
    run = RunDir(args.run or Path(cfg.paths.runs) / args.variant)
    refuse_unfinished(run, args, "cross_encoder")
    return export(cfg, args.variant, run, args.checkpoint, args.out)


def export(cfg: CrossEncoderConfig, variant: str, run: RunDir, which: str, out: Path) -> Path:
    """Calibrate checkpoint `which` (`best`, `final` or a path) of `run`, a run of `variant`, and write it
    with its calibration and model card as the directory `out`."""
    model, tokenizer = cross.load_trained(cfg.cross_encoder.path, run, which, variant)
    calibration = scoring.fit_calibration(cfg, model, tokenizer)
    card = model_card(cfg, variant, calibration, held_out_metrics(cfg, model, tokenizer, calibration))
    write_model_dir(model, tokenizer, out, cfg.max_length, calibration, card)
    platt = calibration[scoring.FOLDED_SCALER]
    print(f"exported {run.checkpoint_path(which)} with its Platt calibration (a = {platt['a']:.4f}, "
          f"b = {platt['b']:.4f}) to {out}; `medrepro cross_encoder link --model {out}` links with it")
    return out


def held_out_metrics(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                     calibration: dict) -> dict[str, float]:
    """The model card's figures on the calibration pairs and mentions (unseen in training)."""
    pairs = read_pairs(cfg.paths.mined, "calibration")
    logits = cross.pair_logits(model, tokenizer, [pair_text.segments(p) for p in pairs], cfg.eval.batch_size,
                               cfg.max_length)
    labels = np.array([p.label for p in pairs])
    prob = scoring.scaler_of(calibration, scoring.FOLDED_SCALER)(logits)
    documents = scoring.pair_documents(pairs, read_mentions(cfg.paths.prepared))
    f1 = scoring.f1_by_document(labels, prob >= cfg.eval.threshold, documents, cfg.eval.bootstrap, cfg.eval.alpha,
                                cfg.seed)
    metrics = binary_metrics(labels, prob, cfg.eval.threshold, cfg.eval.calibration_bins)
    link = scoring.linking_accuracy(scoring.score_candidates(cfg, model, tokenizer, "calibration"),
                                    calibration["retrieval_weight"], cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    return {"pairs": len(pairs), "f1": f1.estimate, "f1_ci_low": f1.low, "f1_ci_high": f1.high,
            "roc_auc": metrics["roc_auc"], "ece": metrics["ece"], **{f"linking/{k}": v for k, v in link.items()}}


def write_model_dir(model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: str | Path, max_length: int,
                    calibration: dict, card: str) -> Path:
    """Save the model with Platt folded in, its tokenizer (carrying the training max length), the
    calibration, and `card` as README.md; every file readable by others."""
    tokenizer.model_max_length = max_length
    # tokenizer.json too, for a user of the `tokenizers` library alone: pairs truncated as in training,
    # batches padded to their longest pair (what transformers' own call sets, saved with it).
    tokenizer.backend_tokenizer.enable_truncation(max_length, strategy="longest_first",
                                                  direction=tokenizer.truncation_side)
    tokenizer.backend_tokenizer.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                                               pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token)
    platt = calibration[scoring.FOLDED_SCALER]
    folded = fold_platt(model, platt["a"], platt["b"])
    folded.config.id2label = {0: LABEL}
    folded.config.label2id = {LABEL: 0}
    with model_dir(directory) as tmp:
        folded.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")
        (tmp / MODEL_CARD).write_text(card)
    return Path(directory)


def model_card(cfg: CrossEncoderConfig, variant: str, calibration: dict, held_out: dict[str, float]) -> str:
    """README.md of the exported directory: what it scores, how to load it, the data and training
    setting, held-out figures with 95 % intervals, and the limits."""
    t = cfg.train
    data = ("synthetic UMLS and MedMentions twins (smoke profile: a tiny BERT trained from scratch, not SapBERT)"
            if cfg.data.source == "synthetic" else f"MedMentions ({cfg.data.medmentions_dir}) linked to the UMLS "
            f"release in {cfg.data.umls_dir}")

    def interval(key: str, percent: bool = False, unit: str = " %") -> str:
        scale, unit = (100, unit) if percent else (1, "")
        return (f"{scale * held_out[key]:.{1 if percent else 3}f}{unit} "
                f"[{scale * held_out[key + '_ci_low']:.{1 if percent else 3}f}, "
                f"{scale * held_out[key + '_ci_high']:.{1 if percent else 3}f}]")

    linked = f"{held_out['linking/mentions']:.0f} mentions of {held_out['linking/documents']:.0f} documents"
    first, second = (pair_text.mention_input("ARF", "patients with", "after cardiac surgery"),
                     pair_text.candidate_input("Acute renal failure", ["Disease or Syndrome"]))
    return f"""# cross_encoder ({variant}): (mention in context, UMLS concept) match probability

A cross-encoder that reads a biomedical mention in its context and one candidate concept (a name
with its semantic types) together and returns the **calibrated probability** that they are the same
concept. It re-ranks the candidates of a bi-encoder retriever (`{cfg.biencoder.path}`, [CLS]
pooling), as in `medrepro cross_encoder link`.

## Input
Two segments, built exactly as in training:
- the mention in square brackets between up to {cfg.data.context_words} words of its document on each
  side: `{first}`;
- the candidate name, then its UMLS semantic type names (MRSTY's STY, joined by ` ; `) in
  parentheses: `{second}`.

The context and the types tell apart names shared by concepts of different types ("RI": renal
insufficiency in "patients with RI", renal imaging in "RI was performed").

## Load it
```python
from sentence_transformers import CrossEncoder
model = CrossEncoder("path/to/model")                    # this directory
# calibrated probabilities
model.predict([("{first}", "{second}")])
```
```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("path/to/model").eval()
tokenizer = AutoTokenizer.from_pretrained("path/to/model")
batch = tokenizer(["{first}"],
                  ["{second}"],
                  padding=True, truncation=True, return_tensors="pt")
with torch.inference_mode():
    probability = torch.sigmoid(model(**batch).logits[:, 0])   # label "{LABEL}"
```
Platt scaling (a = {calibration['platt']['a']:.4f}, b = {calibration['platt']['b']:.4f}) is folded into the
classification head, so σ(logit) is already calibrated; `calibration.json` holds the parameters (the raw
logit is (logit − b) / a) and the retrieval weight w = {calibration['retrieval_weight']:g} of the linking order
(cross-encoder logit + w × bi-encoder cosine). Inputs longer than {cfg.max_length} tokens are truncated.

## Data
{data}; pairs mined from the retriever's candidates: per mention the gold concept under its closest
name, up to {cfg.mining.hard_per_positive} retrieved negatives (top {cfg.mining.hard_top_k}, similarity
≥ {cfg.mining.hard_threshold}), {cfg.mining.type_per_positive} of the same semantic type and
{cfg.mining.random_per_positive} random; never another concept under a name of the gold concept.
Split by document; the dev documents are halved into checkpoint selection and calibration.

## Training
From `{cfg.cross_encoder.path}`: binary cross-entropy on one logit, AdamW (lr {t.lr:g}, weight decay
{t.weight_decay:g}), {t.epochs:g} epochs, batch {t.batch_size} ({t.grad_accum} accumulation steps),
{t.schedule} schedule with {t.warmup_epochs:g} warmup epochs, gradient clipping {t.clip_grad_norm:g},
precision {t.precision}, seed {cfg.seed}, max length {cfg.max_length}; best checkpoint by {t.best_metric}.

## Held-out figures (calibration half of dev; 95 % bootstrap intervals over documents)
| figure | value |
|---|---|
| pair F1 ({held_out['pairs']} pairs) | {interval('f1')} |
| pair ROC-AUC | {held_out['roc_auc']:.3f} |
| pair ECE after Platt (15 bins) | {held_out['ece']:.3f} |
| bi-encoder acc@1 ({linked}) | {interval('linking/biencoder_acc_at_1', True)} |
| re-ranked acc@1 | {interval('linking/reranked_acc_at_1', True)} |
| re-ranked − bi-encoder acc@1 (paired) | {interval('linking/reranked_minus_biencoder', True, " points")} |

The scalers and the retrieval weight were fitted on these same mentions, so the figures are slightly
optimistic; the test-split results are in `results/cross_encoder/{variant}/` of the run that made it.

## Limits
- It sees {cfg.data.context_words} words each side of the mention and the semantic types: a name shared
  by concepts of one type (three renal disorders all written "RI") stays ambiguous unless those words
  tell them apart; evidence further away in the document is not read.
- Calibrated on mined pairs and candidate lists of this retriever: another retriever, corpus or
  UMLS release shifts the score distribution and the calibration with it.
- English only; UMLS licence terms apply to any concept names you pair it with.
"""
