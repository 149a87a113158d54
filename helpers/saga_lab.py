"""Running sagas under injected failures, and seeing what they did.

A saga is judged by the world it leaves, not by its code. :func:`run` runs one order (or trip) whose failures were
injected into the world (:meth:`~helpers.shop_world.ShopWorld.inject`) and returns a :class:`SagaRun`: how the
workflow ended, what the world holds for the order, every call the services received (forward steps and
compensations, in the order they really happened) and the run's history. :meth:`SagaRun.timeline` draws the
forward steps and the compensations; :func:`failure_matrix` runs sagas once per failure point (step × kind of
failure) and :meth:`FailureMatrix.plot` shows the world after each; :class:`FailurePicker` lets a learner pick one
failure and watch it happen.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from temporalio import exceptions
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHistory

from helpers import errors, plots, runtime
from helpers.history import text_table
from helpers.shop_world import COMPENSATIONS, KINDS, ORDER_STEPS, Effects, OrderState, ShopWorld, TripState, money
from helpers.widgets import TextFallback

NEEDS_HUMAN = "NeedsHuman"  # the error type a saga raises when a compensation failed for good
ENDINGS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELED": "cancelled",
    "TERMINATED": "terminated",
    "TIMED_OUT": "timed out",
}
OK_COLOR, BAD_COLOR, HUMAN_COLOR = "#d4ecd4", "#f4c7c3", "#fde9b8"


@dataclass(frozen=True)
class Outcome:
    """How a workflow ended: its status, and its result or the error it failed with."""

    status: str  # COMPLETED | FAILED | CANCELED | TERMINATED | TIMED_OUT
    result: Any = None
    error_type: str | None = None  # the failure's ApplicationError type (e.g. "OrderFailed", "NeedsHuman")
    message: str = ""
    details: tuple[Any, ...] = ()  # the ApplicationError's details, if any

    @property
    def needs_human(self) -> bool:
        return self.error_type == NEEDS_HUMAN

    @property
    def ending(self) -> str:
        return "needs a human" if self.needs_human else ENDINGS.get(self.status, self.status.lower())

    def __str__(self) -> str:
        if self.status == "COMPLETED":
            return f"completed: {self.result}"
        text = ENDINGS.get(self.status, self.status.lower()) + (f" ({self.error_type})" if self.error_type else "")
        return f"{text}: {self.message}" if self.message else text


def failed_outcome(cause: BaseException | None) -> Outcome:
    """The :class:`Outcome` of a run whose result raised ``WorkflowFailureError`` with this ``cause``."""
    if isinstance(cause, exceptions.CancelledError):
        return Outcome("CANCELED")
    if isinstance(cause, exceptions.TerminatedError):
        return Outcome("TERMINATED", message=cause.message)
    if isinstance(cause, exceptions.TimeoutError):
        return Outcome("TIMED_OUT", message=cause.message)
    if isinstance(cause, exceptions.ApplicationError):
        return Outcome("FAILED", error_type=cause.type, message=cause.message, details=tuple(cause.details))
    if isinstance(cause, exceptions.ActivityError) and isinstance(cause.cause, exceptions.FailureError):
        return Outcome("FAILED", error_type="ActivityError", message=f"{cause.activity_type}: {cause.cause.message}")
    if isinstance(cause, exceptions.FailureError):
        return Outcome("FAILED", error_type=type(cause).__name__, message=cause.message)
    return Outcome("FAILED", message=str(cause))


async def outcome(
    course: runtime.Course,
    handle: Any,
    timeout: float = runtime.RESULT_TIMEOUT_S,
    *,
    activity_retries: int | None = None,
) -> Outcome:
    """Wait (bounded) for a run to end and say how it ended; a failed run is an outcome, not an exception.
    (``activity_retries``: see :meth:`~helpers.runtime.Course.result`.)"""
    try:
        result = await course.result(handle, timeout, activity_retries=activity_retries)
    except WorkflowFailureError as err:
        return failed_outcome(err.cause)
    return Outcome("COMPLETED", result)


# --------------------------------------------------------------------------- one run


@dataclass
class SagaRun:
    """One order (or trip) run by a saga: its outcome, the world it left, the calls the services got."""

    workflow: str
    target: str
    outcome: Outcome
    state: OrderState | TripState
    effects: Effects
    history: WorkflowHistory
    link: str | None = None

    @property
    def consistent(self) -> bool:
        return self.state.consistent(self.outcome.status)

    def verdict(self) -> str:
        if self.consistent:
            return "✅ consistent: " + (
                "all of it done" if self.outcome.status == "COMPLETED" else "nothing left behind"
            )
        if self.outcome.status == "COMPLETED":
            return f"❌ inconsistent: it completed, but the world has {self.state}"
        left = ", ".join(_leftovers(self.state))
        if self.outcome.needs_human:
            return f"⚠️ left for a human (the saga said so): {left}"
        return f"❌ inconsistent: {left}"

    def lines(self) -> list[str]:
        return [f"{self.workflow} → {self.outcome}", f"world: {self.state}", self.verdict()]

    def __repr__(self) -> str:
        return "\n".join([*self.lines(), "", repr(self.effects)])

    def _repr_html_(self) -> str:
        link = (
            f' · <a href="{html.escape(self.link)}" target="_blank" rel="noopener">open in the Temporal UI ↗</a>'
            if self.link
            else ""
        )
        head = "<br>".join(html.escape(line) for line in self.lines())
        return f'<div style="font-family:monospace;font-size:12px">{head}{link}</div>{self.effects._repr_html_()}'

    def figure(self, title: str | None = None, *, marks: Mapping[str, float] | None = None) -> Any:
        return timeline_figure(self.history, title=title or f"{self.workflow}: {self.outcome.ending}", marks=marks)

    def timeline(self, title: str | None = None, *, marks: Mapping[str, float] | None = None) -> None:
        """Draw forward steps and compensations over time (``marks``: ``{label: unix time}`` as vertical lines)."""
        import matplotlib.pyplot as plt

        self.figure(title, marks=marks)
        plt.show()


def _leftovers(state: OrderState | TripState) -> list[str]:
    if isinstance(state, TripState):
        return [f"{kind} still booked" for kind in state.booked] or ["nothing booked"]
    return state.leftovers() or ["nothing"]


async def run(
    course: runtime.Course,
    workflow_run: Any,
    order: Mapping[str, Any],
    *,
    world: ShopWorld,
    task_queue: str | None = None,
    show: bool = True,
    timeout: float = runtime.RESULT_TIMEOUT_S,
    processes: Mapping[int, str] | None = None,
    state: Callable[[str], OrderState | TripState] | None = None,
) -> SagaRun:
    """Run ``workflow_run`` (e.g. ``OrderSaga.run``) on ``order`` (its id is the workflow id), bounded.
    ``state``: how to read the order's world (default ``world.order_state``; ``world.trip_state`` for trips)."""
    handle = await course.start_workflow(workflow_run, dict(order), id=order["id"], task_queue=task_queue, show=show)
    return await finish(course, handle, world=world, timeout=timeout, processes=processes, state=state)


