"""Temporal inside a notebook kernel: one client, background workers, bounded runs, UI links.

A notebook starts with ``course = await runtime.start("00")``. That finds (or starts) the server, connects
once, gives the kernel its own task queue, and registers the ``%%module NAME`` cell magic, which writes a cell
to an importable module in a per-kernel scratch directory: workflow code must live in a real file for the
Temporal sandbox (which stays ON) to load it, and re-running the cell updates it.

Every wait here is bounded. A workflow whose task keeps failing (a ``NameError`` in workflow code, a
``NotImplementedError`` from an unfinished exercise) is retried by Temporal forever; :meth:`Course.result`
watches the history and reports the failure in seconds instead of spinning.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import html
import importlib
import importlib.util
import inspect
import itertools
import linecache
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from temporalio import workflow
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from helpers import server

RESULT_TIMEOUT_S = 10.0
EXECUTION_TIMEOUT = timedelta(minutes=30)
WORKER_STOP_TIMEOUT_S = 5.0

# Causes that mean "the workflow code itself is broken": retrying cannot help, so say so at once.
# Others (e.g. UNHANDLED_COMMAND, RESET_STICKY_TASK_QUEUE) are routine and resolve themselves.
FATAL_TASK_CAUSES = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR,
}


class CourseError(Exception):
    """A problem shown to the learner as one short message (no traceback), with a hint."""


class WorkflowTaskFailed(CourseError):
    """The workflow's own code raised; Temporal would retry the task forever."""

    def __init__(self, message: str, *, failure: str, workflow_id: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.workflow_id = workflow_id


class ActivityKeepsFailing(CourseError):
    """An activity failed again and again; Temporal would retry it forever."""

    def __init__(self, message: str, *, activity: str, failure: str, workflow_id: str) -> None:
        super().__init__(message)
        self.activity = activity
        self.failure = failure
        self.workflow_id = workflow_id


class WorkflowStuck(CourseError):
    """The workflow did not finish within the wait's bound."""


# --------------------------------------------------------------------------- session


@dataclass
class RunningWorker:
    """A worker polling in the background of this kernel."""

    worker: Worker
    task: asyncio.Task[None]
    task_queue: str
    names: tuple[str, ...]

    @property
    def running(self) -> bool:
        return not self.task.done()

    def __repr__(self) -> str:
        state = "running in the background" if self.running else "stopped"
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
        await self.stop_worker(queue)
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
        running = RunningWorker(worker, task, queue, names)
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
        handle = await self.client.start_workflow(
            run,
            args=list(args),
            id=workflow_id,
            task_queue=task_queue or self.task_queue,
            **options,
        )
        self.last = handle
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
        return await wait_result(self.client, handle, timeout, activity_retries=activity_retries)

    async def run(self, run: Any, *args: Any, timeout: float = RESULT_TIMEOUT_S, **options: Any) -> Any:
        """Start a workflow, show its UI link, and return its result (bounded by ``timeout``)."""
        handle = await self.start_workflow(run, *args, **options)
        return await self.result(handle, timeout)

    def show_link(self, handle: WorkflowHandle[Any, Any], label: str = "Workflow") -> None:
        url = self.ui_link(handle.id, handle.result_run_id or handle.run_id)
        text = f"{label} started: {handle.id}" + (f" → {url}" if url else "")
        if url is None or not _in_ipython():
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

    async def timeline(self, handle: WorkflowHandle[Any, Any] | None = None, title: str | None = None) -> None:
        """Plot ``handle``'s history (default: the last run) as a timeline."""
        from helpers import plots

        hist = await self._fetch(handle)
        plots.timeline(hist, title=title)

    async def _fetch(self, handle: WorkflowHandle[Any, Any] | None) -> Any:
        handle = handle or self.last
        if handle is None:
            raise CourseError("No workflow has run yet in this notebook: run one first.")
        return await asyncio.wait_for(handle.fetch_history(), RESULT_TIMEOUT_S)


# --------------------------------------------------------------------------- bounded waiting


async def wait_result(
    client: Client, handle: WorkflowHandle[Any, Any], timeout: float, *, activity_retries: int | None = None
) -> Any:
    """``handle.result()`` bounded by ``timeout``, failing fast on a broken workflow task.

    With ``activity_retries=n``, an activity that has failed ``n`` times also ends the wait (checks use this:
    Temporal retries a failing activity forever, and the learner wants the reason, not a timeout).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    result_task = asyncio.ensure_future(handle.result())
    watchers = {asyncio.ensure_future(_first_fatal_task_failure(handle))}
    if activity_retries is not None:
        watchers.add(asyncio.ensure_future(_first_failing_activity(handle, activity_retries)))
    try:
        pending = {result_task, *watchers}
        while not result_task.done() and (remaining := deadline - loop.time()) > 0:
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for watcher in done & watchers:
                error = None if watcher.exception() else watcher.result()
                if error is not None and not result_task.done():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.terminate(reason=f"course: {error.failure}"), 5)
                    raise error
            if not pending - watchers:
                break
        if result_task.done():
            return result_task.result()
        raise WorkflowStuck(await _stuck_message(client, handle, timeout))
    finally:
        for task in (result_task, *watchers):
            task.cancel()


async def _first_fatal_task_failure(handle: WorkflowHandle[Any, Any]) -> WorkflowTaskFailed | None:
    """Follow the history; the first fatal workflow task failure as an error to raise, or None."""
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause in FATAL_TASK_CAUSES:
                failure = _failure_text(attrs.failure)
                hint = hint_for(failure)
                return WorkflowTaskFailed(
                    f"Workflow {handle.id} cannot make progress: its code raised {failure}\n"
                    + (f"Hint: {hint}\n" if hint else "")
                    + "Temporal retries a failing workflow task forever, so the course terminated this run. "
                    "Fix the code, re-run its cell, restart the worker and try again.",
                    failure=failure,
                    workflow_id=handle.id,
                )
    return None


async def _first_failing_activity(handle: WorkflowHandle[Any, Any], attempts: int) -> ActivityKeepsFailing:
    """Poll the run's pending activities until one has failed ``attempts`` times."""
    while True:
        await asyncio.sleep(0.3)
        with contextlib.suppress(Exception):
            desc = await asyncio.wait_for(handle.describe(), 3)
            for act in desc.raw_description.pending_activities:
                if act.attempt > attempts and act.HasField("last_failure") and act.last_failure.message:
                    failure = _failure_text(act.last_failure)
                    hint = hint_for(failure)
                    return ActivityKeepsFailing(
                        f"Activity {act.activity_type.name} of workflow {handle.id} keeps failing: {failure}"
                        + (f"\nHint: {hint}" if hint else ""),
                        activity=act.activity_type.name,
                        failure=failure,
                        workflow_id=handle.id,
                    )


def hint_for(failure: str) -> str | None:
    """A hint for failure texts learners meet often."""
    if "coroutine" in failure:
        return "did you forget `await` (e.g. before workflow.execute_activity(...))?"
    if "TMPRL1101" in failure:
        return (
            "your workflow ran for over 2 s without awaiting anything: an endless loop, or a blocking call "
            "(time.sleep, I/O)? Use `await workflow.sleep(...)`, and put blocking work in an activity."
        )
    if "is not registered on this worker" in failure:
        return "start the worker with every workflow and activity it must run (course.start_worker(...))."
    return None


def _failure_text(failure: Any) -> str:
    kind = failure.application_failure_info.type if failure.HasField("application_failure_info") else ""
    message = failure.message
    where = _user_frame(failure.stack_trace)
    text = f"{kind}: {message}" if kind and not message.startswith(kind) else message
    return f"{text} ({where})" if where else text


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _user_frame(stack: str) -> str | None:
    """The innermost stack frame outside temporalio / the stdlib, as ``file.py line N``."""
    frames = [
        m
        for m in _FRAME.finditer(stack or "")
        if "temporalio" not in m[1] and "/lib/python" not in m[1] and not m[1].startswith("<")  # <string>, <frozen …>
    ]
    if not frames:
        return None
    last = frames[-1]
    return f"{Path(last[1]).name} line {last[2]}, in {last[3]}"


async def _stuck_message(client: Client, handle: WorkflowHandle[Any, Any], timeout: float) -> str:
    lines = [f"Workflow {handle.id} did not finish within {timeout:g} s."]
    try:
        desc = await asyncio.wait_for(handle.describe(), 3)
        raw = desc.raw_description
        if desc.status != WorkflowExecutionStatus.RUNNING:
            lines.append(f"Its status is {desc.status.name if desc.status else 'unknown'}.")
        for act in raw.pending_activities:
            line = f"Activity {act.activity_type.name} is on attempt {act.attempt}"
            if act.HasField("last_failure") and act.last_failure.message:
                line += f"; last failure: {act.last_failure.message}"
            lines.append(line + ".")
        queue = desc.task_queue
        pollers = await asyncio.wait_for(_pollers(client, queue), 3)
        if pollers == 0:
            lines.append(f"Hint: no worker is polling task queue {queue!r}: start one (course.start_worker(...)).")
        elif not raw.pending_activities:
            lines.append("Hint: it may be waiting on a timer, a signal or a child; check its history in the UI.")
    except Exception:
        lines.append("Hint: open it in the Temporal UI to see what it is waiting for.")
    return "\n".join(lines)


async def _pollers(client: Client, task_queue: str) -> int:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(resp.pollers)


# --------------------------------------------------------------------------- errors, briefly


def short_failure(err: BaseException) -> str:
    """``Type: message`` for an exception and its causes, one per line, innermost last."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}".rstrip(": "))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n  caused by ".join(parts)


def _render_short(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
    """IPython hook: course and workflow errors print as a few lines, not a 60-line traceback."""
    text = short_failure(value)
    if isinstance(value, WorkflowFailureError):
        text += "\nHint: the workflow failed (it did not hang). Read the innermost cause above."
    stb = [f"\x1b[0;31m{text}\x1b[0m"]
    shell._showtraceback(etype, value, stb)
    return stb


def _in_ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


# --------------------------------------------------------------------------- %%module


def write_module(scratch: Path, name: str, source: str) -> Any:
    """Write ``source`` as ``<scratch>/<name>.py`` and (re)import it fresh."""
    if not name.isidentifier():
        raise CourseError(f"%%module needs a Python module name, e.g. `%%module orders` (got {name!r}).")
    if _taken_elsewhere(name, scratch):
        raise CourseError(f"%%module {name}: `{name}` is already a Python module; pick another name.")
    path = scratch / f"{name}.py"
    path.write_text(source)
    # A rewrite within the same second can keep the size and mtime: drop bytecode so the new code is used.
    shutil.rmtree(scratch / "__pycache__", ignore_errors=True)
    importlib.invalidate_caches()
    linecache.checkcache(str(path))  # tracebacks and warnings quote the new source, not the old
    sys.modules.pop(name, None)
    try:
        return importlib.import_module(name)
    except SyntaxError as err:
        raise CourseError(f"SyntaxError in %%module {name}, line {err.lineno}: {err.msg}") from None
    except Exception as err:
        raise CourseError(f"%%module {name} failed to import: {short_failure(err)}") from None


def _in_scratch(module: Any, scratch: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).parent == scratch


def _taken_elsewhere(name: str, scratch: Path) -> bool:
    """True if ``name`` is a module outside the scratch dir: shadowing ``time`` or ``json`` would break the kernel."""
    if (module := sys.modules.get(name)) is not None:
        return not _in_scratch(module, scratch)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and (spec.origin is None or Path(spec.origin).parent != scratch)


def _register_magic(shell: Any, course: Course) -> None:
    def module(line: str, cell: str) -> None:
        name = line.strip()
        shell.user_ns[name] = write_module(course.scratch, name, cell)

    shell.register_magic_function(module, magic_kind="cell", magic_name="module")


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


async def connect(where: server.Target, timeout: float = 10.0) -> Client:
    try:
        return await server.connect(where, timeout)
    except Exception as err:
        raise CourseError(f"Could not connect to Temporal at {where.address}: {short_failure(err)}") from None


async def start(notebook: str, *, quiet: bool = False) -> Course:
    """Set up this kernel for a notebook: server (found or started), client, task queue, ``%%module``."""
    global _current
    if _current is not None:
        # Re-running the setup cell: keep the session, stop workers left from the earlier run.
        await _current.stop_all()
        _current.notebook = notebook
        course = _current
    else:
        quiet_sdk_logs()
        where = server.target()
        try:
            _, started = await asyncio.to_thread(server.ensure, where)
        except server.ServerError as err:
            raise CourseError(str(err)) from None
        client = await connect(where)
        scratch = Path(tempfile.mkdtemp(prefix="temporal-course-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.path.insert(0, str(scratch))
        course = Course(notebook=notebook, client=client, target=where, scratch=scratch)
        _current = course
        if not quiet:
            how = "started it" if started else "found it running"
            print(f"Temporal server at {where.address}, namespace {where.namespace!r}: {how}.")
    if (shell := _in_ipython()) is not None:
        _register_magic(shell, course)
        from temporalio.exceptions import TemporalError

        shell.set_custom_exc((CourseError, TemporalError, workflow.NondeterminismError), _render_short)
    if not quiet:
        if ui := course.target.ui_url:
            print(f"Temporal Web UI: {ui}/namespaces/{quote(course.target.namespace)}/workflows")
        print(f"This notebook's task queue: {course.task_queue}")
    return course


def current() -> Course:
    if _current is None:
        raise CourseError("Run the notebook's setup cell first (course = await runtime.start(...)).")
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
    "RunningWorker",
    "WorkflowStuck",
    "WorkflowTaskFailed",
    "current",
    "start",
]
