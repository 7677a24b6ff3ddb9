"""biomedica_clip's side of open_clip_train: the argument list (checked by open_clip_train's own parser),
the refusals that must come before it starts, the launcher, and reading its progress log back."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip_train.params import parse_args

from experiments.biomedica_clip import synthetic
from experiments.biomedica_clip.config import BiomedicaClipConfig, SyntheticConfig, TrainConfig
from experiments.biomedica_clip.evaluate import before_after, chance_recall, grouped_mean, majority_class
from experiments.biomedica_clip.train import (
    launcher,
    open_clip_args,
    progress_records,
    set_aside_incomplete,
    validation_records,
)
from medrepro.errors import ConfigError, DataError

SMALL = SyntheticConfig(image_size=32)


def two_sources(tmp_path: Path) -> BiomedicaClipConfig:
    for name, count in (("a", 4), ("b", 2)):
        synthetic.write_shards(tmp_path / name, synthetic.samples(0, "train", count * 3, SMALL), 3)
    synthetic.write_shards(tmp_path / "h", synthetic.samples(0, "heldout", 5, SMALL), 5)
    cfg = BiomedicaClipConfig()
    cfg.data.source = "shards"
    cfg.data.train = f"{tmp_path}/a/{{000000..000003}}.tar::{tmp_path}/b/{{000000..000001}}.tar"
    cfg.data.heldout = f"{tmp_path}/h/000000.tar"
    cfg.model.name, cfg.model.pretrained = "ViT-B-32-quickgelu", "openai"
    return cfg


def test_every_exposed_option_reaches_open_clip_train_as_it_parses_it(tmp_path):
    cfg = two_sources(tmp_path)
    cfg.data.upsampling = "1::4"
    cfg.train = TrainConfig(dataset_resampled=True, batch_size=8, epochs=3, lr=5e-6, wd=0.1, warmup=7,
                            precision="amp", accum_freq=2, grad_checkpointing=True, local_loss=True,
                            gather_with_grad=True, lock_image=True, lock_image_unlocked_groups=1, lock_text=True,
                            lock_text_unlocked_layers=2, force_patch_dropout=0.0, save_frequency=2, workers=2,
                            processes=1, tensorboard=True, wandb=True, wandb_project="p",
                            extra_args=["--lr-scheduler", "const"])
    args = parse_args(open_clip_args(cfg, tmp_path / "run", "latest"))
    assert args.train_data.count("::") == 1 and args.train_data_upsampling_factors == "1::4"
    assert args.dataset_type == "webdataset" and args.dataset_resampled
    assert args.train_num_samples == 18  # both sources' sizes.json: open_clip itself reads only the first
    assert args.val_data.endswith("h/000000.tar") and args.val_num_samples == 5
    assert (args.model, args.pretrained) == ("ViT-B-32-quickgelu", "openai")
    assert (args.batch_size, args.epochs, args.lr, args.wd, args.warmup, args.accum_freq) == (8, 3, 5e-6, 0.1, 7, 2)
    assert args.precision == "amp" and args.grad_checkpointing and args.local_loss and args.gather_with_grad
    assert args.lock_image and args.lock_image_unlocked_groups == 1
    assert args.lock_text and args.lock_text_unlocked_layers == 2
    assert args.force_patch_dropout == 0.0 and args.save_frequency == 2 and args.resume == "latest"
    assert args.report_to == "tensorboard,wandb" and args.wandb_project_name == "p"
    assert args.lr_scheduler == "const" and args.seed == 0 and args.name == "open_clip"


def test_options_left_off_keep_open_clip_defaults(tmp_path):
    cfg = two_sources(tmp_path)
    cfg.train.workers = 1
    args = parse_args(open_clip_args(cfg, tmp_path / "run", None))
    assert not (args.lock_image or args.lock_text or args.local_loss or args.grad_checkpointing)
    assert args.force_patch_dropout is None and args.resume is None and not args.dataset_resampled


def test_fewer_shards_than_processes_times_workers_is_refused_before_launch(tmp_path):
    cfg = two_sources(tmp_path)
    cfg.train.processes, cfg.train.workers = 2, 4
    with pytest.raises(ConfigError, match="6 shards cannot feed 2 processes × 4 loader workers"):
        open_clip_args(cfg, tmp_path / "run", None)
    cfg.train.dataset_resampled = True  # resampled shards are drawn with replacement: any count feeds them
    open_clip_args(cfg, tmp_path / "run", None)


def test_a_training_shard_as_the_held_out_set_is_refused_before_launch(tmp_path):
    cfg = two_sources(tmp_path)
    cfg.train.workers = 1
    cfg.data.heldout = f"{tmp_path}/b/../a/000003.tar"  # a training shard, spelled another way
    with pytest.raises(ConfigError, match=r"held-out shard .*000003\.tar is also a training shard") as info:
        open_clip_args(cfg, tmp_path / "run", None)
    assert info.value.key == "data.heldout" and "\n" not in str(info.value)


def test_upsampling_needs_resampling_and_sizes_are_needed_to_size_an_epoch(tmp_path):
    cfg = two_sources(tmp_path)
    cfg.train.workers = 1
    cfg.data.upsampling = "1::4"
    with pytest.raises(ConfigError, match="dataset_resampled"):
        open_clip_args(cfg, tmp_path / "run", None)
    cfg.data.upsampling = ""
    (tmp_path / "b" / "sizes.json").unlink()
    with pytest.raises(DataError, match="run `medrepro biomedica_clip audit`"):
        open_clip_args(cfg, tmp_path / "run", None)
    cfg.train.train_num_samples = 100
    assert parse_args(open_clip_args(cfg, tmp_path / "run", None)).train_num_samples == 100


def test_wandb_key_never_enters_the_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    cfg = two_sources(tmp_path)
    cfg.train.wandb, cfg.train.workers = True, 1
    assert not any("secret-key-123" in a for a in open_clip_args(cfg, tmp_path / "run", None))


def test_launcher_runs_open_clip_main_through_the_compat_entry_and_torchrun_for_several_processes():
    cfg = BiomedicaClipConfig()
    assert launcher(cfg) == [sys.executable, "-m", "experiments.biomedica_clip.open_clip_compat"]
    cfg.train.processes = 4
    assert launcher(cfg)[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert launcher(cfg)[-2:] == ["-m", "experiments.biomedica_clip.open_clip_compat"]


def patched_open_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip_compat.patch() in this process, undone after the test."""
    from open_clip_train import data as open_clip_data
    from open_clip_train import main as open_clip_main

    from experiments.biomedica_clip import open_clip_compat

    for module, name in ((open_clip_data, "tar_file_expander"), (open_clip_data, "get_wds_dataset"),
                         (open_clip_main, "train_one_epoch"), (torch.nn.parallel, "DistributedDataParallel")):
        monkeypatch.setattr(module, name, getattr(module, name))
    open_clip_compat.patch()


