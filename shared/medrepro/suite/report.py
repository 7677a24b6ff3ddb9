"""`medrepro report`: results/RESULTS.md, our numbers beside the upstream or seed numbers.

Each experiment ships `reference.yaml` describing its table: the metric columns and the reference
numbers to put beside ours; its declaration gives the variants (one row each), and an evaluation of the
authors' released weights (`evaluate --weights`, results/<experiment>/published/) adds a `published` row,
beside its `reference.yaml` number under `published` when the paper gives one. Rows come from
`results/<experiment>/<variant>/details.json` (every number of the evaluation) and `info.json` (what
data and checkpoint produced them).

With `--readme README.md` it also writes the README's results block, between `README_BEGIN` and
`README_END`: the same tables without the notes and health warnings under them, so that the README
shows what RESULTS.md shows.
"""

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medrepro import atomic
from medrepro.errors import DataError, MedreproError
from medrepro.results import PUBLISHED, reportable
from medrepro.suite import registry
from medrepro.suite.spec import resolve

README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"


def _cell(metrics: dict[str, float], column: dict[str, Any]) -> str:
    """One column's text: `metric` with its interval or spread, or several `metrics` joined by " / "
    (a metric beside its baselines)."""
    if "metrics" in column:
        single = {k: v for k, v in column.items() if k != "metrics"}
        return " / ".join(_cell(metrics, {**single, "metric": name}) for name in column["metrics"])
    name = column["metric"]
    if name not in metrics:
        return "n/a"
    scale = 100.0 if column.get("percent") else 1.0
    digits = column.get("digits", 1 if column.get("percent") else 3)
    text = f"{metrics[name] * scale:.{digits}f}"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    spread = metrics.get(f"{name}_sd")
    if column.get("spread") and spread is not None:
        text += f" ± {spread * scale:.{digits}f}"
    if column.get("ci") and low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def _table(name: str, variants: Sequence[str], results_dir: Path,
           reference: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The experiment's Markdown table (one row per variant, and a `published` row when the released weights
    were evaluated) and the training-health warnings of its rows."""
    published = [PUBLISHED] if (results_dir / PUBLISHED / "details.json").is_file() else []
    # A column marked `published: true` holds what only the released model's evaluation computes: shown with
    # a `published` row, left out of a table of trained variants alone (it would be n/a in every row).
    columns = [c for c in reference["columns"] if published or not c.get("published")]
    header = ["variant", "data", *(c["label"] for c in columns), "reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    warnings: list[str] = []
    for variant in [*variants, *published]:
        metrics_file = results_dir / variant / "details.json"
        ref = reference.get("reference", {}).get(variant, "")
        if not metrics_file.is_file():
            lines.append("| " + " | ".join([variant, "not run", *("" for _ in columns), str(ref)]) + " |")
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
            info = json.loads((results_dir / variant / "info.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the results of {name}/{variant} in {results_dir}: {e}; "
                            "re-run its evaluate stage") from None
        if not reportable(info):
            # Evaluated from a named checkpoint of a run that may not have finished: not a result.
            lines.append("| " + " | ".join([variant, "incomplete run, not reported", *("" for _ in columns),
                                             str(ref)]) + " |")
            continue
        lines.append("| " + " | ".join([variant, info.get("data", "?"), *(_cell(metrics, c) for c in columns),
                                         str(ref)]) + " |")
        warnings += [f"{variant}{'' if w.get('run', '.') == '.' else ' ' + w['run']}: {w['message']} "
                     f"(step {w['step']})" for w in info.get("training_health") or []]
    return lines, warnings


def experiment_section(name: str, variants: Sequence[str], results_dir: Path, reference: dict[str, Any]) -> str:
    """The experiment's section of RESULTS.md: its table with the notes and health warnings under it."""
    return _section(name, reference, *_table(name, variants, results_dir, reference))


def _section(name: str, reference: dict[str, Any], table: list[str], warnings: list[str]) -> str:
    lines = [f"## {name}: {reference['title']}", "", *table, "", reference.get("notes", "").strip(), ""]
    if warnings:
        lines += ["Training health warnings (see `medrepro.health`):", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(lines)


def _tables_only(comparison: str) -> list[str]:
    """A comparison's heading and tables without its prose (that stays in RESULTS.md): "### Title" → "Title:"."""
    kept = []
    for paragraph in comparison.strip().split("\n\n"):
        if paragraph.startswith("#"):
            kept.append(paragraph.lstrip("#").strip() + ":")
        elif paragraph.startswith("|"):
            kept.append(paragraph)
    return kept


def render(results_root: Path, names: Sequence[str] | None = None) -> tuple[str, str]:
    """RESULTS.md and the README's results block, from every experiment (or those named) that has a results
    directory."""
    sections = ["# medrepro results", "",
                "Generated by `medrepro report` from results/<experiment>/<variant>/details.json. "
                "Brackets are 95 % bootstrap confidence intervals.", ""]
    block: list[str] = []
    for experiment in registry.all_experiments():
        results_dir = results_root / experiment.name
        if not results_dir.is_dir() or (names is not None and experiment.name not in names):
            continue
        reference = yaml.safe_load((registry.experiments_dir() / experiment.name / "reference.yaml").read_text())
        # Read once for both documents.
        table, warnings = _table(experiment.name, experiment.variants, results_dir, reference)
        sections.append(_section(experiment.name, reference, table, warnings))
        block.append(f"**{experiment.name}** ({reference['title']})\n\n" + "\n".join(table))
        if experiment.compare:
            # Computed once for both documents: a comparison may bootstrap.
            comparison = resolve(experiment.compare)(results_dir, experiment.variants)
            sections.append(comparison)
            block += _tables_only(comparison)
    return "\n".join(sections).rstrip() + "\n", "\n\n".join(block) + "\n"


def replace_block(text: str, block: str, source: Path) -> str:
    """`text` with what lies between the results markers replaced by `block`; the rest is kept byte for byte."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or text.find(README_END) < text.find(README_BEGIN):
        raise MedreproError(f"{source} needs one `{README_BEGIN}` line and, after it, one `{README_END}` line "
                            "around its results table: put them where `medrepro report` should write the table")
    start = text.index(README_BEGIN) + len(README_BEGIN)
    return text[:start] + "\n" + block + text[text.index(README_END):]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrepro report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--experiments", help="comma-separated experiments to include (default: all)")
    parser.add_argument("--readme", type=Path,
                        help=f"also write this README's results block, between {README_BEGIN} and {README_END}")
    args = parser.parse_args(argv)
    if args.readme and args.experiments:
        parser.error("--readme writes every experiment's table: it cannot be combined with --experiments")
    if args.readme and not args.readme.is_file():
        raise MedreproError(f"--readme {args.readme}: no such file")
    report, block = render(args.results, args.experiments.split(",") if args.experiments else None)
    readme = None
    if args.readme:
        # Before anything is written: a README without markers leaves both files as they were.
        readme = replace_block(args.readme.read_bytes().decode("utf-8"), block, args.readme)
    out = args.results / "RESULTS.md"
    atomic.write_text(out, report)
    print(f"wrote {out}")
    if readme is not None:
        atomic.write_text(args.readme, readme)
        print(f"wrote the results block of {args.readme}")
    return 0