async def finish(
    course: runtime.Course,
    handle: Any,
    *,
    world: ShopWorld,
    timeout: float = runtime.RESULT_TIMEOUT_S,
    processes: Mapping[int, str] | None = None,
    state: Callable[[str], OrderState | TripState] | None = None,
    activity_retries: int | None = None,
) -> SagaRun:
    """Wait for a started saga (bounded) and collect what it did."""
    ended = await outcome(course, handle, timeout, activity_retries=activity_retries)
    history = await asyncio.wait_for(handle.fetch_history(), timeout)
    started = history.events[0].workflow_execution_started_event_attributes
    return SagaRun(
        workflow=started.workflow_type.name,
        target=handle.id,
        outcome=ended,
        state=(state or world.order_state)(handle.id),
        effects=world.effects(handle.id, processes),
        history=history,
        link=course.ui_link(handle.id),
    )


# --------------------------------------------------------------------------- the timeline picture

LEGEND = {"activity": "forward step", "failed": "failed / timed out", "compensation": "compensation (undo)"}


def timeline_bars(history: WorkflowHistory) -> list[plots.Span]:
    """The run's activities as bars: forward steps, then compensations (marked ↩), each on its own row."""
    bars = []
    for span in plots.spans(history):
        if span.row == "workflow tasks":
            continue
        if span.row.startswith("activity "):
            name = span.row.removeprefix("activity ")
            undo = name in COMPENSATIONS
            kind = span.kind if span.kind == "failed" else ("compensation" if undo else "activity")
            span = replace(span, row=("↩ " if undo else "") + name, kind=kind)
        bars.append(span)
    return bars


