"""Temporal inside a notebook kernel: one client, background workers, bounded runs, UI links.

A notebook starts with ``course = await runtime.start("00")``. That finds (or starts) the server, connects
once, gives the kernel its own task queue, and registers the ``%%module NAME`` cell magic (:mod:`helpers.kernel`),
which writes a cell to an importable module in a per-kernel scratch directory: workflow code must live in a real
file for the Temporal sandbox (which stays ON) to load it, and re-running the cell updates it. Re-running the setup
cell keeps the workers, and brings a stopped local server back (reconnecting the client and the workers).

Every wait here is bounded. A workflow whose task keeps failing (a ``NameError`` in workflow code, a
``NotImplementedError`` from an unfinished exercise) is retried by Temporal forever; :meth:`Course.result`
watches the history and reports the failure in seconds instead of spinning. An ``async def`` activity that never
awaits is stopped by :mod:`helpers.watchdog`. A server that does not answer is reported as such
(:class:`~helpers.errors.ServerNotAnswering`), never as a problem with the learner's code.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import html
import inspect
import itertools
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from helpers import kernel, server, watchdog
from helpers.errors import (
    ActivityKeepsFailing,
    CourseError,
    PendingActivity,
    ServerNotAnswering,
    WorkflowStuck,
    WorkflowTaskFailed,
    hint_for,
    is_unavailable,
    server_not_answering,
    short_failure,
)
from helpers.kernel import write_module
from helpers.waits import wait_result

RESULT_TIMEOUT_S = 10.0
EXECUTION_TIMEOUT = timedelta(minutes=30)
WORKER_STOP_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 1.5

T = TypeVar("T")


# --------------------------------------------------------------------------- session


@dataclass
class RunningWorker:
    """A worker polling in the background of this kernel (``options`` say how to start it again)."""

    worker: Worker
    task: asyncio.Task[None]
    task_queue: str
    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def running(self) -> bool:
        return not self.task.done()

    @property
    def failure(self) -> str | None:
        """Why the worker stopped by itself (e.g. it lost the server for too long), if it did."""
        if not self.task.done() or self.task.cancelled() or self.task.exception() is None:
            return None
        return short_failure(self.task.exception()).splitlines()[-1].replace("caused by ", "").strip()

    def __repr__(self) -> str:
        state = "running in the background" if self.running else "stopped"
        if self.failure:
            state += f" ({self.failure})"
        return f"Worker {state} on task queue {self.task_queue} ({', '.join(self.names) or 'nothing registered'})"

    async def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Graceful stop: stop polling, cancel in-flight activities, wait (bounded) for the run loop."""
        if self.task.done():
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.worker.shutdown(), timeout)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, timeout)


def _keep_quiet(task: asyncio.Task[None]) -> None:
    """Done-callback: a worker that died keeps its error for ``repr`` instead of asyncio logging a traceback."""
    if not task.cancelled():
        task.exception()


