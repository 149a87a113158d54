"""Processes a notebook can crash for real: a worker, a plain script, a throwaway dev server.

A worker inside the kernel (``course.start_worker``) cannot be killed without killing the notebook. For a real
crash, :func:`start_process` runs the worker in its own OS process (``python -m helpers.worker worker …``), given
the module:attr names of its workflows and activities (written with ``%%module`` into ``course.scratch``), and
:meth:`ChildProcess.kill` sends it SIGKILL, mid-activity if you like. :func:`start_script` does the same for a plain
function (the "before Temporal" version of a process), and :func:`start_server` starts a second dev server with its
own SQLite file, for killing the server itself.

Everything here is tied to the kernel: a child watches its parent's pid and exits when the kernel dies (a guard
process does this for a dev server), its output goes to a log file in the scratch dir (never into the notebook),
and every wait is bounded. Children end with ``os._exit`` (temporalio/sdk-python#300, see ``server.exit_now``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import itertools
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import server
from helpers.errors import CourseError, server_not_answering

if TYPE_CHECKING:
    from helpers.runtime import Course

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
PARENT_POLL_S = 0.5
# A killed worker cannot tell the server it is gone, so the server keeps offering the workflow's next task to that
# worker's cache ("sticky" queue) for this long before any worker may take it. The SDK default is 10 s.
STICKY_TIMEOUT = timedelta(seconds=1)

_counter = itertools.count(1)


# --------------------------------------------------------------------------- the kernel's side


@dataclass
class ChildProcess:
    """A Python child process of this kernel, with its output in ``log_path``."""

    label: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path
    killed: bool = False
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def state(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if self.killed:
            return "killed (SIGKILL)"
        if self.stopped:
            return "stopped"
        return "finished" if code == 0 else f"exited with code {code}"

    def __repr__(self) -> str:
        return f"{self.label}: {self.state()}"

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to the server, exactly like a crashed machine."""
        if self.alive:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it is not gone within ``timeout``."""
        if self.alive:
            self.stopped = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await self.wait(timeout)
        if self.alive:
            self.kill()

    async def wait(self, timeout: float) -> int:
        """Wait (bounded) for the process to end; returns its exit code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.process.poll()) is None:
            if loop.time() >= deadline:
                raise TimeoutError(f"{self.label} still running after {timeout:g} s")
            await asyncio.sleep(0.05)
        return code

    def log_tail(self, lines: int = 12) -> str:
        return server._log_tail(self.log_path, lines)


@dataclass(repr=False)
class WorkerProcess(ChildProcess):
    """A Temporal worker in its own OS process (``spec``: how :func:`start_process` started it)."""

    task_queue: str = ""
    names: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Worker process on task queue {self.task_queue} ({', '.join(self.names)}): {self.state()}"


_children: dict[str, ChildProcess] = {}
_servers: dict[Path | str, server.DevServer] = {}


def _spawn(course: Course, args: list[str], log_name: str, env: dict[str, str] | None = None) -> tuple[Any, Path]:
    log_path = course.scratch / f"{log_name}-{next(_counter)}.log"
    cmd = [
        sys.executable,
        "-m",
        "helpers.worker",
        *args,
        "--parent",
        str(os.getpid()),
        "--scratch",
        str(course.scratch),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a Ctrl-C in the lab's terminal is not a crash of this worker
        )
    return proc, log_path


def _target_env(where: server.Target) -> dict[str, str]:
    return {"TEMPORAL_ADDRESS": where.address, "TEMPORAL_NAMESPACE": where.namespace}


