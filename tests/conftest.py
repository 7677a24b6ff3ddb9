"""The time each piece of the suite takes, for the table at the end of `.ci/run`.

A piece is the unit tests together, each integration test file, each image test (one image's build
and run), and work started in the background (the smoke pipeline), which overlaps the others. With
MEDREPRO_TEST_TIMES set to a file, each piece is written there as a tab-separated line: seconds,
tests, piece.
"""

import os
from collections import defaultdict
from pathlib import Path

import pytest

TIMES = pytest.StashKey[dict[str, list[float]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TIMES] = defaultdict(lambda: [0.0, 0])


def piece_of(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    if path.startswith("tests/unit/"):
        return "unit tests"
    if path.endswith("test_images.py"):
        return f"image test {name}"
    return path.removeprefix("tests/integration/")


def add_time(config: pytest.Config, piece: str, seconds: float, tests: int = 0) -> None:
    entry = config.stash[TIMES][piece]
    entry[0] += seconds
    entry[1] += tests


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    # Setup and teardown count too: module and session fixtures (an image build, a prepared dataset)
    # are paid for in the setup of the first test that needs them.
    report = yield
    add_time(item.config, piece_of(item.nodeid), report.duration, int(report.when == "call"))
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MEDREPRO_TEST_TIMES")
    if not target:
        return
    lines = [f"{seconds:.0f}\t{tests}\t{piece}" for piece, (seconds, tests) in session.config.stash[TIMES].items()]
    with Path(target).open("a") as f:
        f.writelines(line + "\n" for line in lines)
