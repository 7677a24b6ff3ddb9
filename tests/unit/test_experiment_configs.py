"""Every experiment's declaration and every config it ships load and agree with the suite's conventions."""

import dataclasses
from pathlib import Path

import pytest

from medrepro.config import load_config
from medrepro.config_sections import RuntimeConfig
from medrepro.suite import registry
from medrepro.suite.spec import resolve

EXPERIMENTS = registry.all_experiments()
CONFIGS = [(e, path) for e in EXPERIMENTS
           for path in sorted((registry.experiments_dir() / e.name / "configs").glob("*.yaml"))]


@pytest.mark.parametrize(("experiment", "path"), CONFIGS, ids=[f"{e.name}/{p.name}" for e, p in CONFIGS])
def test_config_loads_and_keeps_the_conventions(experiment, path):
    cfg = load_config(experiment.config_class(), path)
    assert isinstance(cfg.seed, int) and isinstance(cfg.runtime, RuntimeConfig)
    defaults = experiment.config_class()().paths
    # DVC's outs are the default paths: a profile that moved them would write where DVC does not look.
    assert cfg.paths == defaults, f"{path} overrides paths; DVC stages use the defaults"
    assert cfg.paths.runs == f"runs/{experiment.name}" and cfg.paths.results == f"results/{experiment.name}"
    if path.stem == "smoke":
        pinned = RuntimeConfig(threads=1, cpu_kernels="portable")
        assert cfg.runtime == pinned, "committed numbers need a pinned runtime"


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e.name for e in EXPERIMENTS])
def test_declaration_names_real_functions_and_config_keys(experiment):
    for target in (experiment.train, experiment.evaluate, experiment.bench,
                   *(c.run for c in (*experiment.stages, *experiment.commands))):
        assert callable(resolve(target)), target
    assert experiment.stages[0].name == "prepare" and len(set(experiment.variants)) == len(experiment.variants)
    fields = {f.name for f in dataclasses.fields(experiment.config_class()().paths)}
    for stage in experiment.stages:
        for key in (*stage.outs, *stage.deps):
            section, name = key.split(".")
            assert section == "paths" and name in fields, key
    reference = registry.experiments_dir() / experiment.name / "reference.yaml"
    readme = registry.experiments_dir() / experiment.name / "README.md"
    assert reference.is_file() and readme.is_file()


def test_retclip_has_an_encoder_for_every_variant():
    experiment = registry.get("retclip")
    for profile in ("smoke", "full"):
        cfg = load_config(experiment.config_class(), Path(registry.experiments_dir()) / "retclip" / "configs"
                          / f"{profile}.yaml")
        assert tuple(cfg.encoders) == experiment.variants
