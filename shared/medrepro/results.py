"""The results of one evaluated variant, as files under results/<experiment>/<variant>/.

    metrics.json   a few headline numbers under short names (`dvc metrics show` prints the union
                   of every file's keys as columns, so the suite keeps them few and shared)
    details.json   every number of the evaluation (per class, per kind, intervals, baselines)
    info.json      what produced them: data, checkpoint, step, protocol, and the training health
                   signs that fired (`training_health`, from the run's fit.json)
    curves/        train.csv and val.csv, the training log per step (DVC plots)
    plots/         the experiment's PNG figures
metrics.json is written last: its presence means the evaluation completed.
"""

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrepro import atomic
from medrepro.rundir import RunDir


@dataclass
class Evaluation:
    headline: dict[str, float]
    details: dict[str, float]
    info: dict[str, Any]


# results/<experiment>/published/: an evaluation of the authors' released weights (`evaluate --weights`),
# reported as its own row beside the trained variants.
PUBLISHED = "published"


def write_evaluation(out_dir: Path, evaluation: Evaluation, run: RunDir | None) -> None:
    """The evaluation's files; `run` is the trained run it evaluated (None for published weights, which
    have no training log or health record here)."""
    for name, value in evaluation.headline.items():
        if not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"headline metric {name!r} is {value!r}: headline numbers must be defined")
    atomic.write_json(out_dir / "details.json", evaluation.details)
    health = training_health(run) if run is not None else None
    atomic.write_json(out_dir / "info.json", {**evaluation.info, "training_health": health})
    for name, text in (training_curves(run.train_log) if run is not None else {}).items():
        atomic.write_text(out_dir / "curves" / f"{name}.csv", text)
    atomic.write_json(out_dir / "metrics.json", evaluation.headline)


def reportable(info: dict[str, Any]) -> bool:
    """Whether an evaluation is a result: of a finished run's best checkpoint, or of published weights
    (info `weights: published`); a named checkpoint of a run that may not have finished is not."""
    return info.get("weights") == PUBLISHED or bool(info.get("run", {}).get("complete", False))


def training_health(run: RunDir) -> list[dict[str, Any]] | None:
    """The health signs that fired while the run trained: its fit.json, and those of its parts (a variant
    trained once per seed keeps one run of the loop per part), each sign with the run it came from
    ("." for the run directory itself). None when no fit.json is there."""
    fit_files = [r.fit_file for r in (run, *run.parts()) if r.fit_file.is_file()]
    if not fit_files:
        return None
    return [{"run": fit_file.parent.relative_to(run.path).as_posix(), **warning}
            for fit_file in fit_files for warning in json.loads(fit_file.read_text()).get("health", [])]


def training_curves(log: Path) -> dict[str, str]:
    """train.csv (train/* values) and val.csv (val/* values) from a run's JSON-lines log, one row per
    step; a step logged twice (a run resumed from an earlier checkpoint) keeps its last values."""
    rows: dict[str, dict[int, dict[str, float]]] = {"train": {}, "val": {}}
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            step = int(record.pop("step"))
            for prefix in rows:
                values = {k.removeprefix(f"{prefix}/"): v for k, v in record.items() if k.startswith(f"{prefix}/")}
                if values:
                    rows[prefix].setdefault(step, {}).update(values)
    return {prefix: _csv(by_step) for prefix, by_step in rows.items() if by_step}


def _csv(by_step: dict[int, dict[str, float]]) -> str:
    columns = sorted({key for values in by_step.values() for key in values})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *columns])
    for step in sorted(by_step):
        writer.writerow([step, *(repr(by_step[step][c]) if c in by_step[step] else "" for c in columns)])
    return out.getvalue()
