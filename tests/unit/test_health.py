"""The training health monitor: each sign forced on its own, silence on healthy runs, and the way from the
loop to fit.json, the manifest and the results' info.json."""

import json

import pytest
import torch

from medrepro.config import from_dict
from medrepro.config_sections import HealthConfig, TrainConfig
from medrepro.errors import ConfigError
from medrepro.health import EpochHealth, EpochStats, HealthMonitor
from medrepro.results import Evaluation, write_evaluation
from medrepro.rundir import RunDir
from medrepro.trainer import fit
from tests.unit.test_trainer import config, data, make_model, mse


def epochs(losses, acc=None, scale=None):
    return [EpochHealth(epoch=e, step=10 * (e + 1), loss=loss, max_loss=loss, acc=acc, logit_scale=scale)
            for e, loss in enumerate(losses)]


def fired(cfg: HealthConfig, records) -> list[str]:
    monitor = HealthMonitor(cfg)
    return [w.sign for r in records for w in monitor.end_epoch(r)]


CONTRASTIVE = HealthConfig(chance_acc=1 / 32, logit_scale_max=100.0)
# The seed's healthy run: loss from about 15 down to 2, accuracy rising, the scale below its clamp.
HEALTHY = [EpochHealth(e, 10 * (e + 1), loss, loss * 1.3, acc, scale)
           for e, (loss, acc, scale) in enumerate(zip([15.0, 9.0, 6.0, 4.0, 3.0, 2.5, 2.2, 2.1, 2.05, 2.04],
                                                      [0.01, 0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.78, 0.8, 0.8],
                                                      [90.0, 92, 95, 96, 97, 97, 98, 98, 98, 98], strict=True))]


def test_a_healthy_run_fires_nothing():
    assert fired(CONTRASTIVE, HEALTHY) == []


def test_loss_above_the_threshold():
    assert fired(HealthConfig(), epochs([150.0, 90.0])) == ["loss_max"]
    assert fired(HealthConfig(loss_max=0), epochs([150.0, 90.0])) == [], "0 turns the sign off"


def test_flat_loss_fires_after_n_epochs_but_not_when_converged():
    assert fired(HealthConfig(flat_epochs=3), epochs([5.0, 5.0, 5.01, 4.99])) == ["flat"]
    assert fired(HealthConfig(flat_epochs=3), epochs([5.0, 5.0, 5.01])) == [], "only 2 epochs flat"
    assert fired(HealthConfig(flat_epochs=3), epochs([5.0, 0.1, 0.1, 0.1, 0.1])) == [], "flat but converged"


def test_accuracy_stuck_at_chance():
    cfg = HealthConfig(chance_acc=1 / 32, chance_epochs=3)
    assert fired(cfg, epochs([4.0, 3.0, 2.0], acc=0.03)) == ["chance"]
    assert fired(cfg, epochs([4.0, 3.0, 2.0], acc=0.2)) == []
    assert fired(HealthConfig(), epochs([4.0, 3.0, 2.0], acc=0.03)) == [], "no chance level configured"
    assert fired(cfg, epochs([4.0, 3.0, 2.0])) == [], "the loss reports no accuracy"


def test_logit_scale_at_its_ceiling():
    cfg = HealthConfig(logit_scale_max=100.0)
    assert fired(cfg, epochs([4.0], scale=100.0)) == ["logit_ceiling"]
    assert fired(cfg, epochs([4.0], scale=99.5)) == ["logit_ceiling"], "within the relative tolerance"
    assert fired(cfg, epochs([4.0], scale=80.0)) == []


def test_wild_oscillation():
    assert fired(HealthConfig(), epochs([10.0, 4.0, 9.0, 3.0])) == ["oscillation"]
    assert fired(HealthConfig(), epochs([10.0, 4.0, 5.0, 3.0])) == [], "a rise of a quarter is noise"


