"""The reproducibility bars: same seed → same bits; kill + resume → same bits; what 2 processes share with 1."""

import json
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def default_size_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's data at its default size; biobert's tiny tower without dropout, pubmedbert's
    with the default 0.1."""
    workdir = tmp_path_factory.mktemp("retclip-default")
    medrepro(["retclip", "prepare", NO_DROPOUT], workdir)
    medrepro(["retclip", "build-lmdb", "--workers", "2", NO_DROPOUT], workdir)
    return workdir


NO_DROPOUT = "encoders.biobert.tiny.dropout=0.0"


def train_one_and_two(workdir: Path, variant: str) -> tuple[list[dict], list[dict]]:
    """Train `variant` at the default smoke settings (one seed) with 1 process and with 2 (torchrun, gloo)
    at the same global batch; the two train logs, one row per step."""
    overrides = ["seeds=[0]", "train.log_every_steps=1", "train.tracking.tensorboard=false", NO_DROPOUT]
    single, double = workdir / "runs" / f"{variant}-1", workdir / "runs" / f"{variant}-2"
    medrepro(["retclip", "train", "--variant", variant, "--out", str(single), *overrides], workdir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    medrepro(["retclip", "train", "--variant", variant, "--out", str(double), *overrides], workdir, launcher=torchrun)
    manifest = json.loads((double / SEED / "manifest.json").read_text())
    assert manifest["processes"] == 2, "torchrun's processes must train together, not each alone"
    return tuple([json.loads(line) for line in (run / SEED / "train_log.jsonl").read_text().splitlines()]
                 for run in (single, double))


def steps(log: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in log if key in row]


def test_two_processes_follow_the_same_steps_at_the_default_smoke_settings(default_size_workdir):
    """What the README claims for dropout on (pubmedbert's tiny tower, 0.1): the same optimizer steps
    (16 epochs of 8) and learning rates, and a run that learns as well; not the same losses (each
    process draws its own dropout masks)."""
    one, two = train_one_and_two(default_size_workdir, "pubmedbert")
    assert steps(one, "train/lr") == steps(two, "train/lr") and len(steps(one, "train/lr")) == 128
    assert steps(one, "val/auroc_macro")[-1][0] == steps(two, "val/auroc_macro")[-1][0] == 128
    assert steps(two, "val/auroc_macro")[-1][1] > 0.85, "the 2-process run must learn as the 1-process runs do"


def test_two_processes_without_dropout_agree_to_float_precision_first(default_size_workdir):
    """Dropout off (biobert's tiny tower): the same initial weights, samples and schedule give the same
    losses to float precision over the first two epochs (16 steps); the sums run in another order
    across processes and training amplifies that rounding, so later losses part slowly (measured: 5e-5
    at step 40, at most 0.3 %) and the final validation AUROC agree to about 0.001."""
    one, two = train_one_and_two(default_size_workdir, "biobert")
    losses_one, losses_two = steps(one, "train/loss"), steps(two, "train/loss")
    assert [s for s, _ in losses_one] == [s for s, _ in losses_two] == list(range(1, 129)), "one row per step, once"
    for (step, a), (_, b) in zip(losses_one[:16], losses_two[:16], strict=True):
        assert abs(a - b) <= 1e-6 * abs(a), f"step {step}: loss {a} with 1 process, {b} with 2"
    (_, auroc_one), (_, auroc_two) = steps(one, "val/auroc_macro")[-1], steps(two, "val/auroc_macro")[-1]
    assert abs(auroc_one - auroc_two) < 0.01, f"final val AUROC {auroc_one} with 1 process, {auroc_two} with 2"


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
