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
def dev_server() -> server.DevServer:
    dev = _STATE.get("server")
    if not isinstance(dev, server.DevServer):
        pytest.skip("the session server runs in the xdist controller")
    return dev


@pytest.fixture(scope="session")
def target() -> server.Target:
    return server.target()
