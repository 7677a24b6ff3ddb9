"""The docker command lines the image tooling builds (no engine needed)."""

import json
import subprocess
from pathlib import Path

import pytest

from medrepro.errors import MedreproError
from medrepro.suite import image_inputs, images, registry


@pytest.fixture(autouse=True)
def plain_docker(monkeypatch):
    monkeypatch.delenv("MEDREPRO_DOCKER", raising=False)


def test_base_build_passes_os_base_and_revision():
    cmd = images.build_command("base", "medrepro/debian:bookworm", "abc123", version="9.9")
    assert cmd[:2] == ["docker", "build"]
    assert cmd[cmd.index("--file") + 1] == "images/base/Dockerfile"
    assert cmd[cmd.index("--tag") + 1] == "medrepro/base:9.9"
    args = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--build-arg"]
    assert "BASE_IMAGE=medrepro/debian:bookworm" in args and "REVISION=abc123" in args and "VERSION=9.9" in args
    assert cmd[-1] == "."  # the repository root is the build context


def test_experiment_build_builds_on_the_same_version_of_base():
    cmd = images.build_command("retclip", "ignored", "abc", version="1.2")
    assert cmd[cmd.index("--file") + 1] == "images/experiment/Dockerfile"
    assert cmd[cmd.index("--tag") + 1] == "medrepro/retclip:1.2"
    assert "BASE=medrepro/base:1.2" in cmd and not any(a.startswith("BASE_IMAGE=") for a in cmd)
    assert "EXPERIMENT=retclip" in cmd
    assert f"org.medrepro.inputs={image_inputs.inputs_digest('retclip')}" in cmd
    assert cmd[-1] == "."


def test_run_without_gpu_has_no_gpu_flags(tmp_path):
    cmd = images.run_command("medrepro/retclip:0.1.0", ["train", "--variant", "x"], out_dir=tmp_path,
                             user=(1234, 5678))
    assert "--gpus" not in cmd and "--shm-size" not in cmd
    assert cmd[cmd.index("--user") + 1] == "1234:5678"
    assert f"{tmp_path.resolve()}:/out" in cmd
    assert cmd[-4:] == ["medrepro/retclip:0.1.0", "train", "--variant", "x"], "arguments follow the image"


def test_run_with_gpu_adds_gpus_and_large_shm(tmp_path):
    cmd = images.run_command("img", [], out_dir=tmp_path, gpus=True, shm_size="32g")
    assert cmd[cmd.index("--gpus") + 1] == "all"
    assert cmd[cmd.index("--shm-size") + 1] == "32g"


def test_run_mounts_data_read_only_cache_and_workdir(tmp_path):
    data, cache, work = tmp_path / "d", tmp_path / "c", tmp_path / "w"
    cmd = images.run_command("img", ["x"], data_dir=data, cache_dir=cache, workdir=work, env={"A": "1"})
    assert f"{data.resolve()}:/data:ro" in cmd
    assert f"{cache.resolve()}:/cache" in cmd
    assert f"{work.resolve()}:/work" in cmd and cmd[cmd.index("--workdir") + 1] == "/work"
    assert cmd[cmd.index("--env") + 1] == "A=1"
    assert cmd.index("img") > cmd.index("--workdir"), "options must come before the image"


def test_docker_client_can_be_chosen(monkeypatch):
    monkeypatch.setenv("MEDREPRO_DOCKER", "/usr/bin/docker")
    assert images.build_command("base", "os", "r")[0] == "/usr/bin/docker"


def test_wheelhouse_download_checks_hashes(tmp_path):
    cmd = images.wheelhouse_command(Path("images/requirements.lock"), tmp_path)
    assert "--require-hashes" in cmd and "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert "--no-cache-dir" in cmd, "a pip cache would keep a second copy of the wheels"


def test_every_experiment_builds_from_the_one_experiment_dockerfile():
    assert (images.REPO / images.EXPERIMENT_DOCKERFILE).is_file()
    for name in registry.names():
        assert not (registry.experiments_dir() / name / "Dockerfile").exists(), f"{name} has a Dockerfile of its own"
        cmd = images.build_command(name, "ignored", "abc")
        assert cmd[cmd.index("--file") + 1] == images.EXPERIMENT_DOCKERFILE and f"EXPERIMENT={name}" in cmd


