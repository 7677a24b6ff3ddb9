"""The offline image build and the image's default smoke run, compared with the host's smoke run.

Needs a Docker engine with BuildKit (a client with buildx, or set MEDREPRO_DOCKER to one that
supports DOCKER_BUILDKIT=1). Under CI a missing engine fails; elsewhere these tests skip.
"""

import json
import os
import subprocess

import pytest

from medrepro import __version__
from medrepro.suite import images, registry
from tests.integration.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def build(name: str) -> str:
    if not images.engine_available():
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Docker engine answers `docker info`; .ci/run should have started one")
        pytest.skip("no Docker engine answers `docker info`")
    done = subprocess.run(["medrepro", "images", "build", name], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"})
    if done.returncode != 0:
        # The end of the log, where the cause is, at the end of the failure message (a long report is
        # cut in its middle).
        tail = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")][-40:]
        pytest.fail(f"medrepro images build {name} failed ({done.returncode}):\n" + "\n".join(tail), pytrace=False)
    return images.tag(name)


@pytest.fixture(scope="module")
def retclip_image() -> str:
    return build("retclip")


def test_help_lists_the_commands(retclip_image):
    out = subprocess.run(images.run_command(retclip_image, ["--help"]), capture_output=True, text=True, check=True)
    for command in ("prepare", "build-lmdb", "train", "evaluate", "smoke"):
        assert command in out.stdout


def test_image_is_labelled_and_named_for_its_experiment(retclip_image):
    """The one experiment Dockerfile stamps the name given as a build argument into labels and ENV."""
    inspect = [*images.docker(), "image", "inspect", "--format", "{{json .Config}}", retclip_image]
    config = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    labels, env = config["Labels"], dict(e.split("=", 1) for e in config["Env"])
    assert labels["org.opencontainers.image.title"] == "medrepro retclip"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == env["MEDREPRO_IMAGE_REVISION"] == images.git_revision()
    assert env["MEDREPRO_IMAGE"] == retclip_image and env["MEDREPRO_EXPERIMENT"] == "retclip"
    assert config["Cmd"] == ["smoke", "--out", "/out"]


def test_image_holds_only_its_own_experiment(retclip_image):
    cmd = images.run_command(retclip_image, [])
    cmd[cmd.index(retclip_image):] = ["--entrypoint", "ls", retclip_image, "/opt/medrepro/experiments"]
    assert subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split() == ["__init__.py", "retclip"]


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


# Run in the cross_encoder image, with no GPU visible: faiss first, then torch, as retrieval.py
# imports them; then the CUDA libraries the process mapped.
FAISS_PROBE = """
import importlib.metadata as md, json, os
import faiss, numpy as np
import torch

x = np.random.default_rng(0).standard_normal((500, 32)).astype("float32")
x /= np.linalg.norm(x, axis=1, keepdims=True)
found = {}
for name, index in (("flat", faiss.IndexFlatIP(32)), ("hnsw", faiss.IndexHNSWFlat(32, 16, faiss.METRIC_INNER_PRODUCT))):
    index.add(x)
    found[name] = index.search(x[:20], 1)[1][:, 0].tolist()
libs = {os.path.realpath(line.split()[-1]) for line in open("/proc/self/maps") if "/nvidia/" in line}
print(json.dumps({
    "faiss": faiss.__version__, "options": faiss.get_compile_options(),
    "gpu_support": hasattr(faiss, "StandardGpuResources"), "gpus": faiss.get_num_gpus(),
    "cuda_available": torch.cuda.is_available(), "found": found,
    "installed": sorted(d for d in ("faiss-cpu", "faiss-gpu") if any(
        dist.metadata["Name"] == d for dist in md.distributions())),
    "libs": sorted(os.path.relpath(p, os.path.dirname(os.path.dirname(faiss.__file__))) for p in libs),
}))
"""


def test_cross_encoder_image_has_gpu_faiss_that_runs_cpu_indexes():
    """The images carry faiss' GPU build (and not faiss-cpu: both install `faiss`). With no GPU visible
    it reports none and runs CPU indexes; its CUDA 12 libraries load beside torch's CUDA 13 ones, with
    the one libcurand.so.10 both name being torch's (images/base/Dockerfile)."""
    image = build("cross_encoder")
    cmd = images.run_command(image, [])
    cmd[cmd.index(image):] = ["--entrypoint", "python", image, "-c", FAISS_PROBE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["installed"] == ["faiss-gpu"] and probe["faiss"].startswith("1.15.")
    assert probe["gpu_support"] and "GPU" in probe["options"].split()
    assert probe["gpus"] == 0 and probe["cuda_available"] is False
    assert probe["found"] == {"flat": list(range(20)), "hnsw": list(range(20))}
    libs = probe["libs"]
    assert [lib for lib in libs if "libcurand" in lib] == ["nvidia/cu13/lib/libcurand.so.10"], libs
    for lib in ("nvidia/cuda_runtime/lib/libcudart.so.12", "nvidia/cublas/lib/libcublas.so.12",
                "nvidia/cu13/lib/libcudart.so.13", "nvidia/cu13/lib/libcublas.so.13"):
        assert lib in libs, (lib, libs)


@pytest.mark.parametrize("name", [n for n in registry.names() if n != "retclip"])
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
