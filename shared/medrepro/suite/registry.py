"""The one place experiments are found: every `experiments/<name>/experiment.py`.

Adding a directory with that file (see experiments/README.md) is all it takes for the command line,
nox, the images, the DVC pipeline and the results table to know the experiment.
"""

import importlib
import importlib.util
from pathlib import Path

from medrepro.errors import MedreproError
from medrepro.suite.spec import Experiment


def experiments_dir() -> Path:
    """The `experiments` package's directory, wherever it is imported from."""
    spec = importlib.util.find_spec("experiments")
    if spec is None or not spec.submodule_search_locations:
        raise MedreproError("the `experiments` package is not importable: install medrepro with `pip install -e .`")
    return Path(next(iter(spec.submodule_search_locations)))


def repo_root() -> Path:
    return experiments_dir().parent


def names() -> list[str]:
    return sorted(p.parent.name for p in experiments_dir().glob("*/experiment.py"))


def get(name: str) -> Experiment:
    if name not in names():
        raise MedreproError(f"unknown experiment {name!r}; the suite has {', '.join(names())}")
    experiment = importlib.import_module(f"experiments.{name}.experiment").EXPERIMENT
    if experiment.name != name:
        raise MedreproError(f"experiments/{name}/experiment.py declares the name {experiment.name!r}; "
                            "it must match its directory")
    return experiment


def all_experiments() -> list[Experiment]:
    return [get(name) for name in names()]