def test_compat_keeps_open_clip_main_and_only_drops_the_shard_end_marker(tmp_path, monkeypatch):
    from open_clip_train import data as open_clip_data

    synthetic.write_shards(tmp_path, synthetic.samples(0, "train", 6, SMALL), 3)
    urls = [{"url": str(p)} for p in sorted(tmp_path.glob("*.tar"))]
    with pytest.raises(KeyError, match="fname"):  # the defect, as shipped
        list(open_clip_data.tarfile_to_samples_nothrow(urls))
    patched_open_clip(monkeypatch)
    samples = list(open_clip_data.tarfile_to_samples_nothrow(urls))
    assert len(samples) == 6 and all({"jpg", "txt", "json"} <= set(s) for s in samples)


def wds_epoch_captions(shards: Path, epoch: int, seed: int = 0, resampled: bool = False) -> list[str]:
    """The captions of one training epoch, in order, through open_clip_train's WebDataset loader built
    afresh (as a resumed process builds it) at `epoch`."""
    from argparse import Namespace

    from open_clip_train import data as open_clip_data
    from torchvision.transforms.functional import to_tensor

    args = Namespace(train_data=f"{shards}/{{000000..000003}}.tar", train_num_samples=24, seed=seed, rank=0,
                     dataset_resampled=resampled, train_data_upsampling_factors=None, batch_size=4, workers=0,
                     world_size=1)
    info = open_clip_data.get_wds_dataset(args, to_tensor, is_train=True, epoch=epoch, tokenizer=lambda t: [t])
    info.set_epoch(epoch)
    return [caption for _, captions in info.dataloader for caption in captions]


@pytest.mark.parametrize("resampled", [False, True])
def test_webdataset_sample_order_is_keyed_by_seed_and_epoch(tmp_path, monkeypatch, resampled):
    synthetic.write_shards(tmp_path, synthetic.samples(0, "train", 24, SMALL), 6)
    patched_open_clip(monkeypatch)
    first = wds_epoch_captions(tmp_path, 1, resampled=resampled)
    # The same epoch in another loader (a resumed process) draws the same order, whatever ran before it.
    wds_epoch_captions(tmp_path, 0, resampled=resampled)
    assert wds_epoch_captions(tmp_path, 1, resampled=resampled) == first and len(first) == 24
    assert wds_epoch_captions(tmp_path, 2, resampled=resampled) != first
    assert wds_epoch_captions(tmp_path, 1, seed=1, resampled=resampled) != first