@dataclass
class Course:
    """Everything one notebook kernel needs to run real workflows."""

    notebook: str
    client: Client
    target: server.Target
    scratch: Path
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: dict[str, RunningWorker] = field(default_factory=dict)
    last: WorkflowHandle[Any, Any] | None = None
    started: list[WorkflowHandle[Any, Any]] = field(default_factory=list, repr=False)  # every run started here
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=16))

    # ---- names -------------------------------------------------------------------------------------------
    @property
    def task_queue(self) -> str:
        """This kernel's task queue: two learners (or two kernels) on one server never steal each other's tasks."""
        return f"course-{self.notebook}-{self.session}"

    def new_id(self, prefix: str = "run") -> str:
        """A workflow id unique to this kernel and run: ``<prefix>-<session>-<n>``."""
        return f"{prefix}-{self.session}-{next(self._ids)}"

    def new_task_queue(self, purpose: str) -> str:
        return f"{self.task_queue}-{purpose}"

    def ui_link(self, workflow_id: str, run_id: str | None = None) -> str | None:
        base = self.target.ui_url
        if base is None:
            return None
        url = f"{base}/namespaces/{quote(self.target.namespace)}/workflows/{quote(workflow_id, safe='')}"
        return f"{url}/{run_id}/history" if run_id else url

    # ---- the server --------------------------------------------------------------------------------------
    async def healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> bool:
        """Does the server answer, right now, within ``timeout``?"""
        try:
            await asyncio.wait_for(
                self.client.service_client.check_health(timeout=timedelta(seconds=timeout)), timeout + 0.5
            )
        except Exception:
            return False
        return True

    async def _server_call(self, call: Awaitable[T]) -> T:
        """``await call``, but a server that does not answer is said so at once, not as a raw RPC error."""
        if not await self.healthy():
            with contextlib.suppress(BaseException):
                call.close()  # type: ignore[attr-defined]  # never awaited: it was a coroutine
            raise server_not_answering(self.target.address)
        try:
            return await call
        except Exception as err:
            if is_unavailable(err):
                raise server_not_answering(self.target.address) from None
            raise

    # ---- workers -----------------------------------------------------------------------------------------
    async def start_worker(
        self,
        *,
        workflows: Sequence[type] = (),
        activities: Sequence[Callable[..., Any]] = (),
        task_queue: str | None = None,
        **worker_options: Any,
    ) -> RunningWorker:
        """Run a worker in the background of this kernel, replacing one already on the same task queue."""
        queue = task_queue or self.task_queue
        if not await self.healthy():  # before touching the running worker: it must survive a refused start
            raise server_not_answering(self.target.address)
        await self.stop_worker(queue)
        watchdog.watch()  # an `async def` activity that never awaits would freeze this kernel: stop it instead
        try:
            worker = Worker(
                self.client,
                task_queue=queue,
                workflows=list(workflows),
                activities=list(activities),
                activity_executor=self._executor,
                **worker_options,
            )
        except Exception as err:
            raise CourseError(f"The worker could not load your code: {short_failure(err)}") from None
        names = tuple(getattr(w, "__name__", str(w)) for w in [*workflows, *activities])
        task = asyncio.create_task(worker.run(), name=f"worker:{queue}")
        task.add_done_callback(_keep_quiet)
        options = {"workflows": tuple(workflows), "activities": tuple(activities), **worker_options}
        running = RunningWorker(worker, task, queue, names, options)
        self.workers[queue] = running
        return running

    async def stop_worker(self, task_queue: str | None = None) -> bool:
        """Stop the worker on ``task_queue`` (default: this kernel's). Returns whether one was running."""
        running = self.workers.pop(task_queue or self.task_queue, None)
        if running is None:
            return False
        await running.stop()
        return True

    async def stop_all(self) -> None:
        for queue in list(self.workers):
            await self.stop_worker(queue)

    async def restart_workers(self) -> list[RunningWorker]:
        """Start every worker again, with the same code and options, on the current client."""
        olds = list(self.workers.values())
        return [await self.start_worker(task_queue=old.task_queue, **old.options) for old in olds]

    # ---- runs --------------------------------------------------------------------------------------------
    async def start_workflow(
        self,
        run: Any,
        *args: Any,
        id: str | None = None,
        id_prefix: str | None = None,
        task_queue: str | None = None,
        show: bool = True,
        **options: Any,
    ) -> WorkflowHandle[Any, Any]:
        """Start a workflow (``run`` = ``MyWorkflow.run`` or a type name) and show its UI link."""
        wf_name = _workflow_name(run)
        _check_startable(run, wf_name, args)
        workflow_id = id or self.new_id(id_prefix or _slug(wf_name))
        # A kernel restart orphans the runs its workers were serving; the server closes them after this
        # bound instead of keeping them "Running" forever (it matters on a workshop's shared server).
        options.setdefault("execution_timeout", EXECUTION_TIMEOUT)
        handle = await self._server_call(
            self.client.start_workflow(
                run,
                args=list(args),
                id=workflow_id,
                task_queue=task_queue or self.task_queue,
                **options,
            )
        )
        self.last = handle
        self.started.append(handle)
        if show:
            self.show_link(handle, wf_name)
        return handle

    async def result(
        self,
        handle: WorkflowHandle[Any, Any],
        timeout: float = RESULT_TIMEOUT_S,
        *,
        activity_retries: int | None = None,
    ) -> Any:
        """Wait for a workflow's result, at most ``timeout`` s; fail fast if its code keeps failing."""
        try:
            return await wait_result(self.client, handle, timeout, activity_retries=activity_retries)
        except ServerNotAnswering:
            raise server_not_answering(self.target.address) from None

    async def run(self, run: Any, *args: Any, timeout: float = RESULT_TIMEOUT_S, **options: Any) -> Any:
        """Start a workflow, show its UI link, and return its result (bounded by ``timeout``)."""
        handle = await self.start_workflow(run, *args, **options)
        return await self.result(handle, timeout)

    def show_link(self, handle: WorkflowHandle[Any, Any], label: str = "Workflow") -> None:
        url = self.ui_link(handle.id, handle.result_run_id or handle.run_id)
        text = f"{label} started: {handle.id}" + (f" → {url}" if url else "")
        if url is None or not kernel.in_ipython():
            print(text)
            return
        from IPython.display import display

        anchor = (
            f"{html.escape(label)} started: <code>{html.escape(handle.id)}</code> · "
            f'<a href="{html.escape(url)}" target="_blank" rel="noopener">open in the Temporal UI ↗</a>'
        )
        display({"text/plain": text, "text/html": anchor}, raw=True)

    async def history(self, handle: WorkflowHandle[Any, Any] | None = None) -> Any:
        """The event history of ``handle`` (default: the last run) as a table."""
        from helpers import history

        return history.table(await self._fetch(handle))

    async def timeline(
        self,
        handle: WorkflowHandle[Any, Any] | None = None,
        title: str | None = None,
        *,
        marks: Mapping[str, float] | None = None,
    ) -> None:
        """Plot ``handle``'s history (default: the last run) as a timeline; ``marks``: ``{label: unix time}``
        drawn as vertical lines (e.g. when a process was killed)."""
        from helpers import plots

        hist = await self._fetch(handle)
        plots.timeline(hist, title=title, marks=marks)

    async def _fetch(self, handle: WorkflowHandle[Any, Any] | None) -> Any:
        handle = handle or self.last
        if handle is None:
            raise CourseError("No workflow has run yet in this notebook: run one first.")
        return await self._server_call(asyncio.wait_for(handle.fetch_history(), RESULT_TIMEOUT_S))


