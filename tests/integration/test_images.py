"""The offline image build and the image's default smoke run, compared with the host's smoke run.

Needs a Docker engine with BuildKit (a client with buildx, or set MEDREPRO_DOCKER to one that
supports DOCKER_BUILDKIT=1). Under CI a missing engine fails; elsewhere these tests skip.
"""

import os
import subprocess

import pytest

from medrepro.suite import images, registry
from tests.integration.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def build(name: str) -> str:
    if not images.engine_available():
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Docker engine answers `docker info`; .ci/run should have started one")
        pytest.skip("no Docker engine answers `docker info`")
    subprocess.run(["medrepro", "images", "build", name], cwd=REPO, check=True,
                   env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    return images.tag(name)


@pytest.fixture(scope="module")
def retclip_image() -> str:
    return build("retclip")


def test_help_lists_the_commands(retclip_image):
    out = subprocess.run(images.run_command(retclip_image, ["--help"]), capture_output=True, text=True, check=True)
    for command in ("prepare", "build-lmdb", "train", "evaluate", "smoke"):
        assert command in out.stdout


def test_image_runs_offline_as_non_root(retclip_image):
    probe = "import os, transformers; print(os.getuid(), os.environ['HF_HUB_OFFLINE'])"
    cmd = images.run_command(retclip_image, [])
    cmd[cmd.index(retclip_image):] = ["--entrypoint", "python", retclip_image, "-c", probe]
    uid, offline = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    assert uid == "1000" and offline == "1"


def test_default_command_reproduces_the_committed_numbers(retclip_image, tmp_path):
    """The image's smoke run (non-root, into a mounted directory, another OS and libc) gives the
    committed results of the host's pipeline bit for bit: the smoke profile pins its runtime."""
    out = tmp_path / "out"
    out.mkdir()
    if os.getuid() == 0:
        os.chown(out, 1000, 1000)  # as a regular user's directory would be; the container runs as its owner
    cmd = images.run_command(retclip_image, ["smoke", "--out", "/out", "--variants", "pubmedbert"], out_dir=out,
                             user=images.owner(out))
    subprocess.run(cmd, check=True, capture_output=True)
    results = out / "results" / "retclip" / "pubmedbert"
    assert (results / "metrics.json").stat().st_uid == images.owner(out)[0] != 0
    committed = REPO / "results" / "retclip" / "pubmedbert"
    for name in ("metrics.json", "details.json", "curves/train.csv"):
        assert (results / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize("name", [n for n in images.experiments_with_images() if n != "retclip"])
def test_every_image_lists_its_commands_and_reproduces_its_smoke_as_non_root(name, tmp_path):
    """Each image's default command runs the experiment's smoke pipeline offline, as the owner of the
    mounted directory, and gives the committed numbers of its first variant bit for bit (retclip's
    own test above does the same for its one variant)."""
    experiment = registry.get(name)
    image = build(name)
    out = subprocess.run(images.run_command(image, ["--help"]), capture_output=True, text=True, check=True)
    for command in (*(stage.name for stage in experiment.stages), "train", "evaluate", "smoke", "bench",
                    *(c.name for c in experiment.commands)):
        assert command in out.stdout, command
    variant = experiment.variants[0]
    results = tmp_path / "out"
    results.mkdir()
    if os.getuid() == 0:
        os.chown(results, 1000, 1000)
    cmd = images.run_command(image, ["smoke", "--out", "/out", "--variants", variant], out_dir=results,
                             user=images.owner(results))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = results / "results" / name / variant / "metrics.json"
    assert metrics.stat().st_uid == images.owner(results)[0] != 0
    assert metrics.read_bytes() == (REPO / "results" / name / variant / "metrics.json").read_bytes()
