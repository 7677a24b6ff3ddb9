"""`dvc metrics show` fits a terminal: it prints one column per headline name across every experiment's
metrics.json, so the names the experiments declare (`HEADLINE` in each evaluate.py) are few and shared.
The table is rendered by DVC itself from those names, without running any evaluation."""

import ast
import importlib.util
import json
from pathlib import Path

from medrepro import config
from medrepro.suite import registry

REPO = registry.repo_root()
MAX_WIDTH = 160
# The widest value a headline number in [0, 1] prints as (DVC rounds to 5 decimals).
WIDEST = 0.123456789


def declared_headline(module: str) -> dict[str, str]:
    """The module-level `HEADLINE = {short name: details name}` of an evaluation module, read without
    importing it."""
    path = Path(importlib.util.find_spec(module).origin)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HEADLINE" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} declares no HEADLINE: the names of its metrics.json (experiments/README.md)")


def metrics_show(capsys) -> str:
    """What `dvc metrics show` prints once every variant of every experiment has its metrics.json."""
    from dvc.commands.metrics import DEFAULT_PRECISION
    from dvc.compare import show_metrics

    files = {}
    for experiment in registry.all_experiments():
        names = declared_headline(experiment.evaluate.partition(":")[0])
        results = config.lookup(experiment.config_class()(), "paths.results")
        files |= {f"{results}/{variant}/metrics.json": {"data": dict.fromkeys(names, WIDEST)}
                  for variant in experiment.variants}
    capsys.readouterr()
    show_metrics({"": {"data": files}}, precision=DEFAULT_PRECISION, round_digits=True)
    return capsys.readouterr().out


def test_metrics_show_fits_in_160_columns(capsys):
    shown = metrics_show(capsys)
    assert "results/retclip/pubmedbert/metrics.json" in shown
    width = max(len(line) for line in shown.splitlines())
    assert width <= MAX_WIDTH, f"`dvc metrics show` would be {width} characters wide:\n{shown}"


def test_every_headline_number_is_one_of_the_details():
    """A headline is a number of details.json under a short name (the committed results' details name
    every number), at most six of them."""
    for experiment in registry.all_experiments():
        headline = declared_headline(experiment.evaluate.partition(":")[0])
        assert 0 < len(headline) <= 6, (experiment.name, headline)
        results = REPO / config.lookup(experiment.config_class()(), "paths.results")
        for variant in experiment.variants:
            details = json.loads((results / variant / "details.json").read_text())
            assert set(headline.values()) <= set(details), (experiment.name, variant)