# --------------------------------------------------------------------------- entry point

_current: Course | None = None


def quiet_sdk_logs() -> None:
    """Workflow-task and activity failures are reported by the course, briefly; the SDK's own log records
    (tracebacks on stderr) would bury that. ``TEMPORAL_COURSE_VERBOSE=1`` keeps them."""
    if not os.environ.get("TEMPORAL_COURSE_VERBOSE"):
        logging.getLogger("temporalio").setLevel(logging.CRITICAL)
        # A forgotten `await` in workflow code is reported with a hint; Python's own warning would land on
        # stderr under whichever cell happens to run when the coroutine is garbage-collected.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        # The SDK's notes about its own bookkeeping, which land on stderr under an unrelated cell: a cancel for an
        # activity the course already stopped, and an import inside workflow code (the verdict names that one).
        warnings.filterwarnings("ignore", message="Cannot find activity to cancel")
        warnings.filterwarnings("ignore", message="Module .* was imported after initial workflow load")


async def connect(where: server.Target, timeout: float = 10.0) -> Client:
    try:
        return await server.connect(where, timeout)
    except Exception as err:
        raise CourseError(f"Could not connect to Temporal at {where.address}: {short_failure(err)}") from None


async def _ensure_server(where: server.Target) -> bool:
    """Reuse a server that answers, else start the course's local one; True if started now."""
    try:
        _, started = await asyncio.to_thread(server.ensure, where)
    except server.ServerError as err:
        raise CourseError(str(err)) from None
    return started