def _event_times(history: WorkflowHistory) -> tuple[datetime | None, dict[str, float]]:
    events = list(history.events)
    if not events:
        return None, {}
    t0 = events[0].event_time.ToDatetime()
    found = {}
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            found.setdefault("cancel requested", (e.event_time.ToDatetime() - t0).total_seconds())
    return t0, found


def timeline_figure(
    history: WorkflowHistory, *, title: str | None = None, marks: Mapping[str, float] | None = None
) -> Any:
    """A Gantt chart of the run's forward steps and compensations; vertical lines for a cancel request and for
    ``marks`` (``{label: unix time}``, e.g. when a worker process was killed)."""
    import matplotlib.pyplot as plt

    bars = timeline_bars(history)
    rows = list(dict.fromkeys(b.row for b in bars))
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 1.5))
    plots.draw(bars, title=title or f"Timeline of {history.workflow_id}", ax=ax)
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_text(LEGEND.get(text.get_text(), text.get_text()))
    t0, lines = _event_times(history)
    if t0 is not None and marks:
        epoch = t0.replace(tzinfo=timezone.utc).timestamp()  # event times are naive UTC
        lines.update({label: at - epoch for label, at in marks.items()})
    top = len(rows) - 0.4
    for label, x in lines.items():
        ax.axvline(x, color="#444444", linestyle="--", linewidth=1)
        ax.text(x, top, f" {label}", fontsize=8, va="bottom", ha="left", color="#444444")
    ax.set_ylim(-0.6, len(rows) - 0.1 + (0.5 if lines else 0))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the failure matrix

NO_FAILURE = "no failure"
MATRIX_TIMEOUT_S = 30.0
COLUMNS = ("workflow", "stock held", "paid", "shipment")


def scenario_label(step: str | None, kind: str | None) -> str:
    return f"{step} · {kind}" if step else NO_FAILURE


