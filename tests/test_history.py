"""History table and timeline from real runs."""

from __future__ import annotations

import asyncio

import matplotlib

from helpers import contract, history, plots, runtime

matplotlib.use("Agg")  # helpers.plots imports pyplot lazily, so this still takes effect

WORKFLOW = """
import asyncio
from datetime import timedelta
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

ATTEMPTS = {}

@activity.defn
async def flaky(key: str) -> str:
    n = ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if n < 2:
        raise RuntimeError("first try fails")
    return f"ok after {n}"

@workflow.defn
class Story:
    @workflow.run
    async def run(self, key: str) -> str:
        await workflow.sleep(0.2)
        return await workflow.execute_activity(
            flaky, key, start_to_close_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
"""


def test_table_and_timeline_tell_the_story(make_course, scratch):
    mod = runtime.write_module(scratch, "story", WORKFLOW)

    async def scenario():
        course = await make_course()
        await course.start_worker(workflows=[mod.Story], activities=[mod.flaky])
        result = await course.run(mod.Story.run, "k1", show=False)
        hist = await course.last.fetch_history()
        await course.stop_all()
        return result, hist

    result, hist = asyncio.run(scenario())
    assert result == "ok after 2"
    table = history.table(hist)
    counts = table.counts()
    assert counts["TimerStarted"] == 1 and counts["TimerFired"] == 1
    assert counts["ActivityTaskScheduled"] == 1, "retries are not new events: one schedule, one completion"
    text = repr(table)
    assert 'Story("k1")' in text and "sleep 0.2s" in text and 'flaky → "ok after 2"' in text
    assert "flaky attempt 2" in text
    assert "<table" in table._repr_html_() and "&quot;k1&quot;" in table._repr_html_()
    assert [r.event_id for r in table.rows] == list(range(1, len(table) + 1))
    assert all(b.seconds >= a.seconds for a, b in zip(table.rows, table.rows[1:], strict=False))

    bars = plots.spans(hist)
    rows = {b.row for b in bars}
    assert {"workflow", "workflow tasks", "timers", "activity flaky"} <= rows
    timer = next(b for b in bars if b.row == "timers")
    assert 0.15 <= timer.end - timer.start <= 2.0 * contract.budget_stretch()  # a loaded machine delayed one 3 s
    activity = next(b for b in bars if b.row == "activity flaky")
    assert activity.label == "2 attempts" and activity.kind == "activity"
    ax = plots.draw(bars, title="t")
    assert next(t.get_text() for t in ax.get_yticklabels()) == "activity flaky"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "waiting in a queue\n(light bars)" in legend, "issue 7.12: the light bars had no legend entry"
    assert "earlier attempts /\nretry wait" in legend

    # A mark for something outside the history (01: the server was killed) is a labelled vertical line.
    marked = plots.draw(bars, marks={"server killed": 0.1, "server back": 0.15})
    labels = [t.get_text() for t in marked.get_legend().get_texts()]
    assert "server killed (0.10 s)" in labels and "server back (0.15 s)" in labels
    assert any(list(line.get_xdata()) == [0.1, 0.1] for line in marked.get_lines())
