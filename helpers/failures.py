"""What a workflow receives when an activity fails, in one line.

A failed activity reaches workflow code as an ``ActivityError`` (with a ``retry_state``: why Temporal stopped
retrying) whose ``cause`` says what happened: an ``ApplicationError`` the activity raised (its ``type``, whether it
was ``non_retryable``, its ``details``), a ``TimeoutError`` (which of the four timeouts), a ``CancelledError``.
:func:`describe` writes that chain as ``ActivityError(TIMEOUT) ← TimeoutError(SCHEDULE_TO_START)``. It only reads
attributes, so workflow code may call it (import it with ``workflow.unsafe.imports_passed_through()``).
"""

from __future__ import annotations

from typing import Any

from temporalio import exceptions


def _one(err: BaseException) -> str:
    name = type(err).__name__
    if isinstance(err, exceptions.ActivityError | exceptions.ChildWorkflowError):
        return f"{name}({err.retry_state.name if err.retry_state is not None else '?'})"
    if isinstance(err, exceptions.TimeoutError):
        return f"{name}({err.type.name if err.type is not None else '?'})"
    if isinstance(err, exceptions.ApplicationError):
        parts = [err.type or "no type"]
        if err.non_retryable:
            parts.append("non_retryable")
        if err.next_retry_delay is not None:
            parts.append(f"next_retry_delay={err.next_retry_delay.total_seconds():g}s")
        if err.details:
            parts.append("details=" + ", ".join(repr(d) for d in err.details))
        return f"{name}({', '.join(parts)})"
    return name


def chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes (Temporal's ``.cause``), outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in out:
        out.append(current)
        current = getattr(current, "cause", None) or current.__cause__
    return out


def describe(err: BaseException, *, message: bool = True) -> str:
    """``ActivityError(NON_RETRYABLE_FAILURE) ← ApplicationError(CardDeclined, non_retryable): insufficient funds``.

    The message is the innermost error's own text (without the ``Type:`` prefix ``str(ApplicationError)`` adds).
    """
    errors = chain(err)
    text = " ← ".join(_one(e) for e in errors)
    if message:
        inner = errors[-1]
        msg = getattr(inner, "message", None) or str(inner)
        if msg:
            text += f": {msg}"
    return text


def retry_state(err: Any) -> str | None:
    """The ``retry_state`` name of an ``ActivityError`` (None for anything else)."""
    state = getattr(err, "retry_state", None)
    return state.name if state is not None else None
