"""`medrepro <exp> dryrun --quick` for every experiment: the full profile's models built at real size
from the published architectures (random weights: no hub here), parameters against reference.yaml,
one forward and backward at batch 1, and the memory projection. The full dry run (every stage at
real size) runs in `./dev dryrun` only: on 2 cores it takes longer than CI allows (README, Dry runs)."""

import json

import pytest

from medrepro.suite import registry
from tests.integration.conftest import medrepro

pytestmark = pytest.mark.integration
DEVICES = {"24", "40", "80"}


@pytest.mark.parametrize("name", registry.names())
def test_quick_dry_run_builds_every_full_size_model(name, tmp_path):
    proc = medrepro([name, "dryrun", "--quick", "--out", str(tmp_path / "out")], tmp_path)
    report = json.loads((tmp_path / "out" / "dryrun.json").read_text())
    assert report["quick"] and not report["stages"]
    assert report["measurements"], f"{name} declares no model"
    for checked in report["parameters"]:
        assert checked["source"], checked
        assert abs(checked["difference"]) <= 0.01 or checked["documented"], checked
    counted = {c["model"]: c["count"] for c in report["parameters"]}
    for measured in report["measurements"]:
        assert measured["parameters"] == counted[measured["name"]]
        assert measured["activation_per_sample_bytes"] > 0 and measured["full_batch"] >= 1
        assert set(measured["projection"]["devices"]) == DEVICES
        assert measured["name"] in proc.stdout
    # Hub models come from the published architecture descriptions, and say so.
    assert all(("random weights" in source or "published weights" in source or "local directory" in source)
               for source in report["models"].values())


def test_a_full_config_that_no_longer_builds_is_one_line_and_exit_2(tmp_path):
    # A patch size that does not divide the 480-voxel slices: the CTViT cannot be built.
    proc = medrepro(["ct_clip", "dryrun", "--quick", "--out", str(tmp_path / "out"), "model.patch=7"], tmp_path,
                    check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model's patch sizes" in proc.stderr, proc.stderr
    proc = medrepro(["ct_clip", "dryrun", "--quick", "model.no_such_key=1"], tmp_path, check=False)
    assert proc.returncode == 2 and "full profile no longer loads" in proc.stderr and "no_such_key" in proc.stderr
    assert not (tmp_path / "dryrun-out").exists()


def test_an_unknown_experiment_is_one_line_and_exit_2(tmp_path):
    proc = medrepro(["no_such_experiment", "dryrun"], tmp_path, check=False)
    assert proc.returncode == 2 and "unknown experiment 'no_such_experiment'" in proc.stderr
