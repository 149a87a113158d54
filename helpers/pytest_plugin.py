"""The course's pytest plugin, loaded into every pytest run a notebook starts (``-p helpers.pytest_plugin``).

* ``async def`` tests run in an event loop of their own (in a project of your own, pytest-asyncio with
  ``asyncio_mode = "auto"`` does the same).
* The SDK's Rust core logs only errors: its WARN lines (the time-skipping server's note about heartbeat details,
  say) would be noise in the report.
* Each test's outcome is written as JSON to ``$COURSE_PYTEST_REPORT`` for :mod:`helpers.pytest_runs` (the terminal
  report is for people).
* If the kernel that started the run dies, the run (pytest and the test server it started) is killed.
* The process ends with ``os._exit`` once pytest is done: the SDK's threads can abort a normal interpreter exit
  after every test passed (temporalio/sdk-python#300), which would turn a green run into a crash.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

REPORT_ENV = "COURSE_PYTEST_REPORT"
PARENT_ENV = "COURSE_PYTEST_PARENT"  # the kernel's pid: the run ends if the kernel dies

_results: list[dict[str, str]] = []
_status = {"code": 0}


def pytest_configure(config: pytest.Config) -> None:
    from helpers.server import sdk_runtime

    sdk_runtime()  # the default runtime from now on: its core logs errors only
    if parent := os.environ.get(PARENT_ENV):
        threading.Thread(target=_stop_when_orphaned, args=(int(parent),), daemon=True).start()


def _stop_when_orphaned(parent: int) -> None:
    """The kernel that started this run died: stop pytest and whatever it started (a test server) at once."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the run is a process group of its own


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test to completion in a fresh event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


def _message(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(report.longrepr or "").strip().splitlines()[-1] if report.longrepr else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.failed and report.when in ("setup", "teardown")):
        outcome = report.outcome if report.when == "call" else "error"
        _results.append(
            {"test": report.nodeid, "outcome": outcome, "message": _message(report) if report.failed else ""}
        )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _results.append({"test": report.nodeid or "collection", "outcome": "error", "message": _message(report)})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status["code"] = int(exitstatus)
    if path := os.environ.get(REPORT_ENV):
        with open(path, "w") as out:
            json.dump({"exit": int(exitstatus), "tests": _results}, out)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_status["code"])
