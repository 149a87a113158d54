"""Every pytest run in this repo (tests/, nbval over solutions/) gets a real Temporal dev server of its own,
on a free port, stopped at the end of the run.

It never touches a learner's server on 7233: TEMPORAL_ADDRESS points every test, notebook kernel and grader
run of this session at the private server, and TEMPORAL_COURSE_DATA at a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import server

ROOT = Path(__file__).resolve().parent.parent
_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller started the server and exported its address to us
    data = Path(tempfile.mkdtemp(prefix="temporal-course-test-"))
    # Everything the run creates in the temp dir (kernels' scratch modules, worker logs, pytest's tmp_path,
    # throwaway servers' databases) lands under `data`, removed at the end: a killed kernel cannot clean up.
    scratch = data / "tmp"
    scratch.mkdir()
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # re-read TMPDIR
    for var in ("TEMPORAL_API_KEY", "TEMPORAL_PROFILE", "TEMPORAL_CONFIG_FILE", "TEMPORAL_TLS", "TEMPORAL_UI_URL"):
        os.environ.pop(var, None)
    os.environ["TEMPORAL_COURSE_DATA"] = str(data)
    os.environ["TEMPORAL_CONFIG_FILE"] = str(data / "no-profile.toml")  # ignore a developer's own profile
    dev = server.DevServer.start(headless=True, log_path=data / "server.log")
    os.environ["TEMPORAL_ADDRESS"] = dev.address
    os.environ["TEMPORAL_NAMESPACE"] = "default"
    _STATE.update(server=dev, data=data)


def pytest_unconfigure(config: pytest.Config) -> None:
    dev = _STATE.pop("server", None)
    if isinstance(dev, server.DevServer):
        dev.stop()
    data = _STATE.pop("data", None)
    if isinstance(data, Path):
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def dev_server() -> server.Target:
    """The session's dev server (started by this process, or by the xdist controller for its workers)."""
    return server.target()


# --------------------------------------------------------------------------- running in parallel (pytest-xdist)
# `make test` runs the suite on several workers. Whatever shares a kernel (nbval: a notebook's cells) or an
# expensive module fixture (the grader's class) must stay on one worker, everything else is spread test by test,
# and the longest work starts first so that no worker is left alone with a long notebook at the end.
# (xdist's `--dist loadgroup` would do the grouping with marks, but with pytest 9 its node-id suffix no longer
# takes: a scheduler of our own decides the groups instead.)

KEEP_TOGETHER = (".ipynb", "test_grade.py", "test_grade_demos.py")
LONG = ("test_grade_scale.py",)  # tests of half a minute each, independent of each other: spread, but started early


def _cost(item: pytest.Item) -> int:
    path = Path(str(item.fspath))
    if path.name == "test_notebooks.py":
        return 3 if "twice" in item.name else 2 if "learner" in item.name else 0
    if path.suffix == ".ipynb" or path.name in KEEP_TOGETHER or path.name in LONG:
        return 2
    return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_cost(item))  # stable: the order within a notebook (and a cost) is kept


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        """Load scheduling by scope: a notebook (or test_grade.py) is one scope, any other test its own."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(KEEP_TOGETHER) else nodeid

    config.option.loadscopereorder = False  # keep the collection's longest-first order
    return CourseScheduling(config, log)