async def start_process(
    course: Course,
    *,
    workflows: Sequence[str] = (),
    activities: Sequence[str] = (),
    task_queue: str | None = None,
    target: server.Target | None = None,
    timeout: float = READY_TIMEOUT_S,
    max_concurrent_activities: int | None = None,
    replace: bool = True,
) -> WorkerProcess:
    """Start a worker in a separate OS process and wait (bounded) until it polls.

    ``workflows`` / ``activities`` are ``"module:attr"`` names of ``%%module`` cells; ``target`` defaults to the
    course's server. A worker process already running on the same task queue is stopped first, unless
    ``replace=False``: then it is one more worker on that queue (several processes share the queue's tasks).
    ``max_concurrent_activities`` caps the activities the worker runs at a time (SDK default: 100).
    """
    queue = task_queue or course.task_queue
    names = [*workflows, *activities]
    if not names:
        raise CourseError("start_process needs at least one workflow or activity, as 'module:name'.")
    for name in names:
        if name.count(":") != 1:
            raise CourseError(f"{name!r}: name workflows and activities as 'module:attr', e.g. 'orders:charge'.")
    where = target or course.target
    if await server.probe(where, 2.0) != "temporal":
        raise server_not_answering(where.address, course_server=where == course.target)
    key = queue if replace else f"{queue}#{next(_counter)}"
    if replace and (old := _children.pop(queue, None)) is not None:
        await old.stop()
    ready = course.scratch / f"ready-{os.getpid()}-{next(_counter)}"
    args = ["worker", "--task-queue", queue, "--ready", str(ready)]
    args += [a for w in workflows for a in ("--workflow", w)] + [a for a in activities for a in ("--activity", a)]
    if max_concurrent_activities is not None:
        args += ["--max-concurrent-activities", str(max_concurrent_activities)]
    proc, log_path = _spawn(course, args, "worker", _target_env(where))
    spec = {
        "workflows": tuple(workflows),
        "activities": tuple(activities),
        "task_queue": queue,
        "target": target,
        "max_concurrent_activities": max_concurrent_activities,
        "replace": replace,
    }
    child = WorkerProcess(
        "worker process", proc, log_path, task_queue=queue, names=tuple(n.split(":")[1] for n in names), spec=spec
    )
    _children[key] = child
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready.exists():
        if not child.alive:
            _children.pop(key, None)
            raise CourseError(f"The worker process exited at start. Its log says:\n{child.log_tail()}")
        if loop.time() >= deadline:
            child.kill()
            raise CourseError(f"The worker process was not ready within {timeout:g} s. Log:\n{child.log_tail()}")
        await asyncio.sleep(0.05)
    ready.unlink(missing_ok=True)
    return child


async def restart_processes(course: Course) -> list[WorkerProcess]:
    """Start every running worker process of the course's server again (after the server came back: a fresh
    process connects at once, where the old one may still be waiting out its reconnect backoff)."""
    again = []
    for key, child in list(_children.items()):
        if isinstance(child, WorkerProcess) and child.alive and child.spec.get("target") in (None, course.target):
            await child.stop()
            _children.pop(key, None)
            again.append(await start_process(course, **child.spec))
    return again


async def start_script(course: Course, function: str, *args: str) -> ChildProcess:
    """Run ``module:function(*args)`` (a plain function, sync or async) in a separate OS process."""
    if function.count(":") != 1:
        raise CourseError(f"{function!r}: name the function as 'module:function'.")
    proc, log_path = _spawn(course, ["script", function, *map(str, args)], "script")
    child = ChildProcess(f"script {function}", proc, log_path)
    _children[f"script-{proc.pid}"] = child
    return child


