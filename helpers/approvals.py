"""Approvals that wait for a person: their timeline, drawn from histories, and Approve / Reject buttons.

:func:`timeline` draws one row per approval run, in **days** since the request (``day`` = how many seconds a day
lasts: 86,400 in production and in the time-skipping test server, one second in a live demo), read from the run's
history alone: every message the workflow sent (its ``notify`` activity: "please approve", the reminder, the
escalation, the outcome), every deadline it waited on (its timers: fired when nobody answered in time, cancelled
when the decision came first, labelled with their ``timeout_summary``), and the decision it received (the
``decide`` signal). The same picture drawn from a run on the dev server in seconds and from one in the
time-skipping server in days looks the same: that is the point.

:class:`DecisionButtons` sends the real signal when clicked. Nothing needs clicking: a notebook's default path
decides by code, and the buttons' plain-text form is a fixed sentence (what nbval compares).
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType as E
from temporalio.client import WorkflowHistory

from helpers.errors import short_failure
from helpers.history import payload_values
from helpers.widgets import TextFallback

COLORS = {
    "waiting": "#d9d9d9",
    "fired": "#dd8452",
    "cancelled": "#f3d9c6",
    "sent": "#4c72b0",
    "approved": "#55a868",
    "rejected": "#c44e52",
}


@dataclass(frozen=True)
class Deadline:
    """A timer the workflow waited on, in days since the request."""

    start: float
    end: float
    label: str
    fired: bool  # False: cancelled, the decision came first


@dataclass(frozen=True)
class Mark:
    """Something that happened at one moment: a message sent, a decision received."""

    day: float
    kind: str  # "sent" | "approved" | "rejected"
    label: str


@dataclass
class ApprovalLife:
    """One approval run, read from its history."""

    end: float
    outcome: str
    deadlines: list[Deadline] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


def _summary(event: Any) -> str:
    """A timer's ``timeout_summary`` (what the deadline is for), if the workflow gave one."""
    if event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
        try:
            return str(json.loads(event.user_metadata.summary.data))
        except (ValueError, UnicodeDecodeError):
            pass
    return "deadline"


def life(history: WorkflowHistory, *, day: float, notify: str = "notify", decide: str = "decide") -> ApprovalLife:
    """Read an approval run's history: its messages (activity ``notify``: ``(ref, to, subject)``), decisions
    (signal ``decide``: ``{"by": ..., "approved": ...}``), deadlines (timers) and outcome, in days."""
    events = list(history.events)
    t0 = events[0].event_time.ToDatetime()

    def at(event: Any) -> float:
        return (event.event_time.ToDatetime() - t0).total_seconds() / day

    timers: dict[int, tuple[float, str]] = {}
    result = ApprovalLife(end=at(events[-1]), outcome="(still waiting)")
    for e in events:
        t = e.event_type
        if t == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            args = payload_values(a.input)
            if a.activity_type.name == notify and len(args) >= 3:
                result.marks.append(Mark(at(e), "sent", f"{args[2]} → {args[1]}"))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            a = e.workflow_execution_signaled_event_attributes
            args = payload_values(a.input)
            if a.signal_name == decide and args and isinstance(args[0], dict):
                approved = bool(args[0].get("approved"))
                verb = "approved" if approved else "rejected"
                result.marks.append(Mark(at(e), verb, f"{verb} by {args[0].get('by', '?')}"))
        elif t == E.EVENT_TYPE_TIMER_STARTED:
            timers[e.event_id] = (at(e), _summary(e))
        elif t in (E.EVENT_TYPE_TIMER_FIRED, E.EVENT_TYPE_TIMER_CANCELED):
            fired = t == E.EVENT_TYPE_TIMER_FIRED
            a = e.timer_fired_event_attributes if fired else e.timer_canceled_event_attributes
            if a.started_event_id in timers:
                start, label = timers.pop(a.started_event_id)
                result.deadlines.append(Deadline(start, at(e), label, fired))
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            values = payload_values(e.workflow_execution_completed_event_attributes.result)
            result.outcome = str(values[0]) if values else ""
        elif t == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            result.outcome = "failed: " + e.workflow_execution_failed_event_attributes.failure.message
    return result