def test_progress_lines_become_steps(tmp_path):
    line = ("2026-11-23,16:44:44 | INFO | Train Epoch: {e} [{n}/768 ({p}%)] Data (t): 0.201 Batch (t): 0.738, "
            "86.7540/s, 86.7540/s/gpu LR: 0.000879 Logit Scale: 14.274 Contrastive_loss: 2.9403 (2.9403) "
            "Loss: {loss} (2.9403)")
    log = tmp_path / "out.log"
    log.write_text("\n".join([line.format(e=0, n=64, p=8, loss=4.1), "unrelated",
                              line.format(e=1, n=768, p=100, loss=2.5)]))
    cfg = BiomedicaClipConfig()
    cfg.train.batch_size = 64
    records = progress_records(log, cfg)
    assert [r["step"] for r in records] == [1, 24]
    assert records[1]["train/loss"] == 2.5 and records[0]["train/samples_per_s"] == pytest.approx(86.754)
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"epoch": e, "clip_val_loss": loss, "image_to_text_R@1": 0.5,
                                           "num_samples": 9}) + "\n" for e, loss in ((1, 3.0), (2, 2.0), (2, 1.5))))
    assert validation_records(results, records, epochs=2) == [
        {"step": 12, "val/loss": 3.0, "val/i2t_r1": 0.5}, {"step": 24, "val/loss": 1.5, "val/i2t_r1": 0.5}]


def test_chance_recall_matches_a_simulated_random_ranking():
    rng = np.random.default_rng(0)
    captions = rng.integers(0, 30, size=60)
    relevant = (captions[:, None] == captions[None, :]).sum(1)
    hits = []
    for _ in range(400):
        order = rng.permutation(60)
        hits.append(np.mean([np.any(captions[order[:5]] == c) for c in captions]))
    assert chance_recall(relevant, 60, 5) == pytest.approx(np.mean(hits), abs=0.01)


def test_grouped_interval_resamples_whole_groups():
    values = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    together = grouped_mean(values, np.array([0, 0, 0, 0, 1, 1, 1, 1]), 500, 0.05, 0)
    apart = grouped_mean(values, np.arange(8), 500, 0.05, 0)
    assert together[""] == apart[""] == 0.5
    # Two groups of four perfectly correlated samples carry the information of two samples, not eight.
    assert together["_ci_high"] - together["_ci_low"] > apart["_ci_high"] - apart["_ci_low"]


def test_paired_differences_use_the_same_article_resamples_as_before_and_after():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 4)  # 40 articles of 4 figures
    easy = np.repeat(rng.random(40) < 0.5, 4)  # articles whose figures every model gets right more often
    before = {name: (easy & (rng.random(160) < 0.8)).astype(float) for name in ("zeroshot_acc", "i2t_r1", "t2i_r1")}
    after = {name: np.maximum(v, (rng.random(160) < 0.3)).astype(float) for name, v in before.items()}
    mask = np.arange(160) % 5 != 0  # zero-shot scores a subset of the samples, given in that order
    for phase in (before, after):
        phase["zeroshot_acc"] = phase["zeroshot_acc"][mask]
    cfg = BiomedicaClipConfig()
    cfg.eval.bootstrap = 400
    result = before_after({"before": before, "after": after}, groups, mask, cfg)
    for name in ("zeroshot_acc", "i2t_r1", "t2i_r1"):
        assert result[f"diff/{name}"] == pytest.approx(result[f"after/{name}"] - result[f"before/{name}"])
        # Pairing removes the spread between articles that both phases share: the difference's interval
        # is narrower than either phase's, and lies above 0 (after never misses what before hit).
        width = result[f"diff/{name}_ci_high"] - result[f"diff/{name}_ci_low"]
        assert width < result[f"after/{name}_ci_high"] - result[f"after/{name}_ci_low"]
        assert result[f"diff/{name}_ci_low"] > 0
    assert result["after/zeroshot_acc"] == pytest.approx(after["zeroshot_acc"].mean())
    same = before_after({"before": before, "after": before}, groups, mask, cfg)
    assert same["diff/i2t_r1"] == same["diff/i2t_r1_ci_low"] == same["diff/i2t_r1_ci_high"] == 0


def test_majority_class_is_the_most_frequent_training_label_ties_by_name():
    assert majority_class({"Microscopy": 5, "Plots and Charts": 9, "Tables": 9}, "image_primary_label") == \
        "Plots and Charts"
    with pytest.raises(DataError, match="no training sample has a single image_primary_label"):
        majority_class({}, "image_primary_label")


def test_half_written_checkpoints_are_set_aside_before_resume_latest(tmp_path):
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(64)}}, tmp_path / "epoch_1.pt")
    torch.save({"epoch": 2, "state_dict": {"w": torch.ones(64)}}, tmp_path / "epoch_2.pt")
    data = (tmp_path / "epoch_2.pt").read_bytes()
    (tmp_path / "epoch_2.pt").write_bytes(data[: len(data) // 2])  # killed while torch.save wrote it
    (tmp_path / "epoch_3.pt").write_bytes(b"")
    set_aside_incomplete(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "epoch_2.pt.incomplete",
                                                          "epoch_3.pt.incomplete"]
    assert torch.load(tmp_path / "epoch_1.pt", weights_only=True)["epoch"] == 1
