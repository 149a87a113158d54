"""What can go wrong, said briefly: the course's exceptions, their hints, and failure texts in one line.

Every other module imports these (nothing here imports the rest of the course), so a worker process, a check and
the kernel all name the same problem the same way. A :class:`CourseError` is shown to the learner as a few lines
with a hint, never as a traceback.

Two families must never be confused: the learner's code is wrong (``WorkflowTaskFailed``, ``ActivityKeepsFailing``,
``WorkflowStuck``, ``ActivityBlockedLoop``), or the infrastructure is (``ServerNotAnswering``): a check reports the
second as "could not be checked", never as the learner's mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True)
class PendingActivity:
    """An activity the server is still waiting for when a wait gives up."""

    name: str
    attempt: int
    running: bool  # an attempt has started (a worker took it) and not finished
    running_for: float | None  # seconds since that attempt started, if known
    last_failure: str | None

    def describe(self) -> str:
        if self.running:
            since = f" for {self.running_for:.0f} s" if self.running_for is not None else ""
            text = f"Activity {self.name} is still running{since} (attempt {self.attempt})"
        else:
            text = f"Activity {self.name} is waiting for attempt {self.attempt}"
        return text + (f"; last failure: {self.last_failure}" if self.last_failure else "")


class WorkflowStuck(CourseError):
    """The workflow did not finish within the wait's bound; ``pending`` says what it still waits for."""

    def __init__(self, message: str, *, pending: tuple[PendingActivity, ...] = (), no_worker: bool = False) -> None:
        super().__init__(message)
        self.pending = pending
        self.no_worker = no_worker


class ServerNotAnswering(CourseError):
    """The Temporal server does not answer: infrastructure, not the learner's code."""


class ActivityBlockedLoop(BaseException):
    """Raised *inside* an ``async def`` activity that kept this kernel's event loop busy for too long.

    A ``BaseException``, like ``asyncio.CancelledError``, so that a learner's ``except Exception`` inside the loop
    cannot swallow it. :mod:`helpers.watchdog` raises it (a subclass carrying the message; see there).
    """


def is_unavailable(err: BaseException) -> bool:
    """True if ``err`` (or a cause) says the server could not be reached, as opposed to a failure of the code."""
    from temporalio.service import RPCError, RPCStatusCode

    current: BaseException | None = err
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ServerNotAnswering):
            return True
        if isinstance(current, RPCError) and current.status in (
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
        ):
            return True
        if isinstance(current, RuntimeError) and str(current).startswith("Failed client connect"):
            return True
        if isinstance(current, ConnectionError):
            return True
        current = current.__cause__ or current.__context__
    return False


def server_not_answering(address: str, *, course_server: bool = True) -> ServerNotAnswering:
    """The error for a server that does not answer. ``course_server=False``: a server the notebook started itself
    (a throwaway demo server), which the setup cell does not bring back."""
    if course_server:
        hint = (
            "re-run the setup cell at the top of the notebook: it starts the course's local server again and "
            "reconnects (or run `make server-start` in a terminal). On a workshop's server, tell your instructor."
        )
    else:
        hint = (
            "this is a server the notebook started itself (a throwaway demo server, stopped or killed since): "
            "re-run the cell that starts it."
        )
    return ServerNotAnswering(
        f"The Temporal server at {address} is not answering (stopped, or still starting?). "
        f"This is not a problem with your code.\nHint: {hint}"
    )


# --------------------------------------------------------------------------- hints

SANDBOX_FIXES = {
    "time.sleep": "`await workflow.sleep(...)` (or asyncio.sleep) instead of time.sleep",
    "datetime": "workflow.now() instead of datetime.now()",
    "random": "workflow.random() instead of the random module",
    "uuid": "workflow.uuid4() instead of uuid.uuid4()",
    "time.": "workflow.now() or workflow.time() instead of the time module",
}
_CANNOT_ACCESS = re.compile(r"Cannot access (\S+?)(?:\.__call__)? from inside a workflow")


