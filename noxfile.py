"""nox sessions: thin wrappers over the package's commands. Run them through ./dev, which puts the
project's locked virtualenv first on PATH, so every session shares that one environment."""

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.run("ruff", "check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests; extra arguments go to pytest (`./dev tests -m "not integration"`)."""
    session.run("pytest", *session.posargs)


@nox.session
def smoke(session: nox.Session) -> None:
    """The retclip pipeline on synthetic data in smoke-out/ (CPU, minutes)."""
    session.run("medrepro", "retclip", "smoke", "--out", "smoke-out", *session.posargs)


@nox.session
def repro(session: nox.Session) -> None:
    """`dvc repro` of the results table with the profile in params.yaml, then the metrics."""
    session.run("dvc", "repro", *session.posargs)
    session.run("dvc", "metrics", "show")
    session.log("results table: results/RESULTS.md")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput ratios against same-process references, as JSON under bench/."""
    session.run("medrepro", "retclip", "bench", "--out", "bench/retclip.json", *session.posargs)
