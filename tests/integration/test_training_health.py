"""The health monitor stays quiet on every smoke run of the pipeline (the `reproduced` run)."""

import json

import pytest

from medrepro.suite import registry

pytestmark = pytest.mark.integration


def test_no_health_sign_fires_on_any_smoke_run(reproduced):
    checked = 0
    for experiment in registry.all_experiments():
        for variant in experiment.variants:
            info = reproduced.workdir / "results" / experiment.name / variant / "info.json"
            if not info.is_file():
                continue
            health = json.loads(info.read_text())["training_health"]
            if health is None:
                continue  # trained outside the shared loop (open_clip_train, a tree baseline)
            assert health == [], f"{experiment.name}/{variant}: {[w['message'] for w in health]}"
            run = reproduced.workdir / "runs" / experiment.name / variant
            fits = [*run.glob("fit.json"), *run.glob("*/fit.json")]  # a run per seed, when trained per seed
            assert fits and all(json.loads(f.read_text())["state"]["health"]["epochs"] for f in fits), \
                f"{experiment.name}/{variant}: the monitor saw no epoch"
            checked += 1
    assert checked >= 2, "the retclip and cross_encoder results are there"