def timeline_figure(runs: Mapping[str, WorkflowHistory], *, day: float, title: str, unit: str = "days") -> Any:
    """The picture (a matplotlib Figure): one row per run, x in ``unit`` (``day`` seconds each) since the request."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lives = {label: life(h, day=day) for label, h in runs.items()}
    height = 0.95 * len(lives) + 1.5
    fig, ax = plt.subplots(figsize=(10, height))
    end = max((lf.end for lf in lives.values()), default=1.0) or 1.0
    for row, lf in enumerate(lives.values()):
        y = len(lives) - 1 - row
        ax.barh(y, lf.end, left=0, height=0.3, color=COLORS["waiting"], zorder=1)
        for d in lf.deadlines:
            style = {"color": COLORS["fired"]} if d.fired else {"color": COLORS["cancelled"], "hatch": "///"}
            ax.barh(y - 0.27, d.end - d.start, left=d.start, height=0.12, edgecolor="white", zorder=2, **style)
            if d.fired:
                ax.text((d.start + d.end) / 2, y - 0.42, d.label, ha="center", va="center", fontsize=7, color="#8a4b1f")
        last_label = None  # messages close together get their names one above the other
        for m in lf.marks:
            if m.kind == "sent":
                ax.plot(m.day, y + 0.24, marker="v", color=COLORS["sent"], markersize=7, zorder=3)
                crowded = last_label is not None and m.day - last_label[0] < end * 0.04 and last_label[1] < 0.5
                lift = 0.53 if crowded else 0.4
                ax.text(m.day, y + lift, m.label.rsplit(" → ", 1)[-1], ha="center", va="center", fontsize=7.5)
                last_label = (m.day, lift)
            else:
                marker = "P" if m.kind == "approved" else "X"
                ax.plot(m.day, y, marker=marker, color=COLORS[m.kind], markersize=11, zorder=4)
        ax.text(lf.end + end * 0.035, y, lf.outcome, ha="left", va="center", fontsize=8.5, fontweight="bold")
    ax.set_yticks(range(len(lives)), list(reversed(list(lives))))
    ax.set_ylim(-0.6, len(lives) - 0.35)
    ax.set_xlim(-end * 0.02, end * 1.42)
    ax.set_xlabel(f"{unit} since the request was made")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [
        Patch(color=COLORS["waiting"], label="waiting for a decision"),
        Patch(color=COLORS["fired"], label="deadline passed (timer fired)"),
        Patch(facecolor=COLORS["cancelled"], hatch="///", edgecolor="white", label="deadline beaten (timer cancelled)"),
        Line2D([], [], marker="v", color=COLORS["sent"], linestyle="", label="message sent (to whom)"),
        Line2D([], [], marker="P", color=COLORS["approved"], linestyle="", ms=9, label="approved (signal)"),
        Line2D([], [], marker="X", color=COLORS["rejected"], linestyle="", ms=9, label="rejected (signal)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.62 / height, 1, 1))
    return fig


def timeline(runs: Mapping[str, WorkflowHistory], *, day: float, title: str, unit: str = "days") -> None:
    """Draw :func:`timeline_figure` and show it (no stray text output)."""
    import matplotlib.pyplot as plt

    timeline_figure(runs, day=day, title=title, unit=unit)
    plt.show()


# --------------------------------------------------------------------------- the buttons


class DecisionButtons(TextFallback):
    """Approve / Reject buttons: a click calls ``send(approved)``, which sends the real signal.

    ``sent`` is None until a button was clicked (then True or False): the notebook's next cell decides by code
    only if nobody clicked.
    """

    def __init__(self, send: Callable[[bool], Awaitable[Any]], *, who: str) -> None:
        self._send = send
        self.who = who
        self.sent: bool | None = None
        self._widget: Any = None
        self._output: Any = None
        self._buttons: list[Any] = []
        self._task: asyncio.Task[Any] | None = None

    def summary(self) -> str:
        return (
            f"Approve / Reject buttons: a click sends the decide signal to the waiting run, as {self.who}. "
            "Nobody clicking (as in a headless run)? The next cell decides by code."
        )

    def __repr__(self) -> str:
        return self.summary()

    async def click(self, approved: bool) -> None:
        """What a button does (callable from code too): send the decision once."""
        if self.sent is not None:
            return
        self.sent = approved
        for button in self._buttons:
            button.disabled = True
        try:
            await self._send(approved)
            text = f"Sent: {'approved' if approved else 'rejected'} by {self.who} (the decide signal)."
        except Exception as err:  # shown where the learner looks, not lost in a background task
            text = f"Could not send: {short_failure(err).splitlines()[-1]}"
        if self._output is not None:
            self._output.value = f"<span>{html.escape(text)}</span>"

    def _clicked(self, approved: bool) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.click(approved))

    def _build(self) -> Any:
        import ipywidgets as w

        approve = w.Button(description="Approve", icon="check", button_style="success")
        reject = w.Button(description="Reject", icon="times", button_style="danger")
        approve.on_click(lambda _b: self._clicked(True))
        reject.on_click(lambda _b: self._clicked(False))
        self._buttons = [approve, reject]
        self._output = w.HTML(f"<span>Decide as {html.escape(self.who)}:</span>")
        return w.VBox([self._output, w.HBox(self._buttons)])


__all__ = ["ApprovalLife", "Deadline", "DecisionButtons", "Mark", "life", "timeline", "timeline_figure"]