def test_entrypoint_puts_the_experiment_before_the_arguments_each_kept_whole(tmp_path):
    """The exec-form ENTRYPOINT, run as Docker runs it (with the CMD or the user's arguments after it),
    against a stand-in `python` that prints its arguments one per line."""
    lines = (images.REPO / images.EXPERIMENT_DOCKERFILE).read_text().splitlines()
    entrypoint = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT ")).removeprefix("ENTRYPOINT "))
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    python.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MEDREPRO_EXPERIMENT": "retclip"}
    out = subprocess.run([*entrypoint, "train", "--out", "a dir"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == ["-m", "medrepro", "retclip", "train", "--out", "a dir"]


def test_image_lock_pins_torch_and_uv():
    lock = (images.REPO / "images" / "requirements.lock").read_text()
    assert "\ntorch==2.14.1 " in lock and "\ntorchvision==0.29.1 " in lock and "\nuv==" in lock
    assert "pytest==" not in lock, "the image lock holds runtime packages only"


def test_each_lock_installs_one_faiss():
    """faiss-cpu and faiss-gpu both install the module `faiss`: the dev environment gets the CPU build,
    the images the GPU build, whose CUDA 12 libraries come as the -cu12 wheels beside torch's CUDA 13."""
    dev = (images.REPO / "requirements.lock").read_text()
    image = (images.REPO / "images" / "requirements.lock").read_text()
    assert "\nfaiss-cpu==1.15." in dev and "\nfaiss-gpu" not in dev
    assert "\nfaiss-gpu==1.15." in image and "\nfaiss-cpu" not in image
    assert "\nnvidia-cuda-runtime-cu12==" in image and "\nnvidia-cuda-runtime==13." in image


def test_stamp_on_host_needs_no_engine():
    assert images.stamp("retclip", "host") == "host"


def fake_docker(tmp_path: Path, label: str) -> str:
    """A docker client whose `image inspect` answers the inputs label with `label` and the id sha256:0f."""
    script = tmp_path / "docker"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *org.medrepro.inputs*) echo {label} ;;
  *) echo sha256:0f ;;
esac
""")
    script.chmod(0o755)
    return str(script)


def test_stamp_gives_the_id_of_an_image_built_from_these_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDREPRO_DOCKER", fake_docker(tmp_path, image_inputs.inputs_digest("retclip")))
    assert images.stamp("retclip", "docker") == "sha256:0f"


def test_stamp_refuses_an_image_built_from_other_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDREPRO_DOCKER", fake_docker(tmp_path, "0" * 64))
    with pytest.raises(MedreproError, match=r"built from other sources.*medrepro images build retclip"):
        images.stamp("retclip", "docker")


def test_the_inputs_digest_follows_every_input_and_ignores_bytecode(tmp_path):
    for top in image_inputs.image_inputs("retclip"):
        path = tmp_path / top
        path.parent.mkdir(parents=True, exist_ok=True)
        if top.endswith(("medrepro", "retclip")):
            path.mkdir()
            (path / "a.py").write_text("x = 1\n")
        else:
            path.write_text(top)
    before = image_inputs.inputs_digest("retclip", tmp_path)
    (tmp_path / "shared/medrepro/__pycache__").mkdir()
    (tmp_path / "shared/medrepro/__pycache__/a.pyc").write_bytes(b"\0")
    assert image_inputs.inputs_digest("retclip", tmp_path) == before
    for changed in ("images/requirements.lock", "experiments/retclip/a.py", "shared/medrepro/a.py"):
        saved = (tmp_path / changed).read_text()
        (tmp_path / changed).write_text(saved + "# changed\n")
        assert image_inputs.inputs_digest("retclip", tmp_path) != before, changed
        (tmp_path / changed).write_text(saved)


def test_exec_passes_everything_after_the_experiment_through(monkeypatch):
    seen = {}
    monkeypatch.setattr(images, "exec_in", lambda name, runner, args: seen.update(name=name, runner=runner,
                                                                                   args=args) or 0)
    assert images.main(["exec", "--runner", "docker", "retclip", "train", "--variant", "x", "train.lr=1"]) == 0
    assert seen == {"name": "retclip", "runner": "docker", "args": ["train", "--variant", "x", "train.lr=1"]}


# ------------------------------------------------------------------ BuildKit client choice (fake clients)


def fake_client(directory: Path, version: str, buildx: bool, root: Path | None = None) -> Path:
    """A `docker` that answers `--version` and `buildx version` as a real client of that kind does, and
    with `root`, `info` with that data directory (and no image exists)."""
    directory.mkdir(parents=True, exist_ok=True)
    client = directory / "docker"
    client.write_text("#!/bin/sh\n"
                      f'if [ "$1" = "--version" ]; then echo "Docker version {version}, build abc"; exit 0; fi\n'
                      f'if [ "$1" = "buildx" ]; then {"echo v0.20.1; exit 0" if buildx else "exit 1"}; fi\n'
                      + (f'if [ "$1" = "info" ]; then echo {root}; exit 0; fi\n' if root else "")
                      + 'if [ "$1" = "image" ]; then exit 1; fi\n'
                      "exit 3\n")
    client.chmod(0o755)
    return client


@pytest.fixture
def only_fakes(monkeypatch, tmp_path):
    """PATH and the fallback list hold only what a test puts there."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(images, "FALLBACK_CLIENTS", ())
    return monkeypatch


def test_a_client_with_buildx_is_used(only_fakes, tmp_path):
    new = fake_client(tmp_path / "new", "28.2.2", buildx=True)
    only_fakes.setenv("PATH", str(new.parent))
    assert images.buildkit_client() == str(new)


