"""A hard limit for ``async def`` activities that never await: they would freeze the notebook for good.

An async activity runs on the kernel's event loop, the same loop that runs the learner's cells, the workers and
every bounded wait. An endless ``while True: ...`` (or ``time.sleep(600)``) inside one holds that loop: no
timeout can fire, an interrupt from JupyterLab is not enough, only a kernel restart helps.

:func:`watch` starts a daemon thread that notices when the loop has not run a callback for
:data:`STALL_LIMIT_S`. If the loop thread is then inside an activity (a frame called by the SDK's activity
runner), the thread raises :class:`~helpers.errors.ActivityBlockedLoop` inside that activity
(``PyThreadState_SetAsyncExc``): the attempt fails with a message naming the activity and the line it was at,
Temporal records the failure like any other, and the loop is free again. Nothing else is ever interrupted: a slow
cell of the learner's own is left alone.
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
TICK_S = 0.1
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
    threading.Thread(target=_run, args=(state,), name="course-loop-watchdog", daemon=True).start()


def incidents(loop: asyncio.AbstractEventLoop | None = None) -> list[Incident]:
    """Activities interrupted so far on ``loop``."""
    loop = loop or asyncio.get_running_loop()
    state = _watches.get(id(loop))
    return list(state.incidents) if state else []


def _run(state: _Watch) -> None:
    while not state.stop.is_set():
        time.sleep(TICK_S)
        if state.loop.is_closed():
            state.stop.set()
            return
        stalled = time.monotonic() - state.last_tick
        if stalled < STALL_LIMIT_S:
            continue
        frame = sys._current_frames().get(state.thread_id)
        found = _activity_frame(frame)
        if found is None:
            continue  # the loop is busy with something else (a learner's slow cell): not ours to stop
        activity, where = found
        _interrupt(state.thread_id, _blocked(activity, where, stalled))
        state.incidents.append(Incident(activity, where, stalled))
        state.last_tick = time.monotonic()  # give the loop a fresh period before judging it again


def _activity_frame(frame: FrameType | None) -> tuple[str, str] | None:
    """(activity function name, innermost user code line) if ``frame``'s stack runs inside an activity."""
    innermost_user: FrameType | None = None
    current = frame
    while current is not None:
        filename = current.f_code.co_filename
        if innermost_user is None and "temporalio" not in filename and "/lib/python" not in filename:
            innermost_user = current
        caller = current.f_back
        if (
            caller is not None
            and caller.f_code.co_name == _RUNNER_FUNCTION
            and _RUNNER_FILE in caller.f_code.co_filename
        ):
            where = innermost_user or current
            return current.f_code.co_name, f"{Path(where.f_code.co_filename).name} line {where.f_lineno}"
        current = caller
    return None


def _blocked(activity: str, where: str, seconds: float) -> type[ActivityBlockedLoop]:
    """A subclass of ActivityBlockedLoop whose no-argument constructor carries the message
    (``PyThreadState_SetAsyncExc`` raises a class, instantiated without arguments)."""
    message = (
        f"activity {activity} ran for {seconds:.0f} s without awaiting anything (at {where}), which freezes this "
        "notebook's worker; the course stopped this attempt"
    )

    def __init__(self: BaseException) -> None:
        BaseException.__init__(self, message)

    return type("ActivityBlockedLoop", (ActivityBlockedLoop,), {"__init__": __init__, "__module__": __name__})


def _interrupt(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


__all__ = ["STALL_LIMIT_S", "Incident", "incidents", "watch"]