async def start(notebook: str, *, quiet: bool = False) -> Course:
    """Set up this kernel for a notebook: server (found or started), client, task queue, ``%%module``.

    Run again in the same kernel, it keeps the session and its workers; if the server stopped answering, it
    brings a local one back, reconnects, and starts the workers again on the new connection.
    """
    global _current
    say = (lambda *_: None) if quiet else print
    if _current is not None:
        course = _current
        course.notebook = notebook
        where = course.target
        if await course.healthy():
            say(f"Temporal server at {where.address}, namespace {where.namespace!r}: found it running.")
        else:
            from helpers import worker

            started = await _ensure_server(where)
            course.client = await connect(where)
            await course.restart_workers()
            processes = await worker.restart_processes(course)
            how = "it had stopped, so the course started it again" if started else "it answers again"
            say(f"Temporal server at {where.address}, namespace {where.namespace!r}: {how}; reconnected.")
            if processes:
                say(f"Restarted {len(processes)} worker process(es) on it: " + "; ".join(map(repr, processes)))
        if course.workers:
            listing = "; ".join(f"{w.task_queue} ({', '.join(w.names)})" for w in course.workers.values())
            say(f"Still running from before: {len(course.workers)} background worker(s): {listing}")
    else:
        quiet_sdk_logs()
        where = server.target()
        started = await _ensure_server(where)
        client = await connect(where)
        scratch = Path(tempfile.mkdtemp(prefix="temporal-course-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.path.insert(0, str(scratch))
        course = Course(notebook=notebook, client=client, target=where, scratch=scratch)
        _current = course
        how = "started it" if started else "found it running"
        say(f"Temporal server at {where.address}, namespace {where.namespace!r}: {how}.")
    if (shell := kernel.in_ipython()) is not None:
        kernel.register(shell, course.scratch)
    if ui := course.target.ui_url:
        say(f"Temporal Web UI: {ui}/namespaces/{quote(course.target.namespace)}/workflows")
    say(f"This notebook's task queue: {course.task_queue}")
    return course


def current() -> Course:
    if _current is None:
        raise CourseError(f"The course is not set up in this kernel yet. {kernel.SETUP_FIRST}")
    return _current


def _check_startable(run: Any, name: str, args: Sequence[Any]) -> None:
    """Catch the two common slips before the server does (it would answer with a long SDK traceback or a
    workflow task that fails after the start)."""
    if getattr(run, "__temporal_activity_definition", None) is not None:
        raise CourseError(
            f"{name} is an activity, not a workflow: start the workflow (e.g. course.run(MyWorkflow.run, ...)); "
            "workflows call activities with workflow.execute_activity(...)."
        )
    if callable(run) and not isinstance(run, str):
        try:
            inspect.signature(run).bind(None, *args)
        except TypeError as err:
            raise CourseError(f"{name}.run cannot take these arguments: {err}.") from None
        except ValueError:
            pass  # no signature to check


def _workflow_name(run: Any) -> str:
    if isinstance(run, str):
        return run
    defn = getattr(run, "__temporal_workflow_definition", None)
    if defn is not None:
        return defn.name
    qualname = getattr(run, "__qualname__", "Workflow")
    return qualname.split(".")[0]


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


__all__ = [
    "ActivityKeepsFailing",
    "Course",
    "CourseError",
    "PendingActivity",
    "RunningWorker",
    "ServerNotAnswering",
    "WorkflowStuck",
    "WorkflowTaskFailed",
    "current",
    "hint_for",
    "short_failure",
    "start",
    "wait_result",
    "write_module",
]
