"""Replay, made visible and testable (notebook 02).

A worker keeps no workflow state of its own: to continue a run it executes the workflow code again from the
start and feeds it what the event history recorded. The code must then ask for exactly the same steps
(*commands*) as the history shows (*events*); if it does not, that is a ``NondeterminismError``.

* :func:`note` — called from workflow code: records a line and whether the worker was replaying when it ran
  (a window into replay for the course; a real workflow logs with ``workflow.logger``, which is quiet on replay).
* :func:`notes` — the recorded lines as a table.
* :func:`roles` — each event of a history and its part in replay: a command the code must issue again, or a
  result handed back to the code without running anything.
* :func:`replay` — replay one history with the SDK's ``Replayer``, bounded, as a :class:`ReplayOutcome`.
* :func:`matrix` — which code version replays which recorded history, as a table.
* :func:`reason` — the one-line reason inside a ``NondeterminismError``.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from helpers import history as hist
from helpers.errors import CourseError

REPLAY_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------- watching replay


@dataclass(frozen=True)
class Note:
    """One line recorded by :func:`note`: where it ran, whether that was a replay, and at which history length."""

    source: str  # "workflow" or "activity"
    replaying: bool
    text: str
    history_length: int = 0


_NOTES: list[Note] = []
_LOCK = threading.Lock()


def note(text: str) -> None:
    """Record ``text`` with whether the worker is replaying right now. Call it from workflow or activity code.

    Workflow code must not touch global state; this module is imported with
    ``workflow.unsafe.imports_passed_through()`` and only *observes*, like a print that a cell can read back.
    """
    from temporalio import activity, workflow

    if activity.in_activity():
        item = Note("activity", False, text)
    elif workflow.in_workflow():
        length = workflow.info().get_current_history_length()
        item = Note("workflow", workflow.unsafe.is_replaying(), text, length)
    else:
        item = Note("kernel", False, text)
    with _LOCK:
        _NOTES.append(item)


def clear_notes() -> None:
    with _LOCK:
        _NOTES.clear()


class NotesTable:
    """Recorded notes, one row each, grouped into the workflow tasks in which they ran."""

    def __init__(self, items: list[Note]) -> None:
        self.items = items

    def rows(self) -> list[tuple[str, str, str]]:
        """``(task, ran, text)`` rows, ``task`` numbering the workflow tasks the worker processed.

        A workflow task runs some replayed lines (code catching up with the history) and then live lines (new
        code): a new task starts when a replayed line follows a live one, or when live lines move on to a later
        point in the history (a worker that kept the workflow in its cache continues without replaying).
        """
        rows: list[tuple[str, str, str]] = []
        task = 0
        last: Note | None = None  # the last workflow line
        for item in self.items:
            if item.source != "workflow":
                rows.append(("", item.source, item.text))
                continue
            if (
                last is None
                or (item.replaying and not last.replaying)
                or (not item.replaying and not last.replaying and item.history_length != last.history_length)
            ):
                task += 1
                label = str(task)
            else:
                label = ""
            rows.append((label, "replaying" if item.replaying else "live", item.text))
            last = item
        return rows

    def grid(self) -> tuple[list[str], int, dict[tuple[str, int], str]]:
        """(lines in first-seen order, number of tasks, ``{(line, task): "live" | "replaying" | "activity"}``):
        which line ran in which workflow task, and how. Activity lines count in the task that scheduled them."""
        order: list[str] = []
        cells: dict[tuple[str, int], str] = {}
        task = 0
        for label, how, text in self.rows():
            if label:
                task = int(label)
            if text not in order:
                order.append(text)
            cells[(text, max(task, 1))] = how
        return order, max(task, 1), cells

    def plot(self, *, title: str | None = None) -> None:
        """A picture of replay: one column per workflow task, one row per line of code. Each task runs ``run()``
        from the top: earlier lines again, *replaying* (hatched), then new lines *live*; activities run once."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle

        if not any(n.source == "workflow" for n in self.items):
            raise CourseError("No lines were recorded yet: run the workflow cell above first, then this one.")
        order, tasks, cells = self.grid()
        style = {
            "live": {"facecolor": "#1a7f37"},
            "replaying": {"facecolor": "white", "hatch": "///", "edgecolor": "#8250df"},
            "activity": {"facecolor": "#d4a72c"},
        }
        names = {"live": "ran live (new)", "replaying": "replayed (catching up)", "activity": "activity ran"}
        _, ax = plt.subplots(figsize=(2.2 + 1.1 * tasks + 0.06 * max(len(t) for t in order), 0.42 * len(order) + 1.4))
        for (text, task), how in cells.items():
            y = len(order) - 1 - order.index(text)
            ax.add_patch(Rectangle((task - 0.45, y - 0.38), 0.9, 0.76, linewidth=0.8, **style[how]))
        ax.set_xlim(0.4, tasks + 0.6)
        ax.set_ylim(-0.6, len(order) - 0.4)
        ax.set_xticks(range(1, tasks + 1), [f"task {t}" for t in range(1, tasks + 1)])
        ax.set_yticks(range(len(order)), list(reversed(order)), fontsize=8)
        ax.set_xlabel("workflow task (the worker forgets the workflow after each one)")
        ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
        seen = [how for how in style if how in cells.values()]
        ax.legend(
            handles=[Patch(**style[h], label=names[h]) for h in seen],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
        )
        if title:
            ax.set_title(title, fontsize=10)
        plt.tight_layout()
        plt.show()

    def lines(self, source: str | None = None, replaying: bool | None = None) -> list[str]:
        """The texts, optionally only those from ``source`` and/or with the given replaying flag."""
        return [
            n.text
            for n in self.items
            if (source is None or n.source == source) and (replaying is None or n.replaying == replaying)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return hist.text_table(("task", "ran", "line"), self.rows())

    def _repr_html_(self) -> str:
        colors = {"live": "#1a7f37", "replaying": "#8250df", "activity": "#9a6700"}
        body = "".join(
            f'<tr style="{"border-top:1px solid #bbb" if task else ""}"><td>{html.escape(task)}</td>'
            f'<td style="color:{colors.get(how, "inherit")};padding:1px 10px">{html.escape(how)}</td>'
            f"<td>{html.escape(text)}</td></tr>"
            for task, how, text in self.rows()
        )
        return (
            '<table style="text-align:left;font-family:monospace;font-size:12px;border-collapse:collapse">'
            "<thead><tr><th>task</th><th>ran</th><th>line</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )


def notes(clear: bool = True) -> NotesTable:
    """The lines recorded by :func:`note` since the last call (``clear=False`` keeps them)."""
    with _LOCK:
        items = list(_NOTES)
        if clear:
            _NOTES.clear()
    return NotesTable(items)


# --------------------------------------------------------------------------- commands vs events

E = EventType
# Events written because the workflow code issued a command; on replay the code must issue it again.
COMMAND_OF: dict[int, str] = {
    E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "ScheduleActivityTask",
    E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED: "RequestCancelActivityTask",
    E.EVENT_TYPE_TIMER_STARTED: "StartTimer",
    E.EVENT_TYPE_TIMER_CANCELED: "CancelTimer",
    E.EVENT_TYPE_MARKER_RECORDED: "RecordMarker",
    E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "UpsertWorkflowSearchAttributes",
    E.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED: "ModifyWorkflowProperties",
    E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "StartChildWorkflowExecution",
    E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "SignalExternalWorkflowExecution",
    E.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "RequestCancelExternalWorkflowExecution",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "CompleteWorkflowExecution",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "FailWorkflowExecution",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "CancelWorkflowExecution",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "ContinueAsNewWorkflowExecution",
}
# Events that carry something *into* the workflow code; on replay the code gets it from the history.
INPUTS = {
    E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "input of run()",
    E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "result handed back; the activity does not run again",
    E.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failure handed back; the activity does not run again",
    E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timeout handed back",
    E.EVENT_TYPE_TIMER_FIRED: "timer fired; no waiting on replay",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal handed back",
    E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED: "child's result handed back",
}


@dataclass(frozen=True)
class RoleRow:
    event_id: int
    event: str
    details: str
    kind: str  # "command", "input" or ""
    role: str


class RolesTable:
    """A history with each event's role in replay (see :func:`roles`)."""

    def __init__(self, rows: list[RoleRow]) -> None:
        self.rows = rows

    def _cells(self) -> list[tuple[str, str, str, str]]:
        return [(str(r.event_id), r.event, r.details, r.role) for r in self.rows]

    def __repr__(self) -> str:
        return hist.text_table(("#", "event", "details", "on replay"), self._cells())

    def _repr_html_(self) -> str:
        style = {"command": "background:#fff4d6", "input": "background:#e6f4ea", "": "color:#888"}
        body = "".join(
            f'<tr style="{style[r.kind]}"><td>{r.event_id}</td><td>{html.escape(r.event)}</td>'
            f"<td>{html.escape(r.details)}</td><td>{html.escape(r.role)}</td></tr>"
            for r in self.rows
        )
        return (
            '<table style="text-align:left;font-family:monospace;font-size:12px">'
            "<thead><tr><th>#</th><th>event</th><th>details</th><th>on replay</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )


def roles(history: WorkflowHistory) -> RolesTable:
    """Each event of ``history`` with its part in replay: *command* events (yellow) must be asked for again by
    the code, in the same order; *input* events (green) are handed to the code; the rest is bookkeeping."""
    table = hist.table(history)
    rows = []
    for event, row in zip(history.events, table.rows, strict=True):
        if (command := COMMAND_OF.get(event.event_type)) is not None:
            rows.append(RoleRow(row.event_id, row.event, row.details, "command", f"{command}: code must ask again"))
        elif (given := INPUTS.get(event.event_type)) is not None:
            rows.append(RoleRow(row.event_id, row.event, row.details, "input", given))
        else:
            rows.append(RoleRow(row.event_id, row.event, row.details, "", ""))
    return RolesTable(rows)


def activity_calls(history: WorkflowHistory) -> list[str]:
    """The activity types a run scheduled, in order (its ``ScheduleActivityTask`` commands)."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def commands_per_task(history: WorkflowHistory) -> list[list[str]]:
    """For each completed workflow task, in order, the commands it issued, e.g. ``ScheduleActivityTask charge("A")``."""
    table = hist.table(history)
    tasks: list[list[str]] = []
    for event, row in zip(history.events, table.rows, strict=True):
        if event.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks.append([])
        elif (command := COMMAND_OF.get(event.event_type)) is not None and tasks:
            tasks[-1].append(f"{command} {row.details}".strip())
    return tasks


async def until(handle: Any, event: str, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` s) until the run of ``handle`` has recorded an ``event``, e.g. ``"TimerStarted"``."""

    async def watch() -> bool:
        async for e in handle.fetch_history_events(wait_new_event=True):
            if hist.event_name(e) == event:
                return True
        return False

    try:
        seen = await asyncio.wait_for(watch(), timeout)
    except asyncio.TimeoutError:
        seen = False
    if not seen:
        raise CourseError(f"Workflow {handle.id} recorded no {event} within {timeout:g} s.")


# --------------------------------------------------------------------------- replaying

_REASON = re.compile(r'message: "((?:[^"\\]|\\.)*)"')


def reason(err: BaseException | None) -> str:
    """The readable line inside a replay failure, e.g. ``[TMPRL1100] Nondeterminism error: Activity type …``."""
    if err is None:
        return ""
    text = str(err)
    m = _REASON.search(text)
    if m:
        return m[1].replace('\\"', '"')
    return f"{type(err).__name__}: {text}".strip()


@dataclass(frozen=True)
class ReplayOutcome:
    """Whether a history replayed on some code, and if not, why.

    ``result`` is what the code returned when replay reached the end of a completed run (``None`` otherwise),
    as the JSON the default converter would store; ``recorded`` is the result in the history. Replay does not
    compare the two: code whose values change on replay (``uuid.uuid4()`` with the sandbox switched off, say)
    replays "fine", and only a different result gives it away.
    """

    ok: bool
    reason: str = ""
    error: BaseException | None = None
    result: Any = None
    recorded: Any = None

    @property
    def same_result(self) -> bool:
        """The code computed on replay the result the run recorded."""
        return self.result == self.recorded

    @property
    def nondeterministic(self) -> bool:
        from temporalio.workflow import NondeterminismError

        return isinstance(self.error, NondeterminismError)

    def __repr__(self) -> str:
        return "✅ replays" if self.ok else f"❌ {self.reason}"


def _load(history: WorkflowHistory | str, workflow_id: str) -> WorkflowHistory:
    if isinstance(history, WorkflowHistory):
        return history
    return WorkflowHistory.from_json(workflow_id, history)


async def replay(
    workflows: type | Sequence[type],
    history: WorkflowHistory | str,
    *,
    timeout: float = REPLAY_TIMEOUT_S,
    **replayer_options: Any,
) -> ReplayOutcome:
    """Replay ``history`` (a fetched history or its JSON) on ``workflows`` with the SDK's ``Replayer``.

    ``replayer_options`` go to ``Replayer`` (e.g. the ``workflow_runner`` the original worker used).
    """
    from temporalio.worker import Replayer

    from helpers import server

    classes = [workflows] if isinstance(workflows, type) else list(workflows)
    history = _load(history, "replayed")
    returned: list[Any] = []
    interceptors = [*replayer_options.pop("interceptors", ()), _result_capture(returned)]
    options = {"runtime": server.sdk_runtime(), **replayer_options}
    replayer = Replayer(workflows=classes, interceptors=interceptors, **options)
    result = await asyncio.wait_for(replayer.replay_workflow(history, raise_on_replay_failure=False), timeout)
    failure = result.replay_failure
    recorded = recorded_result(history)
    replayed = _as_json(returned[-1]) if returned and recorded is not None else None
    return ReplayOutcome(failure is None, reason(failure), failure, replayed, recorded)


def recorded_result(history: WorkflowHistory) -> Any:
    """The result a completed run recorded (decoded JSON), or None."""
    for event in reversed(list(history.events)):
        if event.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            payloads = event.workflow_execution_completed_event_attributes.result.payloads
            return _decode(payloads[0].data) if payloads else None
    return None


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _as_json(value: Any) -> Any:
    """``value`` as the default data converter would store it, decoded again (so it compares with the history)."""
    from temporalio.converter import DataConverter

    try:
        return _decode(DataConverter.default.payload_converter.to_payloads([value])[0].data)
    except Exception:
        return value


def _result_capture(into: list[Any]) -> Any:
    """A replayer interceptor that appends what the workflow's run method returns to ``into``. It runs inside the
    sandbox, but the class and the list are handed in as objects, so the value lands outside."""
    from temporalio.worker import Interceptor, WorkflowInboundInterceptor

    class Inbound(WorkflowInboundInterceptor):
        async def execute_workflow(self, input: Any) -> Any:
            value = await super().execute_workflow(input)
            into.append(value)
            return value

    class Capture(Interceptor):
        def workflow_interceptor_class(self, input: Any) -> type[WorkflowInboundInterceptor]:
            return Inbound

    return Capture()


class ReplayMatrix:
    """Rows: recorded histories; columns: code versions; cells: ✅ replays / ❌ with a numbered reason."""

    def __init__(self, histories: list[str], versions: list[str], outcomes: dict[tuple[str, str], ReplayOutcome]):
        self.histories = histories
        self.versions = versions
        self.outcomes = outcomes
        self.reasons: list[str] = []
        for h in histories:
            for v in versions:
                out = outcomes[h, v]
                if not out.ok and out.reason not in self.reasons:
                    self.reasons.append(out.reason)

    def ok(self, history: str, version: str) -> bool:
        return self.outcomes[history, version].ok

    def _mark(self, history: str, version: str) -> str:
        out = self.outcomes[history, version]
        return "✅" if out.ok else f"❌ {self.reasons.index(out.reason) + 1}"

    def __repr__(self) -> str:
        table = hist.text_table(
            ("history from \\ code", *self.versions),
            [(h, *(self._mark(h, v) for v in self.versions)) for h in self.histories],
        )
        return "\n".join([table, *(f"{i}. {text}" for i, text in enumerate(self.reasons, 1))])

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="text-align:center;padding:2px 8px">{html.escape(v)}</th>' for v in self.versions)

        def cell(h: str, v: str) -> str:
            out = self.outcomes[h, v]
            if out.ok:
                return '<td style="text-align:center;background:#e6f4ea">✓ replays</td>'
            n = self.reasons.index(out.reason) + 1
            return f'<td style="text-align:center;background:#fde2e1">✗ fails ({n})</td>'

        body = "".join(
            f'<tr><th style="text-align:left">{html.escape(h)}</th>'
            + "".join(cell(h, v) for v in self.versions)
            + "</tr>"
            for h in self.histories
        )
        notes = "".join(f"<li>{html.escape(text)}</li>" for text in self.reasons)
        return (
            '<table style="font-family:monospace;font-size:12px;border-collapse:collapse">'
            f'<thead><tr><th style="text-align:left">history recorded by ↓ / replayed on code →</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>" + (f'<ol style="font-size:12px">{notes}</ol>' if notes else "")
        )


async def matrix(histories: Mapping[str, WorkflowHistory | str], versions: Mapping[str, type]) -> ReplayMatrix:
    """Replay every history on every code version (each workflow class must have the same workflow type name)."""
    outcomes = {}
    for h, history in histories.items():
        for v, cls in versions.items():
            outcomes[h, v] = await replay(cls, history)
    return ReplayMatrix(list(histories), list(versions), outcomes)


__all__ = [
    "Note",
    "NotesTable",
    "ReplayMatrix",
    "ReplayOutcome",
    "RolesTable",
    "activity_calls",
    "clear_notes",
    "commands_per_task",
    "matrix",
    "note",
    "notes",
    "reason",
    "replay",
    "roles",
    "until",
]
