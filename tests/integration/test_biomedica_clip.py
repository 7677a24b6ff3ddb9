"""biomedica_clip end to end: the smoke run learns (the `reproduced` pipeline) beyond its majority-class
baseline, with paired before/after gains; open_clip_train runs the same bits twice, a killed run continues
with --resume latest to the uninterrupted run's weights (CSV twin and shards), two CPU processes train
under torchrun (gloo), the fine-tuned checkpoint loads in a fresh process, and bad input (a held-out
shard of training, a corrupt sample) stops with one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.biomedica_clip.config import checkpoint_path
from experiments.biomedica_clip.synthetic import HELDOUT_CLASSES
from tests.integration.conftest import (
    BIOMEDICA_DATA,
    BIOMEDICA_TRAIN,
    REPO,
    medrepro,
    open_clip_weights,
    process_env,
    whole_zip,
)

pytestmark = pytest.mark.integration

# 4 shards of 32 samples: 4 optimizer steps of 32 per epoch; a held-out shard of 64.
DATA = BIOMEDICA_DATA
TRAIN = BIOMEDICA_TRAIN


def kill_group_when(args: list[str], cwd: Path, marker: Path, timeout_s: float = 600) -> None:
    """Run `medrepro ARGS` in its own process group and SIGKILL the whole group (medrepro and the
    open_clip_train it launched) as soon as the checkpoint `marker` is completely written, as a lost
    node or `scancel` would."""
    proc = subprocess.Popen([sys.executable, "-m", "medrepro", *args], cwd=cwd, env=process_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not whole_zip(marker):
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"no {marker.name} within {timeout_s:.0f} s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def workdir(biomedica_workdir: Path) -> Path:
    return biomedica_workdir


@pytest.fixture(scope="session")
def reference(biomedica_reference: Path) -> Path:
    return biomedica_reference


def test_smoke_run_learns_the_unseen_classes_and_retrieval(reproduced):
    results = reproduced.workdir / "results" / "biomedica_clip" / "finetune"
    m = json.loads((results / "details.json").read_text())
    assert m["zeroshot_classes"] == len(HELDOUT_CLASSES) and m["chance/zeroshot_acc"] == 0.25
    # Before: the starting weights sit at chance; after: far above it, on classes never trained on.
    assert m["before/zeroshot_acc_ci_low"] < m["chance/zeroshot_acc"] < m["after/zeroshot_acc_ci_low"]
    assert m["after/zeroshot_acc"] > 0.6
    # The training shards' majority class is never one of the unseen zero-shot classes: 0 %.
    assert m["majority/zeroshot_acc"] == 0.0 and m["zeroshot_samples"] > 0
    # Paired after − before, on the same resampled articles: the gains' intervals lie above 0.
    for name in ("zeroshot_acc", "i2t_r1", "t2i_r1"):
        assert m[f"diff/{name}"] == pytest.approx(m[f"after/{name}"] - m[f"before/{name}"])
        assert m[f"diff/{name}_ci_low"] > 0
    for direction in ("i2t", "t2i"):
        assert m[f"after/{direction}_r10_ci_low"] > 2 * m["chance/r10"] > m[f"before/{direction}_r10"]
        assert m[f"after/{direction}_r1"] <= m[f"after/{direction}_r5"] <= m[f"after/{direction}_r10"]
    assert (results / "plots" / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((results / "metrics.json").read_text()) == {
        "acc": m["after/zeroshot_acc"], "r1_i2t": m["after/i2t_r1"], "r1_t2i": m["after/t2i_r1"]}


def test_run_layout_records_the_arguments_and_completes(reference):
    recorded = json.loads((reference / "open_clip_args.json").read_text())
    assert recorded["command"][1:3] == ["-m", "experiments.biomedica_clip.open_clip_compat"]
    assert "--dataset-type" in recorded["command"] and (reference / "logs" / "open_clip" / "params.txt").is_file()
    assert json.loads((reference / "complete.json").read_text())["variant"] == "finetune"
    steps = [json.loads(line)["step"] for line in (reference / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 8 and steps == sorted(steps)


def test_same_seed_in_a_fresh_process_gives_the_same_weights(workdir, reference):
    run = workdir / "runs" / "again"
    medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN], workdir)
    a, b = open_clip_weights(checkpoint_path(reference, 2)), open_clip_weights(checkpoint_path(run, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_continues_from_its_checkpoint_epoch_and_finishes(workdir, reference):
    run = workdir / "runs" / "killed"
    kill_group_when(["biomedica_clip", "train", "--out", str(run), *TRAIN], workdir, checkpoint_path(run, 1))
    assert not checkpoint_path(run, 2).exists() and not (run / "complete.json").exists()
    refused = medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN], workdir, check=False)
    assert refused.returncode == 2 and "--resume latest" in refused.stderr
    medrepro(["biomedica_clip", "train", "--out", str(run), "--resume", "latest", *TRAIN], workdir)
    log = (run / "logs" / "open_clip" / "out.log").read_text()
    assert "epoch_1.pt' (epoch 1)" in log and log.count("Start epoch 0") == 1 and "Start epoch 1" in log
    assert (run / "complete.json").is_file()
    # open_clip_train restores model, optimizer and scaler, not the RNG; open_clip_compat seeds each epoch
    # from (seed, rank, epoch), so the redone epoch draws what the uninterrupted run's epoch 1 drew.
    resumed = open_clip_weights(checkpoint_path(run, 2))
    uninterrupted = open_clip_weights(checkpoint_path(reference, 2))
    assert resumed.keys() == uninterrupted.keys()
    assert [k for k in uninterrupted if not torch.equal(resumed[k], uninterrupted[k])] == []


def test_shards_with_loader_workers_train_the_same_bits_in_a_fresh_process_and_after_a_kill(workdir):
    """The WebDataset path with two persistent loader workers: open_clip_compat seeds the sample shuffle
    and the workers' augmentation by (seed, rank, worker, epoch), which open_clip_train leaves unseeded."""
    args = [*TRAIN, "train.dataset_type=webdataset", "train.workers=2"]
    whole, killed = workdir / "runs" / "shards", workdir / "runs" / "shards-killed"
    medrepro(["biomedica_clip", "train", "--out", str(whole), *args], workdir)
    kill_group_when(["biomedica_clip", "train", "--out", str(killed), *args], workdir, checkpoint_path(killed, 1))
    medrepro(["biomedica_clip", "train", "--out", str(killed), "--resume", "latest", *args], workdir)
    assert "epoch_1.pt' (epoch 1)" in (killed / "logs" / "open_clip" / "out.log").read_text()
    for epoch in (1, 2):  # epoch 1: another process, same seed; epoch 2: resumed after the kill
        a, b = open_clip_weights(checkpoint_path(whole, epoch)), open_clip_weights(checkpoint_path(killed, epoch))
        assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_two_cpu_processes_train_on_the_shards_under_torchrun(workdir):
    run = workdir / "runs" / "ddp"
    medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN, "train.epochs=1", "train.processes=2",
              "train.workers=1", "train.batch_size=16", "train.dataset_type=webdataset"], workdir)
    log = (run / "logs" / "open_clip" / "out.log").read_text()
    assert "Running in distributed mode" in log and "total 2" in log
    assert checkpoint_path(run, 1).is_file() and (run / "complete.json").is_file()


