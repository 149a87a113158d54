"""Exercise checks: each prints one deterministic verdict line and never hangs or raises.

A check cell (tags ``check`` and ``ex-NN.k``) calls one function decorated with :func:`exercise`. The verdict
line starts with a symbol, the exercise id and one of three words the grader reads::

    ✅ 00.1 passed: …          ⏳ 00.1 not done yet: …          ❌ 00.1 not right yet: …

Lines carry no ids, times or addresses, so solutions' outputs are stable references for nbval.
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

from helpers import runtime

CHECK_TIMEOUT_S = 20.0

Status = Literal["passed", "not_done", "failed"]
WORDS: dict[Status, tuple[str, str]] = {
    "passed": ("✅", "passed"),
    "not_done": ("⏳", "not done yet"),
    "failed": ("❌", "not right yet"),
}
VERDICT_LINE = re.compile(r"^(✅|⏳|❌) (\d\d\.\d+) (passed|not done yet|not right yet): (.*)$")


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
    if isinstance(err, runtime.WorkflowTaskFailed | runtime.ActivityKeepsFailing):
        if err.failure.startswith("NotImplementedError"):
            text = err.failure.split(":", 1)[1].rsplit(" (", 1)[0]
            return Verdict(ex_id, "not_done", _not_done_text(text, ex_id))
        where = "your workflow code" if isinstance(err, runtime.WorkflowTaskFailed) else f"activity {err.activity}"
        return Verdict(ex_id, "failed", _with_hint(f"{where} raised {err.failure}.", err.failure))
    if isinstance(err, runtime.WorkflowStuck):
        return Verdict(ex_id, "failed", "your workflow did not finish in time; is it waiting on something?")
    if isinstance(err, asyncio.TimeoutError | TimeoutError):
        return Verdict(ex_id, "failed", f"the check gave up after {timeout:g} s; does your code wait forever?")
    text = runtime.short_failure(err).splitlines()[-1].replace("caused by ", "").strip()
    return Verdict(ex_id, "failed", _with_hint(f"running your code raised {text}", text))


def _with_hint(message: str, failure: str) -> str:
    hint = runtime.hint_for(failure)
    return f"{message} Hint: {hint}" if hint else message


T = TypeVar("T")


def exercise(ex_id: str, *, timeout: float = CHECK_TIMEOUT_S) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a check function (sync or async; raises NotDone/Wrong, returns a success note) into a check."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def check(*args: Any, **kwargs: Any) -> None:
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, timeout)
                verdict = Verdict(ex_id, "passed", result or "well done.")
            except Exception as err:  # a check never raises: every problem becomes a verdict
                verdict = verdict_for(ex_id, err, timeout)
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
