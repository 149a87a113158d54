"""A run's event history, compactly: one row per event with the attributes a learner needs.

The table renders as HTML in JupyterLab and as aligned text elsewhere (nbval compares both). Times are
seconds since the workflow started, written ``+1.234 s`` so the sanitize file can mask them.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

MAX_VALUE_CHARS = 48


def event_name(event: HistoryEvent) -> str:
    """``EVENT_TYPE_ACTIVITY_TASK_SCHEDULED`` → ``ActivityTaskScheduled``."""
    raw = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(part.capitalize() for part in raw.split("_"))


def payload_values(payloads: Any) -> list[Any]:
    """The values of some payloads in a history event (an input, a result, heartbeat details), decoded as the
    default converter encodes them (JSON); ``None`` for one that is not JSON."""
    values = []
    for p in getattr(payloads, "payloads", []):
        try:
            values.append(json.loads(p.data))
        except (ValueError, UnicodeDecodeError):
            values.append(None)
    return values


def payload_text(payloads: Any) -> str:
    """Payloads as short JSON text (the default converter stores JSON); binary shown by size."""
    parts = []
    for p in getattr(payloads, "payloads", []):
        try:
            parts.append(json.dumps(json.loads(p.data), ensure_ascii=False))
        except (ValueError, UnicodeDecodeError):
            parts.append(f"<{len(p.data)} bytes>")
    text = ", ".join(parts)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _duration(d: Any) -> str:
    return f"{d.ToTimedelta().total_seconds():g}s"


def details(event: HistoryEvent, names: dict[int, str]) -> str:
    """The few attributes of ``event`` that tell its story."""
    t = event.event_type
    E = EventType
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        a = event.workflow_execution_started_event_attributes
        return f"{a.workflow_type.name}({payload_text(a.input)})"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        return f"result {payload_text(event.workflow_execution_completed_event_attributes.result)}"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        return f"failure: {event.workflow_execution_failed_event_attributes.failure.message}"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        return f"next input {payload_text(event.workflow_execution_continued_as_new_event_attributes.input)}"
    if t == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
        a = event.workflow_task_failed_event_attributes
        return f"{a.failure.message}"
    if t == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        a = event.activity_task_scheduled_event_attributes
        return f"{a.activity_type.name}({payload_text(a.input)})"
    if t == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
        a = event.activity_task_started_event_attributes
        return f"{names.get(a.scheduled_event_id, '')} attempt {a.attempt}"
    if t == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        a = event.activity_task_completed_event_attributes
        return f"{names.get(a.scheduled_event_id, '')} → {payload_text(a.result)}"
    if t == E.EVENT_TYPE_ACTIVITY_TASK_FAILED:
        a = event.activity_task_failed_event_attributes
        return f"{names.get(a.scheduled_event_id, '')}: {a.failure.message}"
    if t == E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
        a = event.activity_task_timed_out_event_attributes
        return f"{names.get(a.scheduled_event_id, '')}: {a.failure.message}"
    if t == E.EVENT_TYPE_TIMER_STARTED:
        return f"sleep {_duration(event.timer_started_event_attributes.start_to_fire_timeout)}"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
        a = event.workflow_execution_signaled_event_attributes
        return f"{a.signal_name}({payload_text(a.input)})"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        return f"{request.input.name}({payload_text(request.input.args)})"
    if t == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        outcome = event.workflow_execution_update_completed_event_attributes.outcome
        if outcome.HasField("failure"):
            return f"failed: {outcome.failure.message}"
        return f"→ {payload_text(outcome.success)}"
    if t == E.EVENT_TYPE_MARKER_RECORDED:
        a = event.marker_recorded_event_attributes
        if a.marker_name == "core_patch" and "patch-data" in a.details:  # workflow.patched / deprecate_patch
            data = json.loads(a.details["patch-data"].payloads[0].data)
            return f"patch {data.get('id')!r}" + (" (deprecated)" if data.get("deprecated") else "")
        return a.marker_name
    if t == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        return ", ".join(f"{key}={json.loads(value.data)}" for key, value in sorted(fields.items()))
    if t == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
        a = event.start_child_workflow_execution_initiated_event_attributes
        return f"{a.workflow_type.name}({payload_text(a.input)})"
    return ""


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart (the plain-text view nbval compares)."""
    cells = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(c))).rstrip() for c in cells)


@dataclass(frozen=True)
class Row:
    event_id: int
    event: str
    details: str
    seconds: float


class HistoryTable:
    """An event history as rows; displays itself as a table."""

    def __init__(self, rows: list[Row], workflow_id: str) -> None:
        self.rows = rows
        self.workflow_id = workflow_id

    def counts(self) -> Counter[str]:
        return Counter(r.event for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self) -> list[tuple[str, str, str, str]]:
        return [(str(r.event_id), r.event, r.details, f"+{r.seconds:.3f} s") for r in self.rows]

    def __repr__(self) -> str:
        return text_table(("#", "event", "details", "time"), self._cells())

    def _repr_html_(self) -> str:
        # JupyterLab right-aligns table cells by default; histories read better left-aligned.
        td = '<td style="text-align:left">'
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in ("#", "event", "details", "time"))
        body = "".join(
            "<tr>" + "".join(f"{td}{html.escape(v)}</td>" for v in cells) + "</tr>" for cells in self._cells()
        )
        return (
            f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )


def table(history: WorkflowHistory) -> HistoryTable:
    """Turn a fetched history (``await handle.fetch_history()``) into a :class:`HistoryTable`."""
    events = list(history.events)
    start: datetime | None = events[0].event_time.ToDatetime() if events else None
    names: dict[int, str] = {}
    rows = []
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        seconds = (e.event_time.ToDatetime() - start).total_seconds() if start else 0.0
        rows.append(Row(e.event_id, event_name(e), details(e, names), seconds))
    return HistoryTable(rows, history.workflow_id)