def test_fine_tuned_checkpoint_loads_with_open_clip_in_a_fresh_process(workdir, reference):
    ckpt = checkpoint_path(reference, 2)
    code = (
        "import sys, open_clip, torch\n"
        "open_clip.add_model_config(sys.argv[1])\n"
        "model, _, _ = open_clip.create_model_and_transforms('biomedica-tiny', pretrained=sys.argv[2])\n"
        "saved = torch.load(sys.argv[2], map_location='cpu', weights_only=True)['state_dict']\n"
        "assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())\n"
        "print('loaded', len(saved))\n"
    )
    config = workdir / "data" / "biomedica_clip" / "prepared" / "model" / "biomedica-tiny.json"
    proc = subprocess.run([sys.executable, "-c", code, str(config), str(ckpt)], env=process_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("loaded"), proc.stderr[-2000:]


def test_too_few_shards_for_processes_times_workers_is_one_line_before_anything_runs(workdir):
    run = workdir / "runs" / "refused"
    proc = medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN, "train.processes=2",
                     "train.workers=4", "train.dataset_type=webdataset"], workdir, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "4 shards cannot feed 2 processes × 4 loader workers" in proc.stderr
    assert not (run / "logs").exists() and not (run / "open_clip_args.json").exists()


def test_a_training_shard_as_the_held_out_set_is_one_line_before_anything_runs(workdir):
    run = workdir / "runs" / "overlap"
    shards = workdir / "data" / "biomedica_clip" / "prepared" / "train"
    proc = medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN, "data.source=shards",
                     f"data.train={shards}/{{000000..000003}}.tar", f"data.heldout={shards}/000003.tar",
                     "train.dataset_type=webdataset"], workdir, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "000003.tar is also a training shard" in proc.stderr
    assert not (run / "logs").exists() and not (run / "open_clip_args.json").exists()


