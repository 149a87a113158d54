"""A hard limit for ``async def`` activities that never await: they would freeze the notebook for good.

An async activity runs on the kernel's event loop, the same loop that runs the learner's cells, the workers and
every bounded wait. An endless ``while True: ...`` (or ``time.sleep(600)``) inside one holds that loop: no
timeout can fire, an interrupt from JupyterLab is not enough, only a kernel restart helps.

:func:`watch` starts a daemon thread that notices when the loop has not run a callback for
:data:`STALL_LIMIT_S`. If the loop thread is then inside an activity (a frame called by the SDK's activity
runner), the thread raises :class:`~helpers.errors.ActivityBlockedLoop` inside that activity
(``PyThreadState_SetAsyncExc``): the attempt fails with a message naming the activity and the line it was at,
Temporal records the failure like any other, and the loop is free again. Nothing else is ever interrupted: a slow
cell of the learner's own is left alone. An activity that blocked once is stopped sooner the next time
(:data:`REPEAT_LIMIT_S`): a check that runs it fifteen times must not freeze the notebook fifteen times as long.

Such an exception only lands when Python code runs, and ``time.sleep(30)`` is one C call. So on a watched loop's
thread ``time.sleep`` sleeps in short slices (the same total), and the interruption lands within a slice.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from helpers.errors import ActivityBlockedLoop

STALL_LIMIT_S = 3.0
REPEAT_LIMIT_S = 0.5  # for an activity function that blocked the loop before
TICK_S = 0.1
SLEEP_SLICE_S = 0.05
# The SDK's frame that calls an activity function; the frame it calls is the learner's activity.
_RUNNER_FILE = str(Path("temporalio") / "worker" / "_activity.py")
_RUNNER_FUNCTION = "execute_activity"


@dataclass(frozen=True)
class Incident:
    """One interruption: which activity, where it was, after how long."""

    activity: str
    where: str
    seconds: float


@dataclass
class _Watch:
    loop: asyncio.AbstractEventLoop
    thread_id: int
    last_tick: float
    incidents: list[Incident]
    stop: threading.Event


_watches: dict[int, _Watch] = {}  # id(loop) -> watch
_lock = threading.Lock()
_offenders: set[str] = set()  # activity functions that blocked a loop (file:name)
_real_sleep = time.sleep


def _sliced_sleep(seconds: float) -> None:
    """``time.sleep``, in slices on a watched loop's thread so that an interruption can land in between."""
    if not any(w.thread_id == threading.get_ident() and not w.stop.is_set() for w in _watches.values()):
        return _real_sleep(seconds)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        _real_sleep(min(SLEEP_SLICE_S, left))
    return None


def watch(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Watch ``loop`` (default: the running one) from a daemon thread; idempotent per loop."""
    loop = loop or asyncio.get_running_loop()
    with _lock:
        if id(loop) in _watches and not _watches[id(loop)].stop.is_set():
            return
        state = _Watch(loop, threading.get_ident(), time.monotonic(), [], threading.Event())
        _watches[id(loop)] = state

    def tick() -> None:
        state.last_tick = time.monotonic()
        if not state.stop.is_set() and not loop.is_closed():
            loop.call_later(TICK_S, tick)

    loop.call_soon(tick)
    time.sleep = _sliced_sleep  # type: ignore[assignment]  # only changes anything on a watched loop's thread
    threading.Thread(target=_run, args=(state,), name="course-loop-watchdog", daemon=True).start()


def incidents(loop: asyncio.AbstractEventLoop | None = None) -> list[Incident]:
    """Activities interrupted so far on ``loop``."""
    loop = loop or asyncio.get_running_loop()
    state = _watches.get(id(loop))
    return list(state.incidents) if state else []


def _run(state: _Watch) -> None:
    while not state.stop.is_set():
        _real_sleep(TICK_S)
        if state.loop.is_closed():
            state.stop.set()
            return
        stalled = time.monotonic() - state.last_tick
        if stalled < min(STALL_LIMIT_S, REPEAT_LIMIT_S if _offenders else STALL_LIMIT_S):
            continue
        frame = sys._current_frames().get(state.thread_id)
        found = _activity_frame(frame)
        if found is None:
            continue  # the loop is busy with something else (a learner's slow cell): not ours to stop
        activity, where, key = found
        if stalled < STALL_LIMIT_S and key not in _offenders:
            continue  # a repeat offender is stopped sooner; any other activity gets the full limit
        _interrupt(state.thread_id, _blocked(activity, where))
        _offenders.add(key)
        state.incidents.append(Incident(activity, where, stalled))
        state.last_tick = time.monotonic()  # give the loop a fresh period before judging it again


def _activity_frame(frame: FrameType | None) -> tuple[str, str, str] | None:
    """(activity function name, innermost user code line, a key for the function) if ``frame``'s stack runs
    inside an activity."""
    innermost_user: FrameType | None = None
    current = frame
    while current is not None:
        filename = current.f_code.co_filename
        ours = "temporalio" in filename or "/lib/python" in filename or filename == __file__  # (sliced sleep)
        if innermost_user is None and not ours:
            innermost_user = current
        caller = current.f_back
        if (
            caller is not None
            and caller.f_code.co_name == _RUNNER_FUNCTION
            and _RUNNER_FILE in caller.f_code.co_filename
        ):
            where = innermost_user or current
            key = f"{current.f_code.co_filename}:{current.f_code.co_name}"
            sleeping = frame is not None and frame.f_code is _sliced_sleep.__code__
            place = f"{Path(where.f_code.co_filename).name} line {where.f_lineno}"
            place += ", in time.sleep" if sleeping else ""
            return current.f_code.co_name, place, key
        current = caller
    return None


def _blocked(activity: str, where: str) -> type[ActivityBlockedLoop]:
    """A subclass of ActivityBlockedLoop whose no-argument constructor carries the message
    (``PyThreadState_SetAsyncExc`` raises a class, instantiated without arguments)."""
    message = (
        f"activity {activity} kept running without awaiting anything (at {where}), which freezes this "
        "notebook's worker; the course stopped this attempt"
    )

    def __init__(self: BaseException) -> None:
        BaseException.__init__(self, message)

    return type("ActivityBlockedLoop", (ActivityBlockedLoop,), {"__init__": __init__, "__module__": __name__})


def _interrupt(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


__all__ = ["STALL_LIMIT_S", "Incident", "incidents", "watch"]
