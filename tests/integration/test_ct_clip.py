"""ct_clip end to end: the smoke run learns (the `reproduced` run), its intervals over patients are wider
than over volumes and no evaluated patient chose its checkpoint, a killed training resumes to the same
bits, two processes agree with one on a single training shard (fewer shards than ranks), and `check-shards`
turns a damaged shard into exit 2 naming shard and sample."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.ct_clip import zeroshot
from experiments.ct_clip.ctrate import patient_of
from tests.integration.conftest import final_weights, kill_when, medrepro

pytestmark = pytest.mark.integration

# 56 training volumes in one shard, one per patient, 8 of them held out for selection, 16 validation
# volumes; batch 8: 6 steps per epoch, 18 in all.
DATA = ["data.synthetic.train=56", "data.synthetic.valid=16", "data.synthetic.scans=1",
        "data.synthetic.reconstructions=1", "data.shard_samples=64", "data.workers=1",
        "encoders.cxr_bert.tiny.dropout=0.0"]
TRAIN = [*DATA, "train.epochs=3", "train.batch_size=8", "train.eval_every_epochs=1.0", "train.log_every_steps=1",
         "train.warmup_steps=2", "train.tracking.tensorboard=false", "eval.selection_patients=8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ct_clip")
    medrepro(["ct_clip", "prepare", *DATA], work)
    medrepro(["ct_clip", "shards", *DATA], work)
    return work


@pytest.fixture(scope="module")
def reference_run(workdir: Path) -> Path:
    run = workdir / "runs" / "reference"
    medrepro(["ct_clip", "train", "--variant", "cxr_bert", "--out", str(run), *TRAIN], workdir)
    return run


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_smoke_learns_with_real_intervals(reproduced):
    results = reproduced.workdir / "results" / "ct_clip" / "cxr_bert"
    m = json.loads((results / "details.json").read_text())
    assert m["auroc_macro_ci_low"] < m["auroc_macro"] < m["auroc_macro_ci_high"]
    assert m["auroc_macro_ci_low"] > 0.5, "mean AUROC's whole interval must clear chance"
    for name in ("f1_macro", "accuracy_macro", "precision_macro", "f1_positive_weighted"):
        assert m[f"{name}_ci_high"] - m[f"{name}_ci_low"] > 0, f"{name}: zero-width interval"
    assert m["labels_evaluated"] == 18 and m["n_volumes"] >= 48 and m["n_patients"] < m["n_volumes"]
    assert m["baseline/prevalence/auroc_macro"] == 0.5
    assert {"baseline/all_absent/f1_macro", "baseline/all_present/f1_macro"} < m.keys()
    headline = json.loads((results / "metrics.json").read_text())
    assert headline == {"auc": m["auroc_macro"], "f1": m["f1_macro"], "acc": m["accuracy_macro"]}
    for png in ("auroc_per_label.png", "roc_curves.png"):
        with Image.open(results / "plots" / png) as image:
            assert image.format == "PNG" and image.width > 300
    manifest = json.loads((reproduced.workdir / "data" / "ct_clip" / "shards" / "train" / "manifest.json").read_text())
    assert manifest["release"] == "v2" and manifest["dtype"] == "float16" and manifest["samples"] > 0


def test_patient_intervals_are_wider_than_volume_intervals_on_the_smoke_run(reproduced):
    results = reproduced.workdir / "results" / "ct_clip" / "cxr_bert"
    saved = json.loads((results / "predictions.json").read_text())
    pred = zeroshot.Predictions(saved["volumes"], np.array(saved["y_true"]), np.array(saved["y_score"]), 0)
    by_patient = json.loads((results / "details.json").read_text())
    by_volume = zeroshot.summarize(pred, 1000, 0.05, seed=2025, unit="volume")
    for name in ("auroc_macro", "f1_macro", "accuracy_macro"):
        patient, volume = (m[f"{name}_ci_high"] - m[f"{name}_ci_low"] for m in (by_patient, by_volume))
        assert patient > volume, name


def test_no_evaluated_patient_chose_the_checkpoint(reproduced):
    run = reproduced.workdir / "runs" / "ct_clip" / "cxr_bert"
    selection = json.loads((run / "selection.json").read_text())
    saved = json.loads((reproduced.workdir / "results" / "ct_clip" / "cxr_bert" / "predictions.json").read_text())
    assert selection["patients"] and selection["volumes"]
    assert {patient_of(v) for v in selection["volumes"]} == set(selection["patients"])
    assert not set(selection["patients"]) & {patient_of(v) for v in saved["volumes"]}
    # Nor did the run train on them: its training set is every other training volume.
    manifest = json.loads((reproduced.workdir / "data" / "ct_clip" / "shards" / "train" / "manifest.json").read_text())
    assert selection["train_volumes"] + len(selection["volumes"]) == manifest["samples"]


def test_killed_mid_epoch_then_resumed_is_bitwise_equal(workdir, reference_run):
    run = workdir / "runs" / "killed"
    args = ["ct_clip", "train", "--variant", "cxr_bert", "--out", str(run), *TRAIN, "train.save_every_steps=4"]
    kill_when(args, workdir, run / "checkpoints" / "step-00000008.pt")
    assert not (run / "final.pt").exists(), "the run finished before the kill; the test proves nothing"
    latest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    assert torch.load(latest, weights_only=True)["train_state"]["step_in_epoch"] != 0, "must resume mid-epoch"
    medrepro([*args, "--resume", "latest"], workdir)
    assert_bitwise_equal(final_weights(reference_run), final_weights(run))


def test_two_processes_on_one_shard_agree_with_one(workdir, reference_run):
    """torchrun, 2 CPU processes (gloo), one training shard: each rank reads its samples by index."""
    double = workdir / "runs" / "ddp-2"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    medrepro(["ct_clip", "train", "--variant", "cxr_bert", "--out", str(double), *TRAIN], workdir, launcher=torchrun)
    assert json.loads((double / "manifest.json").read_text())["processes"] == 2

    def losses(run: Path) -> list[tuple[int, float]]:
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]

    one, two = losses(reference_run), losses(double)
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 19))
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: loss {a} with 1 process, {b} with 2"
    w1, w2 = final_weights(reference_run), final_weights(double)
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-3, f"largest weight difference {worst}"


def test_check_shards_names_the_damaged_shard_and_sample(workdir, tmp_path):
    import shutil
    copy = tmp_path / "work"
    shutil.copytree(workdir / "data", copy / "data")
    assert medrepro(["ct_clip", "check-shards", *DATA], copy).returncode == 0
    shard = copy / "data" / "ct_clip" / "shards" / "valid" / "valid-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-20000])
    proc = medrepro(["ct_clip", "check-shards", *DATA], copy, check=False)
    assert proc.returncode == 2
    assert "valid-000000.tar is truncated or corrupt after sample valid_" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_released_weights_evaluate_into_a_published_row_and_a_renamed_tensor_is_refused(workdir, reference_run,
                                                                                       tmp_path):
    """`evaluate --weights` on a release in upstream's layout: the reference run's weights under upstream's names
    (read backwards through `model.UPSTREAM` from the names of the upstream fixture, whose model has the same
    module tree), plus a VQ codebook of unit vectors and one tensor upstream carries that we drop (BERT's
    pooler). It goes through the trained runs' zero-shot evaluation into results/ct_clip/published, labelled,
    and `medrepro report` shows it as a `published` row. The same file with one tensor renamed: one line naming
    it, exit 2, no results."""
    from torch.nn import functional as F

    from experiments.ct_clip.model import UPSTREAM

    fixture = torch.load(Path(__file__).parents[1] / "fixtures" / "ct_clip" / "upstream_ctclip.pt", weights_only=True)
    upstream_name = {UPSTREAM.ours(k): k for k in fixture["shapes"] if UPSTREAM.ours(k) is not None}
    ours = final_weights(reference_run)
    release = {upstream_name[k]: v for k, v in ours.items()}
    dim = ours["visual.to_patch_emb.1.weight"].shape[0]
    release["visual_transformer.vq._codebook.embed"] = F.normalize(torch.randn(1, 16, dim), dim=-1)
    hidden = ours["to_text_latent.weight"].shape[1]
    release["text_transformer.pooler.dense.weight"] = torch.zeros(hidden, hidden)
    weights = tmp_path / "CT-CLIP_v2.pt"
    torch.save(release, weights)
    results = tmp_path / "results"
    out = results / "ct_clip" / "published"
    medrepro(["ct_clip", "evaluate", "--weights", str(weights), "--out", str(out), *DATA], workdir)
    info = json.loads((out / "info.json").read_text())
    assert info["weights"] == "published" and info["checkpoint"] == str(weights)
    details = json.loads((out / "details.json").read_text())
    assert 0 <= details["auroc_macro_ci_low"] <= details["auroc_macro"] <= details["auroc_macro_ci_high"] <= 1
    medrepro(["report", "--results", str(results)], workdir)
    assert any(line.startswith("| published |") for line in (results / "RESULTS.md").read_text().splitlines())

    release["to_text_latent.weights"] = release.pop("to_text_latent.weight")
    torch.save(release, weights)
    refused = medrepro(["ct_clip", "evaluate", "--weights", str(weights), "--out", str(tmp_path / "refused"), *DATA],
                       workdir, check=False)
    assert refused.returncode == 2 and "'to_text_latent.weights'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
