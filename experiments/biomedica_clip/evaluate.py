"""`evaluate`: the starting ("pretrained") weights and the fine-tuned ones, on the held-out shards.

- zero-shot classification over the held-out classes: one prompt per class from its label
  (`eval.template`), the class with the most similar prompt wins; only samples with exactly one label
  count (metadata.single_label). Beside it, chance (1 / classes) and the majority-class baseline: the
  most frequent single label of the training shards (counted by `audit`), predicted for every sample;
- image→text and text→image retrieval recall@1/5/10 over every held-out sample. A caption can occur
  more than once (the synthetic captions name the class, size and panel type), so any item whose
  caption equals the query's counts as a hit, and the chance level is computed with the same ties.

Intervals are percentile bootstraps over articles (`article_accession_id`; each article contributes
several figures, which are not independent). Everything is computed twice, before and after, and the
paired difference after − before per query, whose bootstrap draws the same articles for both.
"""

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from experiments.biomedica_clip import archive, metadata
from experiments.biomedica_clip.config import BiomedicaClipConfig, checkpoint_path
from experiments.biomedica_clip.model import TINY_NAME, WEIGHTS, load
from experiments.biomedica_clip.synthetic import HELDOUT_CLASSES
from medrepro import plots, published
from medrepro.bootstrap import bootstrap_clusters, mean_stat
from medrepro.errors import DataError
from medrepro.results import Evaluation
from medrepro.rundir import RunDir
from medrepro.shards import iter_samples

# A release in open_clip's own layouts: its hf-hub directory (the safetensors file, or the older .bin) or
# either file alone, a plain state dict under open_clip's names.
RELEASE_FILES = (WEIGHTS, "open_clip_pytorch_model.bin")
RELEASE_KEYS = published.KeyMap(renames=())
KS = (1, 5, 10)
# Paired after − before differences reported with intervals.
DIFFERENCES = ("zeroshot_acc", "i2t_r1", "t2i_r1")
# metrics.json: the fine-tuned model's headline under the suite's short names (the starting weights'
# numbers, the differences and the intervals are in details.json).
HEADLINE = {"acc": "after/zeroshot_acc", "r1_i2t": "after/i2t_r1", "r1_t2i": "after/t2i_r1"}


@dataclass
class Heldout:
    images: list[Image.Image]
    captions: list[str]
    labels: list[str]  # the zero-shot class, "" where the sample has no single label
    groups: np.ndarray  # article index of each sample (the bootstrap unit)


def read_heldout(cfg: BiomedicaClipConfig) -> Heldout:
    images, captions, labels, articles = [], [], [], []
    for source in archive.heldout_sources(cfg):
        for path in source.paths:
            for key, sample in iter_samples(path):
                image_field = next((f for f in archive.IMAGE_FIELDS if f in sample), None)
                if image_field is None or "txt" not in sample:
                    raise DataError(f"shard {path}, sample {key}: no image or caption; run audit")
                try:
                    article, label = metadata.article_and_label(sample, cfg.data.label_field)
                except DataError as e:
                    raise DataError(f"shard {path}, sample {key}: {e}") from None
                images.append(Image.open(io.BytesIO(sample[image_field])).convert("RGB"))
                captions.append(sample["txt"].decode().strip())
                labels.append(label)
                articles.append(article)
    _, groups = np.unique(np.array(articles), return_inverse=True)
    return Heldout(images, captions, labels, groups)


@torch.no_grad()
def embed_images(model: torch.nn.Module, preprocess, images: list[Image.Image], batch: int) -> np.ndarray:
    """L2-normalised image embeddings, `batch` images at a time on the model's device."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_image(torch.stack([preprocess(im) for im in images[i:i + batch]]).to(device),
                                         normalize=True).cpu() for i in range(0, len(images), batch)]).numpy()


@torch.no_grad()
def embed_texts(model: torch.nn.Module, tokenizer, texts: list[str], batch: int) -> np.ndarray:
    """L2-normalised text embeddings, `batch` captions at a time on the model's device."""
    device = next(model.parameters()).device
    return torch.cat([model.encode_text(tokenizer(texts[i:i + batch]).to(device), normalize=True).cpu()
                      for i in range(0, len(texts), batch)]).numpy()


def grouped_mean(values: np.ndarray, groups: np.ndarray, n_boot: int, alpha: float, seed: int) -> dict:
    """Mean of per-sample `values` with a bootstrap interval that resamples whole groups."""
    interval = bootstrap_clusters(mean_stat(values), groups, n_boot, alpha, seed)
    return {"": interval.estimate, "_ci_low": interval.low, "_ci_high": interval.high}