def test_each_sign_fires_once_and_the_state_survives_a_resume():
    monitor = HealthMonitor(HealthConfig())
    for record in epochs([150.0, 160.0]):
        monitor.end_epoch(record)
    resumed = HealthMonitor(HealthConfig(), json.loads(json.dumps(monitor.state())))
    assert resumed.end_epoch(epochs([170.0])[0]) == [], "fired before the resume"
    assert [w["sign"] for w in resumed.report()] == ["loss_max"]


def test_epoch_stats_reduce_the_steps():
    class OneProcess:
        num_processes = 1

    stats = EpochStats(torch.device("cpu"))
    for loss, acc in [(1.0, 0.25), (3.0, 0.75), (2.0, 0.5)]:
        stats.add(torch.tensor(loss), {"acc": torch.tensor(acc), "logit_scale": torch.tensor(10.0 * loss)})
    stats.add(torch.tensor(float("nan")), {})  # left to the divergence check
    record = stats.reduce(OneProcess(), epoch=0, step=3)
    assert record.loss == pytest.approx(2.0) and record.max_loss == 3.0 and record.acc == pytest.approx(0.5)
    assert record.logit_scale == 30.0
    stats.reset()
    stats.add(torch.tensor(1.0), {})
    assert stats.reduce(OneProcess(), 1, 4).acc is None
    stats.reset()
    stats.add(torch.tensor(float("inf")), {})
    assert stats.reduce(OneProcess(), 2, 5) is None


def test_negative_threshold_is_rejected():
    with pytest.raises(ConfigError, match=r"health\.flat_epochs must be 0 or more"):
        from_dict(TrainConfig, {"health": {"flat_epochs": -1}})


def test_signs_forced_through_fit_reach_fit_json_manifest_and_results(tmp_path, capsys):
    def sick_loss(model, batch):
        loss, _ = mse(model, batch)
        # A loss far above 100 (an offset: the gradients stay those of a healthy run), an in-batch accuracy
        # at chance and a logit scale pinned at its clamp.
        return loss + 1000.0, {"acc": torch.tensor(1 / 16), "logit_scale": torch.tensor(100.0)}

    cfg = config(epochs=4, health={"chance_acc": 1 / 16, "logit_scale_max": 100.0, "chance_epochs": 3,
                                   "flat_epochs": 0})
    result = fit(make_model(), data(), cfg, tmp_path / "run", loss_fn=sick_loss, seed=0)
    signs = {"loss_max", "chance", "logit_ceiling"}
    assert {w["sign"] for w in result.health} == signs
    err = capsys.readouterr().err
    assert err.count("WARNING training health") == 3 and f"{len(signs)} health warning(s)" in err
    fit_json = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert {w["sign"] for w in fit_json["health"]} == signs
    assert {w["sign"] for w in json.loads((tmp_path / "run" / "manifest.json").read_text())["health"]} == signs
    write_evaluation(tmp_path / "results", Evaluation({"acc": 0.5}, {}, {}), RunDir(tmp_path / "run"))
    info = json.loads((tmp_path / "results" / "info.json").read_text())
    assert {w["sign"] for w in info["training_health"]} == signs


def test_a_healthy_fit_is_quiet(tmp_path, capsys):
    result = fit(make_model(), data(), config(epochs=25, lr=0.2), tmp_path, loss_fn=mse, seed=0)
    assert result.health == [] and "WARNING" not in capsys.readouterr().err
    assert len(result.state.health["epochs"]) == 25


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_retclip_thresholds_follow_its_batch_and_clamp(profile):
    """A changed batch size or clamp must move the health thresholds with it."""
    import math

    from experiments.retclip.config import RetClipConfig
    from medrepro.config import load_config
    from medrepro.suite import registry

    cfg = load_config(RetClipConfig, registry.experiments_dir() / "retclip" / "configs" / f"{profile}.yaml")
    assert cfg.train.health.chance_acc == pytest.approx(1 / cfg.train.batch_size)
    assert cfg.train.health.logit_scale_max == pytest.approx(math.exp(cfg.model.max_logit_scale), rel=1e-6)
