"""The in-kernel runtime against a real dev server (no IPython needed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from helpers import runtime, server

HELLO = """
from datetime import timedelta
from temporalio import activity, workflow

@activity.defn
async def shout(text: str) -> str:
    return text.upper()

@workflow.defn
class Shout:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(shout, text, start_to_close_timeout=timedelta(seconds=5))
"""

BROKEN = """
from temporalio import workflow

@workflow.defn
class Broken:
    @workflow.run
    async def run(self) -> str:
        return undefined_name
"""


async def new_course(tmp_path: Path, notebook: str = "t") -> runtime.Course:
    where = server.target()
    client = await runtime.connect(where)
    return runtime.Course(notebook=notebook, client=client, target=where, scratch=tmp_path)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_module_runs_in_sandbox_and_rewrites_take_effect(scratch):
    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_mod", HELLO)
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        assert await course.run(mod.Shout.run, "hi", show=False) == "HI"
        # Same size, same second: the rewrite must still be what runs next.
        mod = runtime.write_module(scratch, "shout_mod", HELLO.replace("text.upper()", "text.lower()"))
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        assert await course.run(mod.Shout.run, "Hi", show=False) == "hi"
        assert len(course.workers) == 1  # the second start replaced the first worker on the queue
        await course.stop_all()

    asyncio.run(scenario())


def test_failing_workflow_task_is_reported_fast_and_terminated(scratch):
    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "broken_mod", BROKEN)
        await course.start_worker(workflows=[mod.Broken])
        started = time.monotonic()
        with pytest.raises(runtime.WorkflowTaskFailed) as info:
            await course.run(mod.Broken.run, show=False, timeout=30)
        elapsed = time.monotonic() - started
        assert elapsed < 15
        assert "NameError" in info.value.failure and "undefined_name" in info.value.failure
        assert "broken_mod.py line 8" in info.value.failure
        desc = await course.last.describe()
        assert desc.status.name == "TERMINATED"
        await course.stop_all()

    asyncio.run(scenario())


def test_no_worker_gives_a_bounded_wait_with_a_hint(scratch):
    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_mod2", HELLO)
        started = time.monotonic()
        with pytest.raises(runtime.WorkflowStuck) as info:
            await course.run(mod.Shout.run, "x", show=False, timeout=1.5)
        assert time.monotonic() - started < 6
        assert "no worker is polling" in str(info.value)

    asyncio.run(scenario())


def test_module_syntax_error_is_one_line(scratch):
    with pytest.raises(runtime.CourseError, match=r"SyntaxError in %%module bad, line 1"):
        runtime.write_module(scratch, "bad", "def (:\n")


def test_ids_and_task_queues_are_unique_per_session(scratch):
    async def scenario():
        a, b = await new_course(scratch, "x"), await new_course(scratch, "x")
        assert a.task_queue != b.task_queue
        assert a.new_id("w") != a.new_id("w")

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["time", "json", "temporalio", "helpers"])
def test_module_names_that_would_shadow_real_modules_are_refused(scratch, name):
    with pytest.raises(runtime.CourseError, match="already a Python module"):
        runtime.write_module(scratch, name, "x = 1\n")
    assert not (scratch / f"{name}.py").exists()


def test_common_slips_starting_a_workflow_are_one_line_errors(scratch):
    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_mod3", HELLO)
        with pytest.raises(runtime.CourseError, match="shout is an activity, not a workflow"):
            await course.run(mod.shout, "x", show=False)
        with pytest.raises(runtime.CourseError, match=r"Shout\.run cannot take these arguments"):
            await course.run(mod.Shout.run, "x", "y", show=False)

    asyncio.run(scenario())


def test_an_activity_that_keeps_failing_can_end_the_wait(scratch):
    failing = HELLO.replace("return text.upper()", "raise ValueError('no shouting today')")

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_mod4", failing)
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        started = time.monotonic()
        with pytest.raises(runtime.ActivityKeepsFailing) as info:
            await course.result(await course.start_workflow(mod.Shout.run, "x", show=False), 20, activity_retries=2)
        assert time.monotonic() - started < 10
        assert info.value.activity == "shout" and "ValueError: no shouting today" in info.value.failure
        assert (await course.last.describe()).status.name == "TERMINATED"
        await course.stop_all()

    asyncio.run(scenario())


SLEEPER = """
from datetime import timedelta
from temporalio import workflow

@workflow.defn
class Sleeper:
    @workflow.run
    async def run(self, n: int) -> float:
        start = workflow.time()
        for _ in range(n):
            await workflow.sleep(0.2)
        return workflow.time() - start
"""


def test_course_servers_fire_short_timers_on_time(scratch):
    """A default dev server rounds every timer up to ~1 s; the course's server settings must not (03's backoff plot
    and 05's continue-as-new chain rely on it). Five 0.2 s sleeps: ~1 s here, ~5 s on a default server."""

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "sleeper_mod", SLEEPER)
        await course.start_worker(workflows=[mod.Sleeper])
        elapsed = await course.run(mod.Sleeper.run, 5, show=False)
        await course.stop_all()
        return elapsed

    assert asyncio.run(scenario()) < 3.0
