"""Every experiment hands its models tensors on the models' own device, in training, validation and
evaluation (see `device_check`: the model on the meta device, any operation mixing devices fails).

Training and validation are taken from the experiment's own `train`: `medrepro.trainer.fit` is replaced
by a stand-in that keeps the model, dataset, collate, loss and validation hooks `train` built and stops
there. Evaluation is the experiment's `evaluate` on the finished smoke run, with the default device
answering `meta`. All of it reads the smoke pipeline's data (the `reproduced` run).
"""

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.utils import send_to_device

from medrepro import config, trainer
from medrepro.rundir import RunDir
from medrepro.suite import registry
from medrepro.suite.spec import resolve
from tests.integration.device_check import META, default_device_is_meta, run_path

pytestmark = pytest.mark.integration

# The variant each experiment trains with the shared loop (biomedica_clip trains with open_clip_train,
# whose device handling is open_clip's own: only its evaluation is ours).
TRAINED = {"retclip": "pubmedbert", "cross_encoder": "sapbert", "ct_clip": "cxr_bert", "exmed_bert": "random_init"}
EVALUATED = {**TRAINED, "biomedica_clip": "finetune"}


class _Captured(Exception):
    pass


def _hooks_of(call, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run `call` (an experiment's train) up to its `fit` call; the arguments it passed."""
    captured: dict[str, Any] = {}

    def stand_in(model, train_set, cfg, run_dir, **hooks):
        captured.update(model=model, train_set=train_set, **hooks)
        raise _Captured

    # The experiments' modules imported `fit` by name: replaced there, where it is called.
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("experiments.") and getattr(module, "fit", None) is trainer.fit:
            monkeypatch.setattr(module, "fit", stand_in)
    with pytest.raises(_Captured):
        call()
    return captured


def _check_training_and_validation(hooks: dict[str, Any]) -> None:
    model = hooks["model"].to(META)
    samples = [hooks["train_set"][i] for i in range(2)]
    batch = hooks["collate_fn"](samples) if hooks.get("collate_fn") else torch.utils.data.default_collate(samples)
    # As the loop does: the batch moved to the model's device, then the experiment's loss.
    batch = send_to_device(batch, META)
    assert run_path(lambda: hooks["loss_fn"](model, batch)) in ("reached", "returned")
    if hooks.get("evaluate") is not None:
        model.eval()
        with torch.no_grad():
            assert run_path(lambda: hooks["evaluate"](model)) in ("reached", "returned")


def _smoke_config(name: str) -> Any:
    experiment = registry.get(name)
    return experiment, config.load_config(experiment.config_class(),
                                          registry.experiments_dir() / name / "configs" / "smoke.yaml")


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_training_and_validation_keep_to_the_model_device(name, reproduced, monkeypatch, tmp_path):
    monkeypatch.chdir(reproduced.workdir)  # the smoke configs' relative paths, as DVC runs the stages
    experiment, cfg = _smoke_config(name)
    train = resolve(experiment.train)
    hooks = _hooks_of(lambda: train(cfg, TRAINED[name], RunDir(tmp_path / "run"), None), monkeypatch)
    _check_training_and_validation(hooks)


def test_exmed_bert_pretraining_keeps_to_the_model_device(reproduced, monkeypatch, tmp_path):
    monkeypatch.chdir(reproduced.workdir)
    from experiments.exmed_bert import pretrain

    _, cfg = _smoke_config("exmed_bert")
    hooks = _hooks_of(lambda: pretrain.pretrain_one(cfg, "random_init", RunDir(tmp_path / "run")), monkeypatch)
    _check_training_and_validation(hooks)


@pytest.mark.parametrize("name", sorted(EVALUATED))
def test_evaluation_keeps_to_the_model_device(name, reproduced, monkeypatch, tmp_path):
    monkeypatch.chdir(reproduced.workdir)
    experiment, cfg = _smoke_config(name)
    evaluate = resolve(experiment.evaluate)
    run = RunDir(Path(cfg.paths.runs) / EVALUATED[name])
    with default_device_is_meta():
        outcome = run_path(lambda: evaluate(cfg, EVALUATED[name], run, tmp_path / "results", "best"))
    assert outcome == "reached", f"{name}'s evaluation never ran its model on the default device"
