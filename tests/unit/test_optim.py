"""No-decay parameter groups, learning-rate schedules, and the epoch → optimizer-step conversion."""

import itertools
import math

import pytest
import torch
from torch import nn

from medrepro.errors import ConfigError
from medrepro.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from medrepro.trainer import Schedule, TrainConfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: must still appear once


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_param_groups_split_by_dimension():
    net = Net()
    decay, no_decay = param_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert set(ids(decay["params"])) == {id(net.embed.weight), id(net.fc.weight), id(net.conv.weight)}
    assert set(ids(no_decay["params"])) == {id(net.fc.bias), id(net.norm.weight), id(net.norm.bias),
                                            id(net.conv.bias), id(net.scale)}


def test_every_trainable_parameter_exactly_once_and_frozen_excluded():
    net = Net()
    grouped = [p for group in param_groups(net, 0.1) for p in group["params"]]
    assert len(ids(grouped)) == len(set(ids(grouped)))
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert set(ids(grouped)) == trainable
    assert id(net.frozen.weight) not in set(ids(grouped)) and id(net.frozen.bias) not in set(ids(grouped))


def test_build_optimizer_uses_the_groups():
    net = Net()
    opt = build_optimizer(net, lr=0.01, weight_decay=0.2, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 0.01 and g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    # A bias must not shrink under weight decay when its gradient is zero.
    net.fc.bias.data.fill_(1.0)
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    weight_before = net.fc.weight.detach().clone()
    opt.step()
    assert torch.equal(net.fc.bias, torch.ones(8))
    assert not torch.equal(net.fc.weight, weight_before)  # decayed


# --------------------------------------------------------------------------------------- lr_factor


@pytest.mark.parametrize("shape", ["cosine", "linear", "constant"])
def test_linear_warmup_reaches_one_at_end_of_warmup(shape):
    factors = [lr_factor(s, 10, 100, shape) for s in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors))
    assert lr_factor(10, 10, 100, shape) == pytest.approx(1.0)  # decay starts from the peak


def test_no_warmup_starts_at_one():
    assert lr_factor(0, 0, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(0, 0, 100, "linear") == pytest.approx(1.0)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_decays_monotonically_to_min_ratio(min_ratio):
    after = [lr_factor(s, 10, 100, "cosine", min_ratio) for s in range(10, 121)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))
    assert lr_factor(100, 10, 100, "cosine", min_ratio) == pytest.approx(min_ratio)
    assert lr_factor(120, 10, 100, "cosine", min_ratio) == pytest.approx(min_ratio)  # stays there
    assert lr_factor(55, 10, 100, "cosine", min_ratio) == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)
    assert min(after) >= min_ratio - 1e-12


def test_cosine_shape_at_quarter():
    expected = 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lr_factor(25, 0, 100, "cosine") == pytest.approx(expected)


@pytest.mark.parametrize(("min_ratio", "mid"), [(0.0, 0.5), (0.2, 0.6)])
def test_linear_decay(min_ratio, mid):
    assert lr_factor(55, 10, 100, "linear", min_ratio) == pytest.approx(mid)
    assert lr_factor(100, 10, 100, "linear", min_ratio) == pytest.approx(min_ratio)
    assert lr_factor(32, 10, 100, "linear", min_ratio) > lr_factor(33, 10, 100, "linear", min_ratio)


def test_constant_after_warmup():
    assert [lr_factor(s, 5, 50, "constant") for s in range(5, 60)] == [1.0] * 55


def test_unknown_shape():
    with pytest.raises(ValueError, match="shape"):
        lr_factor(20, 5, 50, "step")


@pytest.mark.parametrize(("shape", "warmup", "total"), [("cosine", 4, 20), ("linear", 3, 15), ("constant", 5, 10),
                                                       ("cosine", 0, 12)])
def test_scheduler_stepped_n_times_matches_lr_factor(shape, warmup, total):
    param = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=0.5)
    scheduler = build_scheduler(opt, warmup, total, shape, min_ratio=0.1)
    for n in range(total + 3):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * lr_factor(n, warmup, total, shape, 0.1)), n
        opt.step()
        scheduler.step()


# --------------------------------------------------------------------------------- Schedule in epochs


def test_schedule_counts_in_global_batches():
    cfg = TrainConfig(epochs=2.5, batch_size=32, warmup_epochs=0.5, eval_every_epochs=0.5)
    s = Schedule.from_config(cfg, 960)
    assert s == Schedule(steps_per_epoch=30, total_steps=75, warmup_steps=15, eval_every=15)


def test_schedule_independent_of_accumulation():
    """batch_size is the global batch: accumulation must not multiply the number of steps."""
    one = Schedule.from_config(TrainConfig(batch_size=32, grad_accum=1), 1000)
    four = Schedule.from_config(TrainConfig(batch_size=32, grad_accum=4), 1000)
    assert one == four
    assert one.steps_per_epoch == 1000 // 32


def test_schedule_drops_incomplete_batch_and_rounds_total_up():
    s = Schedule.from_config(TrainConfig(epochs=1.5, batch_size=32), 100)
    assert s.steps_per_epoch == 3 and s.total_steps == 5


def test_schedule_warmup_steps_taken_as_given():
    s = Schedule.from_config(TrainConfig(epochs=3, batch_size=10, warmup_steps=7), 100)
    assert s.warmup_steps == 7 and s.total_steps == 30


def test_schedule_warmup_epochs_converted():
    s = Schedule.from_config(TrainConfig(epochs=3, batch_size=10, warmup_epochs=1.0), 100)
    assert s.warmup_steps == 10


def test_schedule_eval_every_fraction_and_at_least_one():
    assert Schedule.from_config(TrainConfig(batch_size=10, eval_every_epochs=0.5), 200).eval_every == 10
    assert Schedule.from_config(TrainConfig(batch_size=10, eval_every_epochs=2.0), 200).eval_every == 40
    assert Schedule.from_config(TrainConfig(batch_size=10, eval_every_epochs=0.01), 200).eval_every == 1


def test_schedule_rejects_fewer_samples_than_a_batch():
    with pytest.raises(ConfigError, match=r"train\.batch_size 64 is larger than the 63 training samples"):
        Schedule.from_config(TrainConfig(batch_size=64), 63)
    assert Schedule.from_config(TrainConfig(batch_size=64), 64).steps_per_epoch == 1


def test_train_config_rejects_both_warmups():
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup_steps=10, warmup_epochs=0.5)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"grad_accum": 0}])
def test_train_config_rejects_non_positive(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)
