"""The docker command lines the image tooling builds (no engine needed)."""

from pathlib import Path

import pytest

from medrepro.suite import images


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
    assert cmd[cmd.index("--file") + 1] == "experiments/retclip/Dockerfile"
    assert cmd[cmd.index("--tag") + 1] == "medrepro/retclip:1.2"
    assert "BASE=medrepro/base:1.2" in cmd and not any(a.startswith("BASE_IMAGE=") for a in cmd)


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


def test_every_experiment_with_a_dockerfile_is_found():
    assert "retclip" in images.experiments_with_images()


def test_image_lock_pins_torch_and_uv():
    lock = (images.REPO / "images" / "requirements.lock").read_text()
    assert "\ntorch==2.14.1 " in lock and "\ntorchvision==0.29.1 " in lock and "\nuv==" in lock
    assert "pytest==" not in lock, "the image lock holds runtime packages only"


def test_stamp_on_host_needs_no_engine():
    assert images.stamp("retclip", "host") == "host"


def test_exec_passes_everything_after_the_experiment_through(monkeypatch):
    seen = {}
    monkeypatch.setattr(images, "exec_in", lambda name, runner, args: seen.update(name=name, runner=runner,
                                                                                   args=args) or 0)
    assert images.main(["exec", "--runner", "docker", "retclip", "train", "--variant", "x", "train.lr=1"]) == 0
    assert seen == {"name": "retclip", "runner": "docker", "args": ["train", "--variant", "x", "train.lr=1"]}