async def start_server(
    course: Course,
    db_path: Path | None,
    *,
    port: int | None = None,
    dynamic_config: Mapping[str, Any] | None = None,
) -> server.DevServer:
    """A throwaway dev server (headless, SQLite file ``db_path``) that dies with this kernel.

    Start it again with the same ``db_path`` and ``port`` after a ``kill()`` to see what survived. A server this
    kernel started earlier on the same file is stopped first (two servers must never share one database).
    ``db_path=None``: the server keeps its state in memory (no disk writes to wait for; nothing survives a kill).
    ``dynamic_config`` adds server settings on top of the course's (e.g. ``{"limit.blobSize.error": 10000}``).
    """
    db_path = None if db_path is None else Path(db_path).resolve()
    if db_path is not None and (old := _servers.pop(db_path, None)) is not None:
        await asyncio.to_thread(old.stop)
    dev = await asyncio.to_thread(
        server.DevServer.start,
        port=port or server.free_port(),
        db_path=db_path,
        log_path=course.scratch / "demo-server.log",
        dynamic_config=dynamic_config,
        headless=True,
    )
    _servers[db_path or f"in-memory:{dev.port}"] = dev
    # The server runs in its own session (so it survives a Ctrl-C); a guard kills it when this kernel dies.
    subprocess.Popen(
        [sys.executable, "-m", "helpers.worker", "guard", "--pgid", str(dev.pid), "--parent", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return dev


async def server_view(handle: Any) -> ServerView:
    """What the server knows about a run right now: its status and the activities it is waiting for."""
    from temporalio.api.enums.v1 import PendingActivityState

    desc = await asyncio.wait_for(handle.describe(), 5)
    pending = [
        (
            act.activity_type.name,
            act.attempt,
            PendingActivityState.Name(act.state).removeprefix("PENDING_ACTIVITY_STATE_").lower(),
        )
        for act in desc.raw_description.pending_activities
    ]
    return ServerView(desc.status.name if desc.status else "UNKNOWN", pending)


@dataclass(frozen=True)
class ServerView:
    status: str
    pending: list[tuple[str, int, str]]

    def __repr__(self) -> str:
        lines = [f"workflow status: {self.status}"]
        lines += [f"waiting for activity {name} (attempt {n}, {state})" for name, n, state in self.pending]
        return "\n".join(lines if self.pending else [*lines, "no activity in flight"])


async def wait_until(condition: Callable[[], bool], timeout: float, what: str = "the condition") -> None:
    """Poll ``condition`` every 20 ms until it is true; raise a course error after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise CourseError(f"Waited {timeout:g} s for {what}; it did not happen.")
        await asyncio.sleep(0.02)


async def stop_all() -> None:
    """Stop every worker process, script and throwaway server this kernel started."""
    for key in list(_children):
        await _children.pop(key).stop()
    for db in list(_servers):
        await asyncio.to_thread(_servers.pop(db).stop)


# --------------------------------------------------------------------------- the child's side


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


async def _watch_parent(parent: int) -> None:
    while not _parent_gone(parent):
        await asyncio.sleep(PARENT_POLL_S)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()


async def _worker_main(ns: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.worker import Worker

    where = server.target()
    client = await server.connect(where, 10.0)
    worker = Worker(
        client,
        task_queue=ns.task_queue,
        workflows=[_load(w) for w in ns.workflow],
        activities=[_load(a) for a in ns.activity],
        activity_executor=ThreadPoolExecutor(max_workers=8),
        sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
        max_concurrent_activities=ns.max_concurrent_activities,
    )
    run = asyncio.create_task(worker.run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    Path(ns.ready).touch()
    print(f"worker pid {os.getpid()} polling {ns.task_queue} at {where.address}", flush=True)
    await _first(run, stop.wait(), _watch_parent(ns.parent))
    if run.done():
        run.result()  # re-raise a worker failure into the log
        return 1
    print("stopping", "(kernel gone)" if _parent_gone(ns.parent) else "(SIGTERM)", flush=True)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(worker.shutdown(), STOP_TIMEOUT_S)
    return 0


async def _script_main(ns: argparse.Namespace) -> int:
    fn = _load(ns.function)
    print(f"script pid {os.getpid()}: {ns.function}{tuple(ns.args)}", flush=True)

    async def call() -> Any:
        result = fn(*ns.args)
        return await result if inspect.isawaitable(result) else result

    task = asyncio.ensure_future(call())
    await _first(task, _watch_parent(ns.parent))
    if not task.done():
        return 1
    print(f"returned {task.result()!r}", flush=True)
    return 0


def _guard_main(ns: argparse.Namespace) -> int:
    while True:
        try:
            os.killpg(ns.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return 0  # the server is gone already
        if _parent_gone(ns.parent):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ns.pgid, signal.SIGKILL)
            return 0
        time.sleep(PARENT_POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--task-queue", required=True)
    w.add_argument("--workflow", action="append", default=[])
    w.add_argument("--activity", action="append", default=[])
    w.add_argument("--ready", required=True)
    w.add_argument("--max-concurrent-activities", type=int, default=None)
    s = sub.add_parser("script")
    s.add_argument("function")
    s.add_argument("args", nargs="*")
    g = sub.add_parser("guard")
    g.add_argument("--pgid", type=int, required=True)
    for p in (w, s, g):
        p.add_argument("--parent", type=int, required=True)
        p.add_argument("--scratch", default=None)
    ns = parser.parse_args(argv)
    if ns.command == "guard":
        return _guard_main(ns)
    if ns.scratch:
        sys.path.insert(0, ns.scratch)
    os.chdir(ns.scratch or ".")
    try:
        return asyncio.run(_worker_main(ns) if ns.command == "worker" else _script_main(ns))
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    server.exit_now(main())
