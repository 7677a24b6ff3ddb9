"""The encoder comparison under the results table: paired differences between encoders.

Every encoder is evaluated on the same test eyes and patients, so a difference is computed inside
each bootstrap resample of patients (seed means of both encoders on the same resample), which
removes the variation the two share. It measures test-set sampling only; the spread over training
seeds is in the table above (± columns).
"""

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

from experiments.retclip import seedstats
from experiments.retclip.zeroshot import load_predictions

# (level, metric, column label)
DIFFERENCES = (("eye", "accuracy", "Δ accuracy (eyes), pts"), ("eye", "balanced_accuracy", "Δ balanced acc., pts"),
               ("eye", "auroc_macro", "Δ macro AUC"), ("patient", "accuracy", "Δ accuracy (patients), pts"))


def comparison_section(results_dir: Path, variants: Sequence[str]) -> str:
    """Markdown: one row per pair of evaluated encoders, each difference with its 95 % interval."""
    done = [v for v in variants if _complete(results_dir / v)]
    if len(done) < 2:
        return ""
    settings = json.loads((results_dir / done[0] / "info.json").read_text())["bootstrap"]
    preds = {(v, level): load_predictions(results_dir / v / "predictions.json", level)
             for v in done for level in ("eye", "patient")}
    header = ["pair (a − b)", *(label for _, _, label in DIFFERENCES)]
    lines = ["### Paired differences between encoders",
             "", "Seed means of a minus b on the same test samples; brackets: 95 % interval resampling "
             f"patients ({settings['n_boot']} resamples). An interval that contains 0 shows no difference.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a, b in itertools.combinations(done, 2):
        cells = []
        for level, metric, _ in DIFFERENCES:
            d = seedstats.paired_difference(preds[(a, level)], preds[(b, level)], metric, settings["n_boot"],
                                            settings["alpha"], settings["seed"])
            scale, digits = (1, 3) if metric == "auroc_macro" else (100, 1)
            low, estimate, high = (f"{v * scale:+.{digits}f}" for v in (d.low, d.estimate, d.high))
            cells.append(f"{estimate} [{low}, {high}]")
        lines.append("| " + " | ".join([f"{a} − {b}", *cells]) + " |")
    return "\n".join(lines) + "\n"


def _complete(variant_dir: Path) -> bool:
    info = variant_dir / "info.json"
    return (variant_dir / "predictions.json").is_file() and info.is_file() and \
        json.loads(info.read_text()).get("run", {}).get("complete", False)