def sandbox_hint(failure: str) -> str | None:
    """For a RestrictedWorkflowAccessError text: what was blocked and what to use instead."""
    m = _CANNOT_ACCESS.search(failure)
    if m is None:
        return None
    blocked = m[1]
    fix = next((f for key, f in SANDBOX_FIXES.items() if blocked.startswith(key)), None)
    text = f"the sandbox stopped your workflow when it called {blocked}()"
    return f"{text}: use {fix}." if fix else f"{text}: move that call into an activity."


# The SDK's own advice under a sandbox error; right for a deterministic helper module, wrong for a clock or a
# random number, which stay nondeterministic however they are imported.
PASS_THROUGH_ADVICE = "mark the import as pass through"


def hint_for(failure: str) -> str | None:
    """A hint for failure texts learners meet often."""
    if (sandbox := sandbox_hint(failure)) is not None:
        if PASS_THROUGH_ADVICE in failure:
            sandbox += (
                " (Not the SDK's 'mark the import as pass through': that is for modules whose code is deterministic; "
                "this call gives another answer on replay however it is imported.)"
            )
        return sandbox[0].upper() + sandbox[1:]
    if "ActivityBlockedLoop" in failure:
        return (
            "inside `async def`, a loop that never awaits (or a blocking call such as time.sleep) freezes the "
            "worker and this notebook. Await something in the loop (`await asyncio.sleep(...)`), end the loop, or "
            "make the activity a plain `def` (it then runs in a thread)."
        )
    if "coroutine" in failure:
        return "did you forget `await` (e.g. before workflow.execute_activity(...))?"
    if "TMPRL1101" in failure:
        return (
            "your workflow ran for over 2 s without awaiting anything: an endless loop, or a blocking call "
            "(time.sleep, I/O)? Use `await workflow.sleep(...)`, and put blocking work in an activity."
        )
    if "is not registered on this worker" in failure:
        return "start the worker with every workflow and activity it must run (course.start_worker(...))."
    if "Failed decoding arguments" in failure:
        return (
            "the activity could not read the arguments it was given: does each one have the type its signature "
            "says (e.g. a number, not a text like f'{amount:.2f}')?"
        )
    if "StartToClose timeout" in failure:
        return (
            "an attempt ran longer than its start_to_close_timeout and was given up: does the activity wait for "
            "something that never comes (an endless loop, an await that never finishes)?"
        )
    return None


def _without_backtrace(text: str) -> str:
    """The SDK's core errors can carry a Rust backtrace of dozens of frames: keep the message only."""
    return text.split("\n\nStack backtrace:")[0].split("\nStack backtrace:")[0].rstrip()


def short_failure(err: BaseException) -> str:
    """``Type: message`` for an exception and its causes, one per line, innermost last."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(_without_backtrace(f"{type(current).__name__}: {current}".rstrip(": ")))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n  caused by ".join(parts)


def failure_text(failure: Any) -> str:
    """A Temporal ``Failure`` proto as ``Type: message (file.py line N, in fn)``."""
    kind = failure.application_failure_info.type if failure.HasField("application_failure_info") else ""
    message = failure.message
    where = user_frame(failure.stack_trace)
    text = f"{kind}: {message}" if kind and not message.startswith(kind) else message
    return f"{text} ({where})" if where else text


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def user_frame(stack: str) -> str | None:
    """The innermost stack frame outside temporalio / the stdlib, as ``file.py line N, in fn``."""
    frames = [
        m
        for m in _FRAME.finditer(stack or "")
        if "temporalio" not in m[1]
        and "/lib/python" not in m[1]
        and not m[1].startswith("<")  # <string>, <frozen …>
        and not m[1].endswith(("helpers/watchdog.py", "helpers/kernel.py"))  # the course's own machinery
    ]
    if not frames:
        return None
    last = frames[-1]
    return f"{Path(last[1]).name} line {last[2]}, in {last[3]}"


__all__ = [
    "ActivityBlockedLoop",
    "ActivityKeepsFailing",
    "CourseError",
    "PendingActivity",
    "ServerNotAnswering",
    "WorkflowStuck",
    "WorkflowTaskFailed",
    "failure_text",
    "hint_for",
    "is_unavailable",
    "sandbox_hint",
    "server_not_answering",
    "short_failure",
    "user_frame",
]
