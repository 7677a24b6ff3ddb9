"""nox sessions: thin wrappers over the package's commands. Run them through ./dev, which puts the
project's locked virtualenv first on PATH, so every session shares that one environment.

The per-experiment sessions are parametrised over the suite's registry (experiments/*/experiment.py).
"""

from pathlib import Path

import nox

from medrepro.suite import registry

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
EXPERIMENTS = registry.names()


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree, hadolint over the base and experiment Dockerfiles, dvc.yaml against the
    declarations."""
    session.run("ruff", "check", ".")
    session.run("hadolint", "images/base/Dockerfile", "images/experiment/Dockerfile")
    session.run("medrepro", "pipeline", "--check")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests; extra arguments go to pytest (`./dev tests -m "not integration"`)."""
    session.run("pytest", *session.posargs)


@nox.session
def slurm(session: nox.Session) -> None:
    """A one-node SLURM on 127.0.0.1 (ci/slurm/setup, as root), then every experiment's batch script through
    `sbatch --wait` on the smoke profile (the tests marked `slurm`; extra arguments go to pytest)."""
    session.run("ci/slurm/setup", external=True)
    session.env["MEDREPRO_SLURM"] = "1"  # the tests fail, not skip, when the cluster does not answer
    session.run("pytest", "-m", "slurm", "tests/integration/test_slurm.py", *session.posargs)


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def smoke(session: nox.Session, exp: str) -> None:
    """An experiment's pipeline on synthetic data in smoke-out/<exp>/ (CPU, minutes)."""
    session.run("medrepro", exp, "smoke", "--out", f"smoke-out/{exp}", *session.posargs)


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def dryrun(session: nox.Session, exp: str) -> None:
    """The full profile at real size on a few generated samples in dryrun-out/<exp>/ (CPU; random weights
    where the published ones are not on this machine): parameters, memory projection, every stage."""
    session.run("medrepro", exp, "dryrun", "--out", f"dryrun-out/{exp}", *session.posargs)


@nox.session
def repro(session: nox.Session) -> None:
    """`dvc repro` of the results table with the profile in params.yaml, the README's results block from
    the same files, then the metrics."""
    session.run("dvc", "repro", *session.posargs)
    session.run("medrepro", "report", "--readme", "README.md")
    session.run("dvc", "metrics", "show")
    session.log("results table: results/RESULTS.md (and README.md's results block)")


@nox.session
def verify(session: nox.Session) -> None:
    """The smoke pipeline from scratch in a copy of the work tree, compared bitwise with the committed
    metrics; differences are printed as a table and fail the session."""
    session.run("medrepro", "verify", *session.posargs)


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def bench(session: nox.Session, exp: str) -> None:
    """Throughput ratios against same-process references, as JSON in bench/<exp>.json. The experiment's
    data stages run first (through DVC, so nothing is redone when the data is current)."""
    last_data_stage = registry.get(exp).stages[-1].name.replace("-", "_")
    session.run("dvc", "repro", f"{exp}_{last_data_stage}")
    session.run("medrepro", exp, "bench", "--out", f"bench/{exp}.json", *session.posargs)


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def build(session: nox.Session, exp: str) -> None:
    """Offline build of the base image and one experiment's image."""
    session.run("medrepro", "images", "build", exp)


@nox.session
def build_all(session: nox.Session) -> None:
    """Offline build of the base image and every experiment's image."""
    session.run("medrepro", "images", "build")


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def image_smoke(session: nox.Session, exp: str) -> None:
    """The image's default command with a host directory at /out; checks metrics.json and its owner."""
    out = Path("image-smoke-out") / exp
    out.mkdir(parents=True, exist_ok=True)
    session.run("medrepro", "images", "smoke", exp, "--out", str(out))


@nox.session
@nox.parametrize("exp", EXPERIMENTS)
def run(session: nox.Session, exp: str) -> None:
    """`docker run` of an experiment image; arguments pass through (`./dev "run(exp='retclip')" train ...`).

    GPUs and a large /dev/shm are added when the engine has the NVIDIA runtime."""
    session.run("medrepro", "images", "run", exp, "--", *session.posargs)
