"""Heartbeats as the server sees them: a live progress bar read from the server, and a picture of a resume.

An activity's ``activity.heartbeat(details)`` does not go to the server at every call: the SDK sends the first one
at once and then at most one every 0.8 × ``heartbeat_timeout``, with the latest details. :class:`ProgressWatcher`
polls the run's ``describe()`` and records each heartbeat the server actually received (its details and
``last_heartbeat_time``): that is what a retry after a crash resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from helpers.backup import Execution
from helpers.history import payload_values

POLL_S = 0.1


@dataclass(frozen=True)
class ServerHeartbeat:
    """A heartbeat the server received: when (wall clock), for which attempt, with which details."""

    at: float
    attempt: int
    details: list[Any]


def last_done(details: Sequence[Any]) -> int:
    """Chunks done according to heartbeat details whose first value is the last finished chunk's index."""
    return int(details[0]) + 1 if details and isinstance(details[0], int | float) else 0


@dataclass
class ProgressWatcher:
    """Poll a run's pending activity every 0.1 s: record the heartbeats the server got and show them as a bar.

    ``async with ProgressWatcher(handle, total=30) as watch: ...`` polls while the block runs.
    """

    handle: Any
    total: int
    label: str = "done, as the server knows it"
    progress: Callable[[Sequence[Any]], int] = last_done
    heartbeats: list[ServerHeartbeat] = field(default_factory=list)
    attempts: dict[int, float] = field(default_factory=dict)  # attempt → when first seen (wall clock)
    _task: asyncio.Task[None] | None = None
    _bar: Any = None
    _text: Any = None

    async def __aenter__(self) -> ProgressWatcher:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self._sample()  # the final state
        self._show()

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._sample()
                self._show()
            await asyncio.sleep(POLL_S)

    async def _sample(self) -> None:
        desc = await asyncio.wait_for(self.handle.describe(), 3)
        for act in desc.raw_description.pending_activities:
            self.attempts.setdefault(act.attempt, time.time())
            if not act.HasField("last_heartbeat_time"):
                continue
            beat = ServerHeartbeat(
                act.last_heartbeat_time.ToNanoseconds() / 1e9,
                act.attempt,
                payload_values(act.heartbeat_details),
            )
            if not self.heartbeats or (self.heartbeats[-1].at, self.heartbeats[-1].details) != (beat.at, beat.details):
                self.heartbeats.append(beat)

    @property
    def done(self) -> int:
        return self.progress(self.heartbeats[-1].details) if self.heartbeats else 0

    # ---- the bar -------------------------------------------------------------------------------------------
    def _show(self) -> None:
        if self._bar is None:
            return
        self._bar.value = min(self.done, self.total)
        attempt = max(self.attempts, default=1)
        self._text.value = f"{self.done} of {self.total} {self.label} (attempt {attempt})"

    def summary(self) -> str:
        return f"Progress bar: how many of {self.total} are {self.label}, read from the server's heartbeat details."

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        import ipywidgets as w

        if self._bar is None:
            self._bar = w.IntProgress(value=0, min=0, max=self.total, bar_style="info")
            self._text = w.Label()
            self._show()
        bundle = dict(w.HBox([self._bar, self._text])._repr_mimebundle_())
        bundle["text/plain"] = self.summary()
        return bundle


def plot_resume(
    executions: Sequence[Execution],
    heartbeats: Sequence[ServerHeartbeat],
    *,
    killed_at: float | None = None,
    heartbeat_timeout: float | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """Each chunk as a dot (time, chunk), coloured by attempt; the heartbeats the server received as crosses;
    with ``heartbeat_timeout``, the silence after attempt 1's last heartbeat that made the server give up on it."""
    import matplotlib.pyplot as plt

    show = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4))
    t0 = min([e.at - 0.1 for e in executions] + [h.at for h in heartbeats] or [0.0])
    colors = ["#4c72b0", "#55a868", "#8172b2", "#dd8452"]
    for attempt in sorted({e.attempt for e in executions}):
        mine = [e for e in executions if e.attempt == attempt]
        ax.plot(
            [e.at - t0 for e in mine],
            [e.chunk for e in mine],
            "o",
            markersize=5,
            color=colors[(attempt - 1) % len(colors)],
            label=f"chunk done by attempt {attempt}",
        )
    if heartbeats:
        ax.plot(
            [h.at - t0 for h in heartbeats],
            [last_done(h.details) - 1 for h in heartbeats],
            "x",
            markersize=11,
            markeredgewidth=2.2,
            color="black",
            label="heartbeat the server received\n(its details: the last chunk done)",
        )
    if killed_at is not None:
        ax.axvline(killed_at - t0, color="#c44e52", linestyle="--", linewidth=1.2, label="worker process killed")
    first = [h for h in heartbeats if h.attempt == 1]
    if heartbeat_timeout is not None and first:
        last, y = first[-1].at - t0, last_done(first[-1].details) - 1
        ax.annotate(
            "",
            xy=(last, y - 3),
            xytext=(last + heartbeat_timeout, y - 3),
            arrowprops={"arrowstyle": "<->", "color": "#dd8452", "linewidth": 1.6},
        )
        ax.text(
            last + heartbeat_timeout / 2,
            y - 3.6,
            f"{heartbeat_timeout:g} s without a heartbeat:\nheartbeat timeout, retry",
            ha="center",
            va="top",
            fontsize=8,
            color="#dd8452",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        )
    twice = redone(executions)
    if twice:
        ax.axhspan(min(twice) - 0.5, max(twice) + 0.5, color="#c44e52", alpha=0.08, label="chunks done twice")
    ax.set_xlabel("seconds since the first chunk started")
    ax.set_ylabel("chunk")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    if show:
        plt.tight_layout()
        plt.show()  # and return nothing: a returned Axes would print its repr under the picture
        return None
    return ax


def redone(executions: Sequence[Execution]) -> list[int]:
    """Chunks that ran more than once, in order."""
    runs = Counter(e.chunk for e in executions)
    return sorted(chunk for chunk, n in runs.items() if n > 1)
