"""The reproducibility bars: same seed → same bits; kill + resume → same bits; DDP ≈ one process."""

import json
import sys

import pytest
import torch

from tests.integration.conftest import TRAIN_OVERRIDES, final_weights, kill_when, medrepro, process_env

pytestmark = pytest.mark.integration
SEED = "seed-0"  # TRAIN_OVERRIDES trains one seed


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_same_seed_two_processes_bitwise_equal(retclip_workdir, reference_run):
    again = retclip_workdir / "runs" / "again"
    medrepro(["retclip", "train", "--variant", "pubmedbert", "--out", str(again), *TRAIN_OVERRIDES], retclip_workdir)
    assert_bitwise_equal(final_weights(reference_run / SEED), final_weights(again / SEED))

    results = []
    for run in (reference_run, again):
        out = retclip_workdir / "results" / run.name
        medrepro(["retclip", "evaluate", "--variant", "pubmedbert", "--run", str(run), "--out", str(out),
                  "seeds=[0]", "eval.bootstrap=50"], retclip_workdir)
        results.append(json.loads((out / "details.json").read_text()))
    assert results[0] == results[1]


def test_killed_mid_epoch_then_resumed_is_bitwise_equal(retclip_workdir, reference_run):
    """SIGKILL after a mid-epoch checkpoint; `--resume latest` must end on the reference's exact weights.

    5 steps per epoch and a checkpoint every 3 steps: steps 3, 6, 9, 12 are all inside an epoch.
    """
    run = retclip_workdir / "runs" / "killed"
    kill_when(["retclip", "train", "--variant", "pubmedbert", "--out", str(run), *TRAIN_OVERRIDES,
               "train.save_every_steps=3"], retclip_workdir, run / SEED / "checkpoints" / "step-00000006.pt")
    assert not (run / SEED / "final.pt").exists(), "the run finished before the kill; the test proves nothing"

    latest = sorted((run / SEED / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(latest, weights_only=True)["train_state"]
    assert state["step_in_epoch"] != 0, "the checkpoint resumed from must be mid-epoch"

    medrepro(["retclip", "train", "--variant", "pubmedbert", "--out", str(run), "--resume", "latest",
              *TRAIN_OVERRIDES, "train.save_every_steps=3"], retclip_workdir)
    assert_bitwise_equal(final_weights(reference_run / SEED), final_weights(run / SEED))


def test_restarting_without_resume_refuses_to_overwrite(retclip_workdir, reference_run):
    proc = medrepro(["retclip", "train", "--variant", "pubmedbert", "--out", str(reference_run), *TRAIN_OVERRIDES],
                    retclip_workdir, check=False)
    assert proc.returncode == 2
    assert "already holds checkpoints" in proc.stderr and "--resume latest" in proc.stderr


def test_two_process_ddp_matches_one_process(retclip_workdir):
    """torchrun with 2 CPU processes (gloo) at the same global batch as 1 process.

    The encoder has dropout 0: with dropout each process would draw its own masks. Sums happen in
    another order across processes, so agreement is to float precision, not bitwise; Adam's first
    updates are about lr × sign(gradient), so near-zero gradients let weights drift by ~lr.
    """
    overrides = [*TRAIN_OVERRIDES, "train.epochs=2", "train.log_every_steps=1"]
    single = retclip_workdir / "runs" / "ddp-1"
    double = retclip_workdir / "runs" / "ddp-2"
    medrepro(["retclip", "train", "--variant", "biobert", "--out", str(single), *overrides], retclip_workdir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    medrepro(["retclip", "train", "--variant", "biobert", "--out", str(double), *overrides], retclip_workdir,
             launcher=torchrun)

    manifest = json.loads((double / SEED / "manifest.json").read_text())
    assert manifest["processes"] == 2, "torchrun's processes must train together, not each alone"

    def losses(run):
        rows = [json.loads(line) for line in (run / SEED / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]

    one, two = losses(single), losses(double)
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 11)), "one log line per step, once"
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: loss {a} with 1 process, {b} with 2"

    w1, w2 = final_weights(single / SEED), final_weights(double / SEED)
    assert w1.keys() == w2.keys()
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-3, f"largest weight difference {worst}"


def test_prepare_is_identical_across_processes(tmp_path):
    """Synthetic data, LMDB and tiny tokenizers must not depend on the process (hash seeds, thread pools)."""
    from medrepro.repro import sha256_tree
    from tests.integration.conftest import DATA_OVERRIDES

    digests = []
    for hash_seed in ("1", "2"):
        work = tmp_path / hash_seed
        work.mkdir()
        env = process_env(PYTHONHASHSEED=hash_seed)
        medrepro(["retclip", "prepare", *DATA_OVERRIDES], work, env=env)
        medrepro(["retclip", "build-lmdb", "--workers", "2", *DATA_OVERRIDES], work, env=env)
        digests.append({name: sha256_tree(work / "data" / "retclip" / name) for name in ("prepared", "lmdb")})
    assert digests[0] == digests[1]