@dataclass
class FailureMatrix:
    """Sagas × failure points: one :class:`SagaRun` per cell."""

    sagas: list[str]
    scenarios: list[str]
    runs: dict[tuple[str, str], SagaRun]  # (scenario, saga) -> run

    def cell(self, scenario: str, saga: str) -> str:
        r = self.runs[(scenario, saga)]
        if r.consistent:
            mark = "✅"
        elif r.outcome.needs_human:
            mark = "⚠️"
        else:
            mark = "❌"
        if r.outcome.status == "COMPLETED":
            return f"{mark} completed" + ("" if r.consistent else f", but {r.state}")
        what = "nothing left" if r.consistent else ", ".join(_leftovers(r.state))
        return f"{mark} {r.outcome.ending}, {what}"

    def inconsistent(self, saga: str) -> list[str]:
        return [s for s in self.scenarios if not self.runs[(s, saga)].consistent]

    def __repr__(self) -> str:
        rows = [[s, *(self.cell(s, saga) for saga in self.sagas)] for s in self.scenarios]
        return text_table(["failure injected", *self.sagas], rows)

    def _repr_html_(self) -> str:
        style = 'style="text-align:left;padding:2px 8px"'
        head = "".join(f"<th {style}>{html.escape(h)}</th>" for h in ["failure injected", *self.sagas])
        body = ""
        for s in self.scenarios:
            tds = f"<td {style}>{html.escape(s)}</td>"
            for saga in self.sagas:
                r = self.runs[(s, saga)]
                color = OK_COLOR if r.consistent else HUMAN_COLOR if r.outcome.needs_human else BAD_COLOR
                tds += f'<td {style[:-1]};background:{color}">{html.escape(self.cell(s, saga))}</td>'
            body += f"<tr>{tds}</tr>"
        return (
            f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )

    def plot(self, title: str = "The world after each injected failure") -> None:
        """One panel per saga: a row per failure point, the workflow's ending and what the world holds; a cell is
        red when that part of the world contradicts how the workflow ended."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        n = len(self.scenarios)
        fig, axes = plt.subplots(1, len(self.sagas), figsize=(5.0 * len(self.sagas) + 1.8, 0.36 * n + 2.4))
        axes = list(axes) if len(self.sagas) > 1 else [axes]
        for ax, saga in zip(axes, self.sagas, strict=True):
            for i, scenario in enumerate(self.scenarios):
                r = self.runs[(scenario, saga)]
                y = n - 1 - i
                for j, (text, ok) in enumerate(_matrix_cells(r)):
                    color = OK_COLOR if ok else (HUMAN_COLOR if r.outcome.needs_human else BAD_COLOR)
                    ax.add_patch(plt.Rectangle((j, y - 0.5), 1, 1, facecolor=color, edgecolor="white", linewidth=2))
                    ax.text(j + 0.5, y, text, ha="center", va="center", fontsize=8)
            ax.set_xlim(0, len(COLUMNS))
            ax.set_ylim(-0.5, n - 0.5)
            ax.set_xticks([j + 0.5 for j in range(len(COLUMNS))], COLUMNS, fontsize=8)
            ax.xaxis.tick_top()
            ax.set_yticks(range(n), list(reversed(self.scenarios)), fontsize=8)
            ax.tick_params(length=0)
            ax.set_title(saga, fontsize=10, fontweight="bold", pad=18)
            ax.set_xlabel("how the workflow ended, and what the world holds for the order", fontsize=8)
            for side in ax.spines.values():
                side.set_visible(False)
            if ax is not axes[0]:
                ax.set_yticklabels([])
        axes[0].set_ylabel("failure injected (step · kind)")
        handles = [
            Patch(color=OK_COLOR, label="consistent with how the workflow ended"),
            Patch(color=BAD_COLOR, label="left behind: the world contradicts the workflow"),
        ]
        if any(r.outcome.needs_human for r in self.runs.values()):
            handles.append(Patch(color=HUMAN_COLOR, label="left for a human (the saga escalated)"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        plt.show()


def _matrix_cells(r: SagaRun) -> list[tuple[str, bool]]:
    state = r.state
    assert isinstance(state, OrderState)
    done = r.outcome.status == "COMPLETED"
    return [
        (r.outcome.ending, r.consistent),
        (str(state.held), (state.held > 0) == done),
        (money(state.paid_cents), (state.paid_cents > 0) == done and state.paid_cents >= 0),
        (state.shipment or "none", (state.shipment == "booked") == done),
    ]


async def failure_matrix(
    course: runtime.Course,
    sagas: Mapping[str, type],
    *,
    world: ShopWorld,
    new_order: Callable[[str], dict[str, Any]],
    steps: Sequence[str] = ORDER_STEPS,
    kinds: Sequence[str] = KINDS,
    task_queue: str | None = None,
    timeout: float = MATRIX_TIMEOUT_S,
) -> FailureMatrix:
    """Run every saga once per failure point (and once without a failure), all at the same time (``timeout``:
    for each run; generous, because on a busy machine 20 runs at once take longer than one)."""
    scenarios = [(None, None), *((s, k) for s in steps for k in kinds)]

    async def one(saga: type, step: str | None, kind: str | None) -> SagaRun:
        order = new_order(course.new_id("order"))
        if step is not None and kind is not None:
            world.inject(order["id"], step, kind)
        return await run(course, saga.run, order, world=world, task_queue=task_queue, show=False, timeout=timeout)  # type: ignore[attr-defined]

    jobs = [(scenario_label(s, k), label, one(saga, s, k)) for s, k in scenarios for label, saga in sagas.items()]
    results = await asyncio.gather(*(job for _, _, job in jobs))
    runs = {(scenario, label): r for (scenario, label, _), r in zip(jobs, results, strict=True)}
    return FailureMatrix(list(sagas), [scenario_label(s, k) for s, k in scenarios], runs)


# --------------------------------------------------------------------------- the widget


class FailurePicker(TextFallback):
    """Pick the failing step and the kind of failure, press Run: one real order runs, and its outcome, the world
    and the timeline appear below. ``run(step, kind)`` (``step`` None: no failure) does the work."""

    def __init__(
        self,
        run: Callable[[str | None, str], Awaitable[SagaRun]],
        *,
        steps: Sequence[str] = ORDER_STEPS,
        kinds: Sequence[str] = KINDS,
    ) -> None:
        self._run = run
        self.steps = list(steps)
        self.kinds = list(kinds)
        self.step: str | None = self.steps[-1]
        self.kind: str = self.kinds[-1]
        self._widget: Any = None
        self._output: Any = None
        self._busy: asyncio.Task[Any] | None = None
        self.last: SagaRun | None = None

    def summary(self) -> str:
        return (
            f"Failure picker: choose the step that fails ({', '.join(self.steps)}, or none) and how "
            f"({', '.join(self.kinds)}), then press Run: one order runs for real, and its outcome, the world and "
            "its timeline appear below the buttons."
        )

    def __repr__(self) -> str:
        return self.summary()

    async def run_selected(self) -> SagaRun:
        """What the Run button does (callable from code too)."""
        import matplotlib.pyplot as plt

        result = await self._run(self.step, self.kind)
        self.last = result
        if self._output is not None:
            self._output.clear_output()
            self._output.append_display_data(result)
            fig = result.figure()
            self._output.append_display_data(fig)
            plt.close(fig)
        return result

    def _clicked(self, _button: Any) -> None:
        if self._busy is not None and not self._busy.done():
            return
        self._busy = asyncio.ensure_future(self._run_shown())

    async def _run_shown(self) -> None:
        try:
            await self.run_selected()
        except Exception as err:  # shown where the learner looks, not lost in a background task
            if self._output is not None:
                self._output.clear_output()
                self._output.append_stdout(f"{errors.short_failure(err)}\n")

    def _build(self) -> Any:
        import ipywidgets as w

        step = w.Dropdown(options=[NO_FAILURE, *self.steps], value=self.step, description="failing step")
        kind = w.ToggleButtons(options=self.kinds, value=self.kind, description="kind")
        step.observe(lambda c: setattr(self, "step", None if c["new"] == NO_FAILURE else c["new"]), names="value")
        kind.observe(lambda c: setattr(self, "kind", c["new"]), names="value")
        button = w.Button(description="Run the order", icon="play", button_style="primary")
        button.on_click(self._clicked)
        self._output = w.Output()
        return w.VBox([w.HBox([step, kind]), button, self._output])


__all__ = [
    "NEEDS_HUMAN",
    "FailureMatrix",
    "FailurePicker",
    "Outcome",
    "SagaRun",
    "failed_outcome",
    "failure_matrix",
    "finish",
    "outcome",
    "run",
    "timeline_figure",
]
