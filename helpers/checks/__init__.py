"""Exercise checks: each prints one deterministic verdict line and never hangs or raises.

A check cell (tags ``check`` and ``ex-NN.k``) calls one function decorated with :func:`exercise`. The verdict
line starts with a symbol, the exercise id and one of the words the grader reads::

    ✅ 00.1 passed: …          ⏳ 00.1 not done yet: …          ❌ 00.1 not right yet: …
    ⚠️ 00.1 could not be checked: …   (the Temporal server did not answer: infrastructure, not the learner)

Lines carry no ids, times or addresses, so solutions' outputs are stable references for nbval. A check runs the
learner's code on its own runs: afterwards ``course.last`` (what ``course.history()`` shows) is still the
learner's own last run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from helpers import errors, runtime, waits

CHECK_TIMEOUT_S = 20.0

Status = Literal["passed", "not_done", "failed", "unavailable"]
WORDS: dict[Status, tuple[str, str]] = {
    "passed": ("✅", "passed"),
    "not_done": ("⏳", "not done yet"),
    "failed": ("❌", "not right yet"),
    "unavailable": ("⚠️", "could not be checked"),
}
VERDICT_LINE = re.compile(r"^(✅|⏳|❌|⚠️) (\d\d\.\d+) (passed|not done yet|not right yet|could not be checked): (.*)$")
SERVER_DOWN = (
    "the Temporal server is not answering, so your code could not be run (this is not your mistake). Re-run the "
    "setup cell at the top of the notebook (it starts the course's server again), then this check."
)


class NotDone(Exception):
    """The learner has not written this part yet."""


class Wrong(Exception):
    """The learner's answer runs but is not right; the message is the hint."""


@dataclass(frozen=True)
class Verdict:
    exercise: str
    status: Status
    message: str

    def line(self) -> str:
        symbol, word = WORDS[self.status]
        return f"{symbol} {self.exercise} {word}: {self.message}"


def parse(line: str) -> Verdict | None:
    """Read a verdict line back (the grader uses this)."""
    m = VERDICT_LINE.match(line.strip())
    if not m:
        return None
    status = {word: s for s, (_, word) in WORDS.items()}[m[3]]
    return Verdict(m[2], status, m[4])


def _not_done_text(text: str, ex_id: str) -> str:
    # Stubs say "Exercise NN.k: <task>"; the verdict already names the exercise.
    return re.sub(rf"^Exercise {re.escape(ex_id)}:\s*", "", text.strip()) or "complete the exercise cell above."


def verdict_for(ex_id: str, err: BaseException, timeout: float) -> Verdict:
    """Map whatever a check raised to a verdict with a hint."""
    if isinstance(err, NotDone | NotImplementedError):
        return Verdict(ex_id, "not_done", _not_done_text(str(err), ex_id))
    if isinstance(err, Wrong):
        return Verdict(ex_id, "failed", str(err))
    if errors.is_unavailable(err):
        return Verdict(ex_id, "unavailable", SERVER_DOWN)
    if isinstance(err, errors.WorkflowTaskFailed | errors.ActivityKeepsFailing):
        if err.failure.startswith("NotImplementedError"):
            text = err.failure.split(":", 1)[1].rsplit(" (", 1)[0]
            return Verdict(ex_id, "not_done", _not_done_text(text, ex_id))
        where = "your workflow code" if isinstance(err, errors.WorkflowTaskFailed) else f"activity {err.activity}"
        return Verdict(ex_id, "failed", _with_hint(f"{where} raised {err.failure}.", err.failure))
    if isinstance(err, errors.WorkflowStuck):
        return Verdict(ex_id, "failed", _stuck_text(err))
    if isinstance(err, asyncio.TimeoutError | TimeoutError):
        return Verdict(ex_id, "failed", f"the check gave up after {timeout:g} s; does your code wait forever?")
    text = errors.short_failure(err).splitlines()[-1].replace("caused by ", "").strip()
    return Verdict(ex_id, "failed", _with_hint(f"running your code raised {text}", text))


def _stuck_text(err: errors.WorkflowStuck) -> str:
    """A run that did not finish: name what it was still waiting for (deterministic: no times or ids)."""
    if err.no_worker:
        return "no worker ran your workflow in time; is a worker registered for it?"
    blocked = [p for p in err.pending if p.last_failure and "ActivityBlockedLoop" in p.last_failure]
    if blocked:
        return _blocked_text(blocked[0].name)
    running = [p for p in err.pending if p.running]
    if running:
        act = running[0]
        return (
            f"activity {act.name} was still running when the check gave up (attempt {act.attempt}): an endless "
            "loop, or an await that never finishes? An activity must return (or raise) for the workflow to go on."
        )
    if err.pending:
        act = err.pending[0]
        failure = f" after failing with {act.last_failure}" if act.last_failure else ""
        return _with_hint(
            f"activity {act.name} was waiting for attempt {act.attempt}{failure} when the check gave up.",
            act.last_failure or "",
        )
    return "your workflow did not finish in time; is it waiting on something (a timer, a signal, a condition)?"