def test_audit_stops_at_a_corrupt_sample_with_one_line_and_writes_nothing(workdir, tmp_path):
    shutil.copytree(workdir / "data", tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "biomedica_clip" / "audited")
    shard = tmp_path / "data" / "biomedica_clip" / "prepared" / "train" / "000002.tar"
    data = bytearray(shard.read_bytes())
    start = data.index(b"\xff\xd8\xff")  # the first JPEG's bytes
    data[start + 20:start + 200] = bytes(180)
    shard.write_bytes(bytes(data))
    proc = medrepro(["biomedica_clip", "audit", *DATA], tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "000002.tar" in proc.stderr and "sample filelist_" in proc.stderr
    assert not (tmp_path / "data" / "biomedica_clip" / "audited").exists()


def test_open_clip_train_refusing_to_run_exits_non_zero(reference, tmp_path):
    """open_clip_train's main returns -1 where a run's log exists without --resume ("Experiment already
    exists") and its own `__main__` exits 0 then; open_clip_compat must exit non-zero, or a node started by
    hand (README, Several nodes) would look finished having trained nothing."""
    run = tmp_path / "nodes"
    (run / "logs" / "open_clip").mkdir(parents=True)
    shutil.copy(reference / "logs" / "open_clip" / "out.log", run / "logs" / "open_clip")
    command = json.loads((reference / "open_clip_args.json").read_text())["command"]
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, *command[1:]], cwd=run, env=process_env(PYTHONPATH=pythonpath),
                          capture_output=True, text=True, timeout=300)
    assert "Experiment already exists" in proc.stdout
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert sorted(p.name for p in (run / "logs" / "open_clip").iterdir()) == ["out.log"]


def test_released_weights_evaluate_into_a_published_row_and_a_renamed_tensor_is_refused(workdir, reference, tmp_path):
    """`evaluate --weights`: a model released as open_clip's hf-hub directory (as BMCA-CLIP is; here the
    reference run's weights) goes through the same evaluation as a trained run, into results/<exp>/published,
    labelled with the file's checksum, and `medrepro report` puts it in a `published` row. The same release
    with one tensor renamed: one line naming it, exit 2, no results."""
    from safetensors.torch import save_file

    from medrepro.repro import sha256_file

    tensors = open_clip_weights(checkpoint_path(reference, 2))
    release = tmp_path / "release"
    release.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, release / "open_clip_model.safetensors")
    results = tmp_path / "results"
    out = results / "biomedica_clip" / "published"
    medrepro(["biomedica_clip", "evaluate", "--weights", str(release), "--out", str(out), *BIOMEDICA_DATA], workdir)
    info = json.loads((out / "info.json").read_text())
    assert info["weights"] == "published" and info["training_health"] is None
    assert info["source"] == {"path": str(release), "sha256": {"open_clip_model.safetensors":
                                                                  sha256_file(release / "open_clip_model.safetensors")}}
    published = json.loads((out / "details.json").read_text())
    # The reference run's own weights: the fine-tuned model's zero-shot accuracy, far above chance.
    assert published["after/zeroshot_acc_ci_low"] > published["chance/zeroshot_acc"]
    medrepro(["report", "--results", str(results)], workdir)
    row = next(line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith("| published"))
    assert f"{published['after/zeroshot_acc'] * 100:.1f}" in row

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    tensors["visual.conv1.kernel"] = tensors.pop("visual.conv1.weight")
    save_file({k: v.contiguous() for k, v in tensors.items()}, renamed / "open_clip_model.safetensors")
    refused = medrepro(["biomedica_clip", "evaluate", "--weights", str(renamed), "--out", str(tmp_path / "refused"),
                        *BIOMEDICA_DATA], workdir, check=False)
    assert refused.returncode == 2 and "'visual.conv1.kernel'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
