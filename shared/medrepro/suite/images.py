"""`medrepro images ...`: build and run the experiment images, offline when need be.

    medrepro images wheelhouse          wheels of images/requirements.lock → wheelhouse/
    medrepro images build [EXP ...]     wheelhouse, OS base if needed, medrepro/base, experiment images
    medrepro images run EXP [ARGS ...]  docker run with data, output and cache mounted (+ GPUs)
    medrepro images smoke EXP --out D   the image's default command into D; checks metrics.json
    medrepro images exec --runner host|docker EXP ARGS ...
                                        the experiment's command on the host or in its image, with
                                        the current directory at /work (what DVC stages call)
    medrepro images stamp --runner R EXP --out FILE
                                        the image id (or "host") into FILE: a DVC dependency, so a
                                        rebuilt image re-runs the stages that ran in it

Every docker command line is built by a function here (and unit-tested); nox sessions only call
these commands. Builds never touch the network inside the image: the base image installs from the
wheelhouse made on the host. Where no registry is reachable, the OS base is a Debian bookworm
root filesystem made with debootstrap and imported as `medrepro/debian:bookworm`.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medrepro import __version__, atomic
from medrepro.errors import MedreproError
from medrepro.suite import registry
from medrepro.suite.image_inputs import INPUTS_LABEL, inputs_digest

REPO = registry.repo_root()
PUBLIC_OS_BASE = "python:3.11-slim-bookworm"
LOCAL_OS_BASE = "medrepro/debian:bookworm"
BASE = "medrepro/base"
BASE_DOCKERFILE = "images/base/Dockerfile"
# One Dockerfile for every experiment, the name a build argument: a new experiment needs none of its own.
EXPERIMENT_DOCKERFILE = "images/experiment/Dockerfile"
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,passwd"


def docker() -> list[str]:
    """The docker client: $MEDREPRO_DOCKER, else `docker`. Builds use `buildkit_client()`."""
    return [os.environ.get("MEDREPRO_DOCKER", "docker")]


# Clients tried after every `docker` on PATH: Debian's docker.io client, which builds with BuildKit
# without buildx, often sits behind a newer client that has none.
FALLBACK_CLIENTS = ("/usr/bin/docker",)
# From Docker 23 on, DOCKER_BUILDKIT=1 hands the build to the buildx plugin and fails without it
# ("BuildKit is enabled but the buildx component is missing"); older clients carry BuildKit inside.
FIRST_VERSION_NEEDING_BUILDX = 23


def client_version(client: str) -> tuple[int, ...] | None:
    """The client's own version (`docker --version` needs no engine); None when it does not run."""
    try:
        out = subprocess.run([client, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def has_buildx(client: str) -> bool:
    try:
        return subprocess.run([client, "buildx", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def builds_with_buildkit(client: str) -> tuple[bool, str]:
    """(whether `DOCKER_BUILDKIT=1 client build` runs BuildKit, what was found)."""
    version = client_version(client)
    if version is None:
        return False, f"{client} does not run"
    shown = ".".join(map(str, version))
    if has_buildx(client):
        return True, f"{client} {shown} with buildx"
    if version >= (18, 9) and version[0] < FIRST_VERSION_NEEDING_BUILDX:
        return True, f"{client} {shown}, BuildKit built in"
    return False, f"{client} {shown} has no buildx"


def _candidates() -> list[str]:
    found = [str(Path(d) / "docker") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    found = [c for c in (*found, *FALLBACK_CLIENTS) if os.access(c, os.X_OK) and not Path(c).is_dir()]
    unique: dict[str, str] = {}
    for client in found:
        unique.setdefault(os.path.realpath(client), client)
    return list(unique.values())


def buildkit_client() -> str:
    """The docker client to build with: $MEDREPRO_DOCKER when set (it must be capable), else the first
    capable `docker` on PATH, else a capable one at a known place. Checked before anything is
    downloaded, so that a client without BuildKit stops the build at once, with what to do."""
    chosen = os.environ.get("MEDREPRO_DOCKER")
    if chosen:
        ok, found = builds_with_buildkit(chosen)
        if not ok:
            raise MedreproError(f"MEDREPRO_DOCKER={chosen} cannot build with BuildKit ({found}): install the "
                                "buildx plugin for it, or point MEDREPRO_DOCKER at a client that has it")
        return chosen
    seen = []
    for client in _candidates():
        ok, found = builds_with_buildkit(client)
        if ok:
            if seen:
                print(f"images: building with {found} ({'; '.join(seen)})", file=sys.stderr)
            return client
        seen.append(found)
    raise MedreproError("no docker client here can build with BuildKit (needed for RUN --mount): "
                        + ("; ".join(seen) or "no docker client found on PATH")
                        + ". Install the buildx plugin (Debian: apt-get install docker-buildx; Docker's "
                        "repository: docker-buildx-plugin), or set MEDREPRO_DOCKER to a client with BuildKit")


def tag(name: str, version: str = __version__) -> str:
    return f"{BASE}:{version}" if name == "base" else f"medrepro/{name}:{version}"


def git_revision(repo: Path = REPO) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def wheelhouse_command(lock: Path, dest: Path) -> list[str]:
    """Download every locked wheel, hashes checked; already present wheels are not fetched again. No
    pip cache: it would hold a second copy of the 4 GB."""
    return [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
            "--require-hashes", "--no-deps", "--only-binary=:all:", "-r", str(lock), "-d", str(dest)]


# A dropped connection in 4 GB of downloads should not cost the build; a retry fetches only what is missing.
DOWNLOAD_TRIES = 3


def download_wheelhouse(dest: Path, lock: Path = REPO / "images" / "requirements.lock") -> None:
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        if _run(wheelhouse_command(lock, dest), check=attempt == DOWNLOAD_TRIES) == 0:
            return
        print(f"images: wheel download failed (try {attempt} of {DOWNLOAD_TRIES}); trying again", file=sys.stderr)


# Free disk a first base build needs at its peak, measured with Docker 20.10 and overlay2: the
# engine holds the build context (the 4 GB wheelhouse), the venv as it is installed and the image
# layer exported from it (8.5 GB each), 20 GB in all; the wheelhouse itself lies beside the repository.
BASE_BUILD_NEEDS_GB = {"Docker data": 20, "the wheelhouse": 4}


def docker_root(client: str) -> Path | None:
    """The engine's data directory, when the engine runs on this machine (else None)."""
    proc = subprocess.run([client, "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True)
    path = Path(proc.stdout.strip())
    return path if proc.returncode == 0 and path.is_absolute() and path.exists() else None


def check_disk_for_base(client: str, wheelhouse: Path) -> None:
    """Stop at once when a first base build cannot fit, instead of failing minutes into it."""
    if image_exists(tag("base")):
        return
    downloaded = wheelhouse.is_dir() and any(wheelhouse.glob("*.whl"))
    places = {"Docker data": docker_root(client), "the wheelhouse": None if downloaded else wheelhouse.parent}
    needs: dict[int, tuple[float, list[str], Path]] = {}  # by filesystem: both often share one
    for what, place in places.items():
        if place is None or not place.exists():
            continue
        gb, whats, first = needs.get(place.stat().st_dev, (0.0, [], place))
        needs[place.stat().st_dev] = (gb + BASE_BUILD_NEEDS_GB[what], [*whats, what], first)
    for gb, whats, place in needs.values():
        free_gb = shutil.disk_usage(place).free / 1e9
        if free_gb < gb:
            raise MedreproError(f"the first base image build needs about {gb:.0f} GB free on the disk of {place} "
                                f"({' and '.join(whats)}), and {free_gb:.1f} GB are: free space there (e.g. "
                                "`docker system prune`) and build again")


def build_command(name: str, os_base: str, revision: str, version: str = __version__,
                  client: str | None = None) -> list[str]:
    cmd = [*([client] if client else docker()), "build", "--tag", tag(name, version),
           "--build-arg", f"VERSION={version}", "--build-arg", f"REVISION={revision}"]
    if name == "base":
        cmd += ["--file", BASE_DOCKERFILE, "--build-arg", f"BASE_IMAGE={os_base}"]
    else:
        cmd += ["--file", EXPERIMENT_DOCKERFILE, "--build-arg", f"BASE={tag('base', version)}",
                "--build-arg", f"EXPERIMENT={name}", "--label", f"{INPUTS_LABEL}={inputs_digest(name)}"]
    return [*cmd, "."]


def run_command(image: str, args: Sequence[str], out_dir: Path | None = None, data_dir: Path | None = None,
                cache_dir: Path | None = None, gpus: bool = False, shm_size: str = "16g",
                user: tuple[int, int] | None = None, workdir: Path | None = None,
                env: dict[str, str] | None = None) -> list[str]:
    """`docker run` as users run it: outputs at /out owned by `user`, data read-only at /data.

    `workdir` is mounted at /work and made the working directory, so relative paths in a config
    (data/..., runs/..., results/...) resolve inside the repository, as on the host.
    """
    cmd = [*docker(), "run", "--rm"]
    if out_dir is not None:
        cmd += ["--volume", f"{out_dir.resolve()}:/out"]
    if workdir is not None:
        cmd += ["--volume", f"{workdir.resolve()}:/work", "--workdir", "/work"]
    for key, value in sorted((env or {}).items()):
        cmd += ["--env", f"{key}={value}"]
    if user is not None:
        cmd += ["--user", f"{user[0]}:{user[1]}"]
    if data_dir is not None:
        cmd += ["--volume", f"{data_dir.resolve()}:/data:ro"]
    if cache_dir is not None:
        cmd += ["--volume", f"{cache_dir.resolve()}:/cache"]
    if gpus:
        # DataLoader workers share batches through /dev/shm; Docker's default 64 MB is far too small.
        cmd += ["--gpus", "all", "--shm-size", shm_size]
    return [*cmd, image, *args]


def owner(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_uid, stat.st_gid


def gpu_runtime_available() -> bool:
    """True when the engine has the NVIDIA runtime registered (nvidia-container-toolkit)."""
    proc = subprocess.run([*docker(), "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    return proc.returncode == 0 and "nvidia" in proc.stdout


def engine_available() -> bool:
    try:
        return subprocess.run([*docker(), "info"], capture_output=True).returncode == 0
    except OSError:
        return False


def image_exists(image: str) -> bool:
    return subprocess.run([*docker(), "image", "inspect", image], capture_output=True).returncode == 0


def image_id(image: str) -> str:
    proc = subprocess.run([*docker(), "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise MedreproError(f"image {image} not found: build it with `medrepro images build`")
    return proc.stdout.strip()


def ensure_os_base() -> str:
    """The public Python image when it is here or can be pulled; else a local Debian bookworm image."""
    if image_exists(PUBLIC_OS_BASE) or _run([*docker(), "pull", "--quiet", PUBLIC_OS_BASE], check=False) == 0:
        return PUBLIC_OS_BASE
    if image_exists(LOCAL_OS_BASE):
        return LOCAL_OS_BASE
    if shutil.which("debootstrap") is None:
        raise MedreproError(f"no registry reachable for {PUBLIC_OS_BASE} and debootstrap is missing: install it "
                            "(apt-get install debootstrap) to build a local Debian base")
    print(f"images: {PUBLIC_OS_BASE} cannot be pulled; building {LOCAL_OS_BASE} with debootstrap", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="medrepro-rootfs-") as rootfs:
        _run(["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", rootfs])
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        _run([*docker(), "import", "-", LOCAL_OS_BASE], stdin=tar.stdout)
        if tar.wait() != 0:
            raise MedreproError("packing the Debian root filesystem failed")
    return LOCAL_OS_BASE


def build(names: Sequence[str], wheelhouse: Path) -> None:
    client = buildkit_client()  # before minutes of wheel downloads
    check_disk_for_base(client, wheelhouse)
    revision = git_revision()
    download_wheelhouse(wheelhouse)
    os_base = ensure_os_base()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    for name in ["base", *names]:
        _run(build_command(name, os_base, revision, client=client), cwd=REPO, env=env)


def smoke(name: str, out_dir: Path) -> Path:
    """Run the image's default command (the smoke pipeline) with `out_dir` at /out, as its owner."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _run(run_command(tag(name), [], out_dir, user=owner(out_dir)))
    found = sorted(out_dir.glob(f"results/{name}/**/metrics.json"))
    if not found:
        raise MedreproError(f"the {name} image's smoke run wrote no metrics.json under {out_dir}/results/{name}")
    for path in found:
        if owner(path)[0] != owner(out_dir)[0]:
            raise MedreproError(f"{path} is owned by uid {owner(path)[0]}, not by the owner of {out_dir}")
    return found[0]


def exec_in(name: str, runner: str, args: Sequence[str]) -> int:
    """Run `medrepro NAME ARGS` on the host, or in NAME's image with the current directory at /work."""
    if runner == "host":
        from medrepro.suite.commands import run

        return run(registry.get(name), args)
    cwd = Path.cwd()
    return _run(run_command(tag(name), args, workdir=cwd, gpus=gpu_runtime_available(), user=owner(cwd)),
                check=False)


def stamp(name: str, runner: str) -> str:
    """"host", or the id of NAME's image, refused when the image was built from other sources than the
    working tree's (a stage must not run in a stale image and record it as current)."""
    if runner == "host":
        return "host"
    image = tag(name)
    label = f'{{{{ index .Config.Labels "{INPUTS_LABEL}" }}}}'
    proc = subprocess.run([*docker(), "image", "inspect", "--format", label, image], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip() != inputs_digest(name):
        raise MedreproError(f"image {image} was built from other sources than this working tree's: rebuild it "
                            f"with `medrepro images build {name}`, then run `dvc repro` again")
    return image_id(image)


def _run(cmd: Sequence[str], check: bool = True, **kwargs) -> int:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    code = subprocess.run(list(cmd), **kwargs).returncode
    if check and code != 0:
        raise MedreproError(f"command failed with exit status {code}: {' '.join(cmd)}")
    return code


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrepro images", description="Build and run the experiment images.",
                                     epilog="`medrepro images build` needs a docker client with BuildKit (buildx, "
                                            "or a 18.09-20.10 client); MEDREPRO_DOCKER chooses one.")
    # No metavar: the usage line then lists every command, also when none was given.
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    p = commands.add_parser("wheelhouse", help="download the locked wheels")
    p.add_argument("--dest", type=Path, default=REPO / "wheelhouse")
    p = commands.add_parser("build", help="build the base image and experiment images (all by default)")
    p.add_argument("names", nargs="*", metavar="EXP")
    p.add_argument("--wheelhouse", type=Path, default=REPO / "wheelhouse")
    p = commands.add_parser("run", help="run an experiment image; arguments go to its command line")
    p.add_argument("name", metavar="EXP")
    p.add_argument("--out", type=Path, default=Path("out"))
    p.add_argument("--data", type=Path)
    p.add_argument("--cache", type=Path, help="a Hugging Face / torch cache to mount at /cache")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = commands.add_parser("smoke", help="run an image's default command and check its metrics.json")
    p.add_argument("name", metavar="EXP")
    p.add_argument("--out", type=Path, required=True)
    p = commands.add_parser("id", help="print an experiment image's id")
    p.add_argument("name", metavar="EXP")
    for command, text in (("exec", "run the experiment's command on the host or in its image"),
                          ("stamp", "write the image id (or 'host') to a file, for DVC")):
        p = commands.add_parser(command, help=text)
        # Before EXP: everything after EXP belongs to the experiment's own command line.
        p.add_argument("--runner", choices=("host", "docker"), default="host")
        p.add_argument("name", metavar="EXP")
        if command == "stamp":
            p.add_argument("--out", type=Path, required=True)
        else:
            p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "wheelhouse":
        download_wheelhouse(args.dest)
    elif args.command == "build":
        build(args.names or registry.names(), args.wheelhouse)
    elif args.command == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        extra = args.args[1:] if args.args[:1] == ["--"] else args.args
        return _run(run_command(tag(args.name), extra, args.out, args.data, args.cache,
                                gpus=gpu_runtime_available(), user=owner(args.out)), check=False)
    elif args.command == "smoke":
        print(f"ok: {smoke(args.name, args.out)}")
    elif args.command == "id":
        print(image_id(tag(args.name)))
    elif args.command == "exec":
        return exec_in(args.name, args.runner, args.args)
    elif args.command == "stamp":
        atomic.write_text(args.out, stamp(args.name, args.runner) + "\n")
    return 0
