"""Pictures of what Temporal did: a run's timeline (workflow tasks, activities, timers, children)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timezone
from typing import Any

from temporalio.api.enums.v1 import EventType as E
from temporalio.client import WorkflowHistory

COLORS = {
    "workflow": "#d9d9d9",
    "workflow task": "#4c72b0",
    "activity": "#55a868",
    "failed": "#c44e52",
    "timer": "#dd8452",
    "child": "#8172b2",
    "compensation": "#937860",
}


# The part of an activity's bar before its last attempt started, when there were earlier attempts.
RETRIED_STYLE = {"facecolor": "white", "hatch": "////", "linewidth": 0.5}


@dataclass(frozen=True)
class Span:
    """One bar: ``row`` label, ``kind`` (a COLORS key), waiting from ``queued`` to ``start``, running to ``end``.

    ``retried``: an activity whose last attempt was not its first. The history records only that attempt's start,
    so ``queued`` to ``start`` covers the earlier attempts and the retry waits, not only time in the queue.
    """

    row: str
    kind: str
    queued: float
    start: float
    end: float
    label: str = ""
    retried: bool = False


def spans(history: WorkflowHistory) -> list[Span]:
    """The bars of a history, in seconds since the workflow started."""
    events = list(history.events)
    if not events:
        return []
    t0 = events[0].event_time.ToDatetime()

    def t(e: Any) -> float:
        return (e.event_time.ToDatetime() - t0).total_seconds()

    by_id = {e.event_id: e for e in events}
    out: list[Span] = [Span("workflow", "workflow", 0.0, 0.0, t(events[-1]), history.workflow_id)]
    for e in events:
        et = e.event_type
        if et == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED or et == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            a = (
                e.workflow_task_completed_event_attributes
                if et == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
                else e.workflow_task_failed_event_attributes
            )
            sched, started = by_id.get(a.scheduled_event_id), by_id.get(a.started_event_id)
            kind = "workflow task" if et == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED else "failed"
            if sched and started:
                out.append(Span("workflow tasks", kind, t(sched), t(started), t(e)))
        elif et in (
            E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            E.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            E.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
        ):
            attrs = {
                E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: e.activity_task_completed_event_attributes,
                E.EVENT_TYPE_ACTIVITY_TASK_FAILED: e.activity_task_failed_event_attributes,
                E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: e.activity_task_timed_out_event_attributes,
                E.EVENT_TYPE_ACTIVITY_TASK_CANCELED: e.activity_task_canceled_event_attributes,
            }[et]
            sched = by_id.get(attrs.scheduled_event_id)
            if sched is None:
                continue
            name = sched.activity_task_scheduled_event_attributes.activity_type.name
            started = by_id.get(getattr(attrs, "started_event_id", 0))
            attempts = started.activity_task_started_event_attributes.attempt if started else 1
            begin = t(started) if started else t(sched)
            kind = "activity" if et == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED else "failed"
            label = f"{attempts} attempts" if attempts > 1 else ""
            out.append(Span(f"activity {name}", kind, t(sched), begin, t(e), label, retried=attempts > 1))
        elif et in (E.EVENT_TYPE_TIMER_FIRED, E.EVENT_TYPE_TIMER_CANCELED):
            a = e.timer_fired_event_attributes if et == E.EVENT_TYPE_TIMER_FIRED else e.timer_canceled_event_attributes
            started = by_id.get(a.started_event_id)
            if started:
                out.append(Span("timers", "timer", t(started), t(started), t(e)))
        elif et in (
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
        ):
            a = (
                e.child_workflow_execution_completed_event_attributes
                if et == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED
                else e.child_workflow_execution_failed_event_attributes
            )
            init = by_id.get(a.initiated_event_id)
            started = by_id.get(a.started_event_id)
            if init:
                kind = "child" if et == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED else "failed"
                out.append(Span(f"child {a.workflow_type.name}", kind, t(init), t(started or init), t(e)))
    return _side_by_side(out)


def _side_by_side(bars: list[Span]) -> list[Span]:
    """Activities of one type that overlap in time (a fan-out) get a row each, ``activity fetch #2`` and so on;
    calls one after another keep sharing one row. (Bars come in the order they ended.)"""
    lanes: dict[str, list[float]] = {}  # row -> the end of the last bar in each of its lanes
    out = []
    for bar in bars:
        if not bar.row.startswith("activity "):
            out.append(bar)
            continue
        ends = lanes.setdefault(bar.row, [])
        lane = next((i for i, end in enumerate(ends) if end <= bar.queued), len(ends))
        ends[lane : lane + 1] = [bar.end]
        out.append(replace(bar, row=f"{bar.row} #{lane + 1}") if lane else bar)
    return out


QUEUED_STYLE = {"color": COLORS["workflow task"], "alpha": 0.3}  # any row's color, light
MARK_COLORS = ["#c44e52", "#dd8452", "#8172b2", "#937860"]


def draw(
    bars: Sequence[Span], *, title: str | None = None, ax: Any = None, marks: Mapping[str, float] | None = None
) -> Any:
    """Draw bars as a Gantt chart: light = waiting in a queue, solid = running, hatched = earlier attempts and
    retry waits of an activity that ran more than once. ``marks``: ``{label: seconds}`` drawn as dashed vertical
    lines (something that happened outside the history, e.g. the server was killed)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows: list[str] = []
    for s in bars:
        if s.row not in rows:
            rows.append(s.row)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.3))
    end = max((s.end for s in bars), default=1.0) or 1.0
    for s in bars:
        y = len(rows) - 1 - rows.index(s.row)
        color = COLORS.get(s.kind, "#999999")
        if s.start > s.queued and s.retried:
            ax.barh(y, s.start - s.queued, left=s.queued, height=0.5, **RETRIED_STYLE, edgecolor=color)
        elif s.start > s.queued:
            ax.barh(y, s.start - s.queued, left=s.queued, height=0.5, color=color, alpha=QUEUED_STYLE["alpha"])
        width = max(s.end - s.start, end * 0.004)  # instant events stay visible
        ax.barh(y, width, left=s.start, height=0.5, color=color, edgecolor="black", linewidth=0.3)
        if s.label and s.kind != "workflow":
            ax.text(s.end + end * 0.01, y, s.label, va="center", fontsize=8)
    mark_lines = []
    for i, (label, at) in enumerate((marks or {}).items()):
        color = MARK_COLORS[i % len(MARK_COLORS)]
        mark_lines.append(ax.axvline(at, color=color, linestyle="--", linewidth=1.2, label=f"{label} ({at:.2f} s)"))
        end = max(end, at)
    ax.set_yticks(range(len(rows)), list(reversed(rows)))
    ax.set_xlabel("seconds since the workflow started")
    ax.set_xlim(0, end * 1.12)
    kinds = [k for k in COLORS if any(s.kind == k for s in bars)]
    handles = [Patch(color=COLORS[k], label=k) for k in kinds]
    if any(not s.retried and s.start > s.queued for s in bars):
        handles.append(Patch(**QUEUED_STYLE, label="waiting in a queue\n(light bars)"))
    if any(s.retried and s.start > s.queued for s in bars):
        handles.append(Patch(**RETRIED_STYLE, edgecolor="#555555", label="earlier attempts /\nretry wait"))
    ax.legend(
        handles=handles + mark_lines,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def timeline(history: WorkflowHistory, *, title: str | None = None, marks: Mapping[str, float] | None = None) -> None:
    """Plot a run's timeline and show it (``plt.show()``: no stray text output in the notebook).

    ``marks``: ``{label: unix time}`` (``time.time()`` when it happened), drawn as vertical lines."""
    import matplotlib.pyplot as plt

    events = list(history.events)
    t0 = events[0].event_time.ToDatetime().replace(tzinfo=timezone.utc).timestamp() if events else 0.0
    at = {label: when - t0 for label, when in (marks or {}).items()}
    draw(spans(history), title=title or f"Timeline of {history.workflow_id}", marks=at)
    plt.tight_layout()
    plt.show()
