"""How big histories get: per workflow (a parent and its children), per run (a continue-as-new chain), against limits.

Every history has a hard limit (51,200 events or 50 MB on a default server); past it the server terminates the run.
Long before that it suggests continuing as new (4,096 events or 4 MiB), and every event a worker has to replay
costs time after a crash. Scaling therefore means keeping each history bounded: children for big fan-outs, batches
for many small items, continue-as-new for loops that never end. The functions here measure that, from histories.

A course demo cannot make 51,200 events in a few seconds, so :data:`LOWERED_LIMITS` are the same limits scaled
down, for a throwaway server (``worker.start_server(course, path, dynamic_config=LOWERED_LIMITS)``).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from helpers.history import payload_text, text_table

DEFAULT_LIMITS = {"limit.historyCount.error": 51_200, "limit.historyCount.suggestContinueAsNew": 4_096}
LOWERED_LIMITS = {"limit.historyCount.error": 100, "limit.historyCount.suggestContinueAsNew": 40}
FETCH_TIMEOUT_S = 10.0
MAX_RUNS = 200  # a chain longer than this is cut short (a loop that continues as new forever)

_CLOSING = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued as new",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "canceled",
}


def limits_text(limits: Mapping[str, int]) -> str:
    return (
        f"terminated at {limits['limit.historyCount.error']:,} events; "
        f"continue-as-new suggested from {limits['limit.historyCount.suggestContinueAsNew']:,} events on"
    )


# --------------------------------------------------------------------------- one run after another


@dataclass(frozen=True)
class Run:
    """One run of a workflow id: how it ended, its size, what it started from and what it handed on."""

    number: int
    run_id: str
    status: str
    events: int
    started_with: str
    ended_with: str  # the result, the next run's input, or why it was terminated / failed


def _run(number: int, run_id: str, events: Sequence[Any]) -> tuple[Run, str | None]:
    first, last = events[0], events[-1]
    status = _CLOSING.get(last.event_type, "running")
    nxt = None
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        a = last.workflow_execution_continued_as_new_event_attributes
        nxt, ended = a.new_execution_run_id, payload_text(a.input)
    elif last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        ended = payload_text(last.workflow_execution_completed_event_attributes.result)
    elif last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
        ended = last.workflow_execution_terminated_event_attributes.reason
    elif last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        ended = last.workflow_execution_failed_event_attributes.failure.message
    else:
        ended = ""
    started = payload_text(first.workflow_execution_started_event_attributes.input)
    return Run(number, run_id, status, len(events), started, ended), nxt


async def chain(client: Client, workflow_id: str, first_run_id: str, *, max_runs: int = MAX_RUNS) -> RunChain:
    """Every run of ``workflow_id`` from ``first_run_id`` on, following continue-as-new from history to history
    (``handle.first_execution_run_id`` is the first run of a handle from ``start_workflow``)."""
    runs: list[Run] = []
    run_id: str | None = first_run_id
    while run_id is not None and len(runs) < max_runs:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        hist = await asyncio.wait_for(handle.fetch_history(), FETCH_TIMEOUT_S)
        run, run_id = _run(len(runs) + 1, handle.run_id or "", list(hist.events))
        runs.append(run)
    return RunChain(workflow_id, runs, cut_short=run_id is not None)


class RunChain:
    """The runs of one workflow id, oldest first; displays itself as a table."""

    def __init__(self, workflow_id: str, runs: list[Run], *, cut_short: bool = False) -> None:
        self.workflow_id = workflow_id
        self.runs = runs
        self.cut_short = cut_short

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def last(self) -> Run:
        return self.runs[-1]

    def _cells(self) -> list[tuple[str, str, str, str, str]]:
        return [(str(r.number), r.status, str(r.events), r.started_with, r.ended_with) for r in self.runs]

    def __repr__(self) -> str:
        header = ("run", "ended", "events", "started with", "ended with / handed on")
        more = f"\n… cut short after {len(self.runs)} runs" if self.cut_short else ""
        return text_table(header, self._cells()) + more

    def _repr_html_(self) -> str:
        header = ("run", "ended", "events", "started with", "ended with / handed on")
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in header)
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left">{html.escape(v)}</td>' for v in cells) + "</tr>"
            for cells in self._cells()
        )
        style = "font-family:monospace;font-size:12px"
        return f'<table style="{style}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- one workflow next to another


async def event_counts(handles: Mapping[str, WorkflowHandle[Any, Any]]) -> dict[str, int]:
    """``{label: number of events}`` of each run's history."""
    hists = await asyncio.gather(*(asyncio.wait_for(h.fetch_history(), FETCH_TIMEOUT_S) for h in handles.values()))
    return {label: len(h.events) for label, h in zip(handles, hists, strict=True)}


def plot_sizes(
    counts: Mapping[str, int],
    *,
    limits: Mapping[str, int] | None = None,
    title: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """A bar per workflow (or run): its events, with the history limits as lines (log scale if they are far)."""
    import matplotlib.pyplot as plt

    labels = list(counts)
    values = [counts[k] for k in labels]
    _, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 3), 3.8))
    ax.bar(range(len(labels)), values, color=[(colors or {}).get(k, "#4c72b0") for k in labels])
    for i, v in enumerate(values):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=8)
    if limits:
        error, suggest = limits["limit.historyCount.error"], limits["limit.historyCount.suggestContinueAsNew"]
        ax.axhline(error, color="#c44e52", linestyle="--", label=f"history limit: terminated at {error:,} events")
        ax.axhline(suggest, color="#dd8452", linestyle=":", label=f"continue-as-new suggested at {suggest:,}")
        if error > 20 * max(values):
            ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 6 else 0,
        ha="right" if len(labels) > 6 else "center",
        fontsize=8,
    )
    ax.set_ylabel("events in the history")
    ax.set_title(title or "History size per workflow")
    ax.grid(axis="y", alpha=0.3)
    plt.tight_layout()
    plt.show()