# Calls that do nothing unless awaited: a statement made of one of them alone is a forgotten `await`.
MUST_AWAIT = {"execute_activity", "execute_child_workflow", "sleep", "wait_condition", "execute_local_activity"}


def unawaited_calls_note(args: Sequence[Any]) -> str | None:
    """For the learner's modules among a check's arguments: the first line that calls e.g.
    ``workflow.execute_activity(...)`` as a statement of its own, without ``await`` (it schedules nothing)."""
    import ast
    from types import ModuleType

    modules = {a.__name__: a for a in args if isinstance(a, ModuleType)}
    modules |= {m.__name__: m for a in args if isinstance(a, type) and (m := inspect.getmodule(a)) is not None}
    for module in modules.values():
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            call = node.value if isinstance(node, ast.Expr) else None
            func = call.func if isinstance(call, ast.Call) else None
            if (
                isinstance(func, ast.Attribute)
                and func.attr in MUST_AWAIT
                and isinstance(func.value, ast.Name)
                and func.value.id in ("workflow", "asyncio")
            ):
                return (
                    f"Also: line {node.lineno} of %%module {module.__name__} calls {ast.unparse(func)}(...) "
                    "without `await`, so it never runs."
                )
    return None


def _blocked_text(activity: str) -> str:
    return _with_hint(
        f"activity {activity} never lets the worker breathe: it ran without awaiting anything until the course "
        "stopped it, attempt after attempt.",
        "ActivityBlockedLoop",
    )


def _incidents() -> list[Any]:
    from helpers import watchdog

    try:
        return watchdog.incidents()
    except RuntimeError:  # no running loop
        return []


async def _terminate(handles: Sequence[Any]) -> None:
    """End runs a check started and gave up on (bounded; runs that already ended are left alone)."""

    async def end(handle: Any) -> None:
        with contextlib.suppress(Exception):
            await handle.terminate(reason="course: the check ended")

    if handles:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(end(h) for h in handles)), 5)


def _with_hint(message: str, failure: str) -> str:
    hint = errors.hint_for(failure)
    return f"{message} Hint: {hint}" if hint else message


T = TypeVar("T")


def exercise(ex_id: str, *, timeout: float = CHECK_TIMEOUT_S) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a check function (sync or async; raises NotDone/Wrong, returns a success note) into a check."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def check(*args: Any, **kwargs: Any) -> None:
            course = runtime._current
            learners_last = course.last if course is not None else None
            started_before = len(course.started) if course is not None else 0
            blocked_before = len(_incidents())
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, timeout * waits.wait_scale())
                verdict = Verdict(ex_id, "passed", result or "well done.")
            except Exception as err:  # a check never raises: every problem becomes a verdict
                verdict = verdict_for(ex_id, err, timeout)
                if verdict.status == "failed" and (note := unawaited_calls_note(args)):
                    verdict = Verdict(ex_id, "failed", f"{verdict.message} {note}")
                blocked = _incidents()[blocked_before:]
                if blocked and verdict.status == "failed" and not isinstance(err, Wrong | errors.ActivityKeepsFailing):
                    verdict = Verdict(ex_id, "failed", _blocked_text(blocked[0].activity))
                if course is not None:  # runs of the check that are still going would go on without a worker
                    await _terminate(course.started[started_before:])
            finally:
                if course is not None:
                    course.last = learners_last  # the check's runs are not "the last run" for the learner
            print(verdict.line())

        check.exercise = ex_id  # type: ignore[attr-defined]
        return check

    return decorate


def require(value: T, what: str) -> T:
    """``value`` unless it is still the stub's ``...`` placeholder."""
    if value is Ellipsis:
        raise NotDone(what)
    return value


@contextlib.asynccontextmanager
async def worker_for(
    workflows: Sequence[type] = (), activities: Sequence[Callable[..., Any]] = (), *, purpose: str = "check"
) -> AsyncIterator[str]:
    """A worker on a fresh task queue for the duration of a check; yields the queue name."""
    course = runtime.current()
    queue = course.new_task_queue(f"{purpose}-{next(course._ids)}")
    await course.start_worker(workflows=workflows, activities=activities, task_queue=queue)
    try:
        yield queue
    finally:
        await course.stop_worker(queue)