def with_interval(name: str, values: np.ndarray, groups: np.ndarray, cfg: BiomedicaClipConfig) -> dict[str, float]:
    """`name`, `name_ci_low`, `name_ci_high`. Every call draws the same article resamples (same groups and
    seed), so the interval of per-query after − before values is the paired difference's."""
    stats = grouped_mean(values, groups, cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    return {f"{name}{suffix}": v for suffix, v in stats.items()}


def chance_recall(relevant: np.ndarray, n: int, k: int) -> float:
    """Expected recall@k of a random ranking of n items when each query has `relevant` hits among them."""
    miss = np.ones(len(relevant))
    for i in range(k):
        miss *= np.clip((n - relevant - i) / (n - i), 0, None)
    return float(np.mean(1 - miss))


def hits(model, preprocess, tokenizer, data: Heldout, cfg: BiomedicaClipConfig, classes: list[str],
         mask: np.ndarray) -> dict[str, np.ndarray]:
    """1.0 or 0.0 per query: `{i2t,t2i}_r{k}` over every held-out sample, `zeroshot_acc` over the samples
    whose label is a zero-shot class (`mask`)."""
    e = cfg.eval
    out = {}
    captions = np.array(data.captions)
    image_emb = embed_images(model, preprocess, data.images, e.batch_size)
    text_emb = embed_texts(model, tokenizer, data.captions, e.batch_size)
    similarity = image_emb @ text_emb.T
    same = captions[:, None] == captions[None, :]
    for direction, sim in (("i2t", similarity), ("t2i", similarity.T)):
        order = np.argsort(-sim, axis=1, kind="stable")
        hits_ranked = np.take_along_axis(same, order, axis=1)
        for k in KS:
            out[f"{direction}_r{k}"] = hits_ranked[:, :k].any(axis=1).astype(float)
    prompt_emb = embed_texts(model, tokenizer, [e.template.format(label=c) for c in classes], e.batch_size)
    predicted = np.argmax(image_emb[mask] @ prompt_emb.T, axis=1)
    truth = np.array([classes.index(label) for label in np.array(data.labels)[mask]])
    out["zeroshot_acc"] = (predicted == truth).astype(float)
    return out


def before_after(per_query: dict[str, dict[str, np.ndarray]], groups: np.ndarray, mask: np.ndarray,
                 cfg: BiomedicaClipConfig) -> dict[str, float]:
    """`before/<metric>`, `after/<metric>` and, for DIFFERENCES, `diff/<metric>` = after − before, each
    with its interval over articles."""
    def articles(name: str) -> np.ndarray:
        return groups[mask] if name == "zeroshot_acc" else groups

    result: dict[str, float] = {}
    for phase, values in per_query.items():
        for name, v in values.items():
            result.update(with_interval(f"{phase}/{name}", v, articles(name), cfg))
    for name in DIFFERENCES:
        paired = per_query["after"][name] - per_query["before"][name]
        result.update(with_interval(f"diff/{name}", paired, articles(name), cfg))
    return result


def majority_class(counts: dict[str, int], label_field: str) -> str:
    """The most frequent training label (ties: the first by name)."""
    if not counts:
        raise DataError(f"no training sample has a single {label_field}: there is no majority class to compare "
                        "zero-shot accuracy with")
    return min(counts, key=lambda label: (-counts[label], label))


def zero_shot_classes(cfg: BiomedicaClipConfig, data: Heldout) -> list[str]:
    """Synthetic: the classes never seen in training; real shards: every label in the held-out shards."""
    if cfg.data.source == "synthetic":
        return list(HELDOUT_CLASSES)
    return sorted({label for label in data.labels if label})


def evaluate(cfg: BiomedicaClipConfig, variant: str, run: RunDir, out_dir: Path, which: str = "best") -> Evaluation:
    """`which`: "best" or "final" (both the last epoch's weights: open_clip_train keeps no best), or a path."""
    ckpt = checkpoint_path(run, cfg.train.epochs) if which in ("best", "final") else Path(which)
    return before_and(cfg, lambda: load(cfg, ckpt), str(ckpt), out_dir)


def evaluate_published(cfg: BiomedicaClipConfig, weights: Path, out_dir: Path) -> Evaluation:
    """A released model of the config's architecture (BMCA-CLIP's open_clip checkpoints with
    `--config configs/bmca_clip.yaml`) in place of the fine-tuned one, against the same starting weights."""
    return before_and(cfg, lambda: load_published(cfg, weights), str(weights), out_dir)


def load_published(cfg: BiomedicaClipConfig, weights: Path) -> tuple[torch.nn.Module, Any, Any]:
    """The config's architecture with the release's tensors, loaded strictly (one line for a tensor that is
    renamed, reshaped, missing or extra)."""
    model, preprocess, tokenizer = load(cfg, None)
    what = f"an open_clip checkpoint of {TINY_NAME if cfg.model.tiny else cfg.model.name}"
    tensors = published.read_tensors(weights, what, RELEASE_FILES)
    published.load_published(model, tensors, RELEASE_KEYS, weights, what)
    return model.eval(), preprocess, tokenizer


def before_and(cfg: BiomedicaClipConfig, after: Callable[[], tuple[torch.nn.Module, Any, Any]], checkpoint: str,
               out_dir: Path) -> Evaluation:
    """The evaluation of the starting weights ("before") and of the model `after` builds."""
    report = archive.audit_report(cfg)  # held-out shards and articles disjoint from training; label counts
    data = read_heldout(cfg)
    classes = zero_shot_classes(cfg, data)
    labels = np.array(data.labels)
    mask = np.isin(labels, classes)
    if not mask.any():
        raise DataError(f"no held-out sample has a single {cfg.data.label_field} among the zero-shot classes "
                        f"({', '.join(classes[:3])}...)")
    per_query = {}
    for phase, build in (("before", lambda: load(cfg, None)), ("after", after)):
        model, preprocess, tokenizer = build()
        per_query[phase] = hits(model, preprocess, tokenizer, data, cfg, classes, mask)
    result = before_after(per_query, data.groups, mask, cfg)
    majority = majority_class(report["train_labels"]["counts"], cfg.data.label_field)
    result.update(with_interval("majority/zeroshot_acc", (labels[mask] == majority).astype(float),
                                data.groups[mask], cfg))
    n = len(data.captions)
    captions = np.array(data.captions)
    relevant = (captions[:, None] == captions[None, :]).sum(1)
    for k in KS:
        result[f"chance/r{k}"] = chance_recall(relevant, n, k)
    result["chance/zeroshot_acc"] = 1 / len(classes)
    result.update({"heldout_samples": n, "zeroshot_classes": len(classes), "zeroshot_samples": int(mask.sum()),
                   "heldout_without_single_label": int((labels == "").sum()),
                   "heldout_articles": int(data.groups.max()) + 1})
    plots.save_figure(recall_figure(result), out_dir / "plots" / "before_after.png")
    headline = {short: result[name] for short, name in HEADLINE.items()}
    info = {"data": cfg.data.source, "model": cfg.model.name, "checkpoint": checkpoint,
            "zeroshot_classes": classes, "template": cfg.eval.template, "label_field": cfg.data.label_field,
            "majority_class": majority,
            "protocol": "zero-shot over held-out classes, samples with a single label; majority baseline = the "
                        "training shards' most frequent single label; retrieval over the held-out shard (caption "
                        "ties count); bootstrap over articles; diff = after − before on the same resamples"}
    return Evaluation(headline, result, info)


def recall_figure(result: dict) -> Figure:
    """Before/after bars with their intervals for zero-shot accuracy and every recall@k, chance dashed, the
    majority class dotted (its value in the legend: at 0 the line lies on the axis)."""
    names = ["zeroshot_acc", *(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS)]
    chance = [result["chance/zeroshot_acc"], *(result[f"chance/r{k}"] for _ in ("i2t", "t2i") for k in KS)]
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, phase in ((-0.2, "before"), (0.2, "after")):
        values = np.array([result[f"{phase}/{n}"] for n in names])
        low = values - np.array([result[f"{phase}/{n}_ci_low"] for n in names])
        high = np.array([result[f"{phase}/{n}_ci_high"] for n in names]) - values
        ax.bar(x + offset, values, 0.4, yerr=[low, high], capsize=3, label=f"{phase} fine-tuning")
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="black", capsize=3, label=plots.interval_note("articles"))
    ax.hlines(chance, x - 0.4, x + 0.4, colors="k", linestyles="dashed", label="chance (random guess or ranking)")
    majority = result["majority/zeroshot_acc"]
    ax.hlines([majority], -0.4, 0.4, colors="grey", linestyles="dotted",
              label=f"zero-shot: training's majority class for every sample ({majority:.2f})")
    ax.set_xticks(x, ["zero-shot\naccuracy", *(f"{d}\nR@{k}" for d in ("image→text", "text→image") for k in KS)],
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of queries right (accuracy, R@k)")
    ax.set_title("biomedica_clip: held-out shard before and after fine-tuning")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: "fine-tuning" not in labels[i])  # the bars first
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside upper center", ncol=3,
               fontsize=8, frameon=False)
    fig.supxlabel("R@k: share of queries whose k nearest items include one with the query's caption; zero-shot "
                  "accuracy over the held-out classes", fontsize=8)
    return fig