def test_a_new_client_without_buildx_gives_way_to_an_old_one_with_buildkit_inside(only_fakes, tmp_path, capsys):
    new = fake_client(tmp_path / "local", "28.2.2", buildx=False)
    old = fake_client(tmp_path / "usr", "20.10.24+dfsg1", buildx=False)
    only_fakes.setenv("PATH", f"{new.parent}:{old.parent}")
    assert images.buildkit_client() == str(old)
    assert f"{new} 28.2 has no buildx" in capsys.readouterr().err


def test_the_fallback_place_is_tried_after_path(only_fakes, tmp_path):
    only_fakes.setenv("PATH", str(fake_client(tmp_path / "local", "27.0.1", buildx=False).parent))
    old = fake_client(tmp_path / "debian", "20.10.24", buildx=False)
    only_fakes.setattr(images, "FALLBACK_CLIENTS", (str(old),))
    assert images.buildkit_client() == str(old)


def test_no_capable_client_stops_with_one_line_saying_what_to_install(only_fakes, tmp_path):
    only_fakes.setenv("PATH", str(fake_client(tmp_path / "local", "28.2.2", buildx=False).parent))
    with pytest.raises(images.MedreproError) as raised:
        images.buildkit_client()
    message = str(raised.value)
    assert "\n" not in message and "28.2 has no buildx" in message
    assert "docker-buildx" in message and "MEDREPRO_DOCKER" in message


def test_no_client_at_all_is_said_so(only_fakes):
    with pytest.raises(images.MedreproError, match="no docker client found on PATH"):
        images.buildkit_client()


def test_a_chosen_client_must_be_capable(only_fakes, tmp_path):
    chosen = fake_client(tmp_path / "chosen", "26.1.0", buildx=False)
    only_fakes.setenv("MEDREPRO_DOCKER", str(chosen))
    with pytest.raises(images.MedreproError, match=r"MEDREPRO_DOCKER=.* cannot build with BuildKit"):
        images.buildkit_client()
    only_fakes.setenv("MEDREPRO_DOCKER", str(fake_client(tmp_path / "ok", "19.03.5", buildx=False)))
    assert images.buildkit_client() == str(tmp_path / "ok" / "docker")


def test_build_checks_the_client_before_downloading_anything(only_fakes, tmp_path):
    only_fakes.setenv("PATH", str(fake_client(tmp_path / "local", "28.2.2", buildx=False).parent))
    ran = []
    only_fakes.setattr(images, "_run", lambda cmd, **kw: ran.append(cmd) or 0)
    with pytest.raises(images.MedreproError, match="BuildKit"):
        images.build(["retclip"], tmp_path / "wheelhouse")
    assert ran == [], "nothing downloaded or built"


def test_build_uses_the_chosen_client(only_fakes, tmp_path):
    old = fake_client(tmp_path / "usr", "20.10.24", buildx=False)
    only_fakes.setenv("PATH", str(old.parent))
    ran = []
    only_fakes.setattr(images, "_run", lambda cmd, **kw: ran.append((cmd, kw.get("env", {}))) or 0)
    only_fakes.setattr(images, "ensure_os_base", lambda: "medrepro/debian:bookworm")
    images.build(["retclip"], tmp_path / "wheelhouse")
    builds = [(cmd, env) for cmd, env in ran if cmd[1:2] == ["build"]]
    assert [cmd[0] for cmd, _ in builds] == [str(old), str(old)]
    assert all(env["DOCKER_BUILDKIT"] == "1" for _, env in builds)


def test_a_first_base_build_without_room_stops_before_downloading(only_fakes, tmp_path):
    engine_root = tmp_path / "docker-root"
    engine_root.mkdir()
    only_fakes.setenv("PATH", str(fake_client(tmp_path / "usr", "20.10.24", buildx=False, root=engine_root).parent))
    real_usage = images.shutil.disk_usage
    only_fakes.setattr(images.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=int(3e9))
                       if Path(p) == engine_root else real_usage(p))
    ran = []
    only_fakes.setattr(images, "_run", lambda cmd, **kw: ran.append(cmd) or 0)
    with pytest.raises(images.MedreproError) as raised:
        images.build(["retclip"], tmp_path / "wheelhouse")
    message = str(raised.value)
    assert "\n" not in message and str(engine_root) in message and "3.0 GB" in message
    assert ran == [], "nothing downloaded or built"


def test_a_failed_wheel_download_is_tried_again_then_reported(monkeypatch, tmp_path):
    codes = iter([1, 0])
    ran = []

    def fake_run(cmd, check=True, **kw):
        ran.append(check)
        return next(codes)

    monkeypatch.setattr(images, "_run", fake_run)
    images.download_wheelhouse(tmp_path)
    assert ran == [False, False], "a retry after the first failure, which did not raise"
    ran.clear()
    monkeypatch.setattr(images, "_run", lambda cmd, check=True, **kw: ran.append(check) or 1)
    images.download_wheelhouse(tmp_path)
    assert ran == [False] * (images.DOWNLOAD_TRIES - 1) + [True], "the last try raises on failure"


def test_usage_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        images.main([])
    usage = capsys.readouterr().err.splitlines()[0]
    for command in ("wheelhouse", "build", "run", "smoke", "id", "exec", "stamp"):
        assert command in usage
