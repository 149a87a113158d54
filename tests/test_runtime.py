"""The in-kernel runtime against a real dev server (no IPython needed)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

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


def test_a_run_that_ends_as_the_wait_runs_out_returns_its_result(scratch):
    """On a swamped machine the result can reach us after the deadline although the run has completed: that is
    its result, not "did not finish within 10 s. Its status is COMPLETED" (seen in a loaded make test)."""

    class LateResult(WorkflowHandle):  # the real handle; its result long-poll answers 1 s late
        async def result(self, **kwargs):
            await asyncio.sleep(1.0)
            return await super().result(**kwargs)

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_mod3", HELLO)
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        try:
            handle = await course.client.start_workflow(
                mod.Shout.run, "late", id=f"late-{time.time_ns()}", task_queue=course.task_queue
            )
            late = LateResult(course.client, handle.id, run_id=handle.result_run_id, result_type=str)
            started = time.monotonic()
            assert await runtime.wait_result(course.client, late, 0.3) == "LATE"
            assert time.monotonic() - started < 4
            nobody = await course.client.start_workflow(
                mod.Shout.run, "x", id=f"nobody-{time.time_ns()}", task_queue="nobody-polls-this"
            )
            with pytest.raises(runtime.WorkflowStuck, match=r"did not finish within 0\.3 s"):  # a run still going
                await runtime.wait_result(course.client, nobody, 0.3)
            await nobody.terminate()
        finally:
            await course.stop_all()

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
    and 05's continue-as-new chain rely on it). Five 0.2 s sleeps, each timed by the server in the history (from
    TimerStarted to TimerFired), not by the worker's round trips, which a busy test machine stretches."""

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "sleeper_mod", SLEEPER)
        await course.start_worker(workflows=[mod.Sleeper])
        await course.run(mod.Sleeper.run, 5, show=False)
        events = (await course.last.fetch_history()).events
        await course.stop_all()
        return events

    started: dict[int, float] = {}
    fired: list[float] = []
    for e in asyncio.run(scenario()):
        when = e.event_time.ToNanoseconds() / 1e9
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            started[e.event_id] = when
        elif e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            fired.append(when - started[e.timer_fired_event_attributes.started_event_id])
    # A default server fires every one of them at ~1 s; this one on time, except a timer a loaded test machine
    # delays (seen: one of five at 1.1 s while six test workers ran): the fastest tells the settings apart.
    assert len(fired) == 5 and all(took > 0.15 for took in fired) and min(fired) < 0.6, fired


# --------------------------------------------------------------------------- never hang, never blame the learner

LOOPS = """
import asyncio
from datetime import timedelta
from temporalio import activity, workflow

@activity.defn
async def spin(n: int) -> int:
    total = 0
    while True:
        try:
            total += n
        except Exception:
            pass

@activity.defn
async def wait_forever(n: int) -> int:
    while True:
        await asyncio.sleep(0.1)

@workflow.defn
class Looping:
    @workflow.run
    async def run(self, name: str) -> int:
        act = spin if name == "spin" else wait_forever
        return await workflow.execute_activity(act, 1, start_to_close_timeout=timedelta(seconds=60))
"""


def test_a_cpu_bound_loop_in_an_async_activity_is_stopped_and_named(scratch):
    """Issue 7.1: it froze the kernel for good; now the attempt is stopped within seconds (even through an
    ``except Exception`` inside the loop) and the error names the activity and its line."""

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "loops_mod", LOOPS)
        await course.start_worker(workflows=[mod.Looping], activities=[mod.spin, mod.wait_forever])
        started = time.monotonic()
        with pytest.raises(runtime.ActivityKeepsFailing) as info:
            handle = await course.start_workflow(mod.Looping.run, "spin", show=False)
            await course.result(handle, 30, activity_retries=1)
        elapsed = time.monotonic() - started  # without the watchdog: never (the bounded wait could not even run)
        await course.stop_all()
        return info.value, elapsed

    err, elapsed = asyncio.run(scenario())
    assert elapsed < 15
    assert err.activity == "spin" and "ActivityBlockedLoop" in err.failure
    assert re.search(r"loops_mod\.py line (9|1[0-3])\b", err.failure), err.failure  # inside the loop
    assert "async def" in runtime.hint_for(err.failure)


def test_an_activity_that_never_returns_is_named_not_the_workflow(scratch, capsys):
    """Issue 7.2: 'your workflow did not finish in time' blamed the workflow; the activity still running is named."""
    from support import verdict_of

    from helpers.checks import exercise

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "loops_mod2", LOOPS)
        await course.start_worker(workflows=[mod.Looping], activities=[mod.spin, mod.wait_forever])
        with pytest.raises(runtime.WorkflowStuck) as info:
            await course.run(mod.Looping.run, "wait", show=False, timeout=2)

        @exercise("09.9")
        async def check():
            await course.run(mod.Looping.run, "wait", show=False, timeout=2)

        await check()
        await course.stop_all()
        return info.value

    err = asyncio.run(scenario())
    assert "Activity wait_forever is still running" in str(err) and "(attempt 1)" in str(err)
    assert [(p.name, p.attempt, p.running) for p in err.pending] == [("wait_forever", 1, True)]
    verdict = verdict_of(capsys)
    assert verdict.status == "failed"
    assert verdict.message.startswith("activity wait_forever was still running when the check gave up (attempt 1)")


@pytest.fixture
def private_server(tmp_path, monkeypatch):
    """A course server of this test's own (state and data in tmp_path), at TEMPORAL_ADDRESS; stopped at the end."""
    monkeypatch.setenv("TEMPORAL_COURSE_DATA", str(tmp_path / "data"))
    port = server.free_port()
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"localhost:{port}")
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(server.free_port()))
    monkeypatch.setattr(runtime, "_current", None)
    where = server.target()
    server.ensure(where)
    yield where
    server.stop(where)


def test_a_stopped_server_is_said_plainly_and_setup_brings_it_back(private_server, scratch, capsys):
    """Issue 7.3/7.4: runs and checks said RPCError (as if the code were wrong), setup did not restart the server,
    and re-running setup dropped the workers. Now: a distinct error and verdict within seconds; setup re-run
    starts the local server again, reconnects, and the same workers serve the next run."""
    from support import verdict_of

    from helpers.checks import exercise

    async def scenario():
        course = await runtime.start("t")
        mod = runtime.write_module(course.scratch, "shout_down", HELLO)
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        assert await course.run(mod.Shout.run, "up", show=False) == "UP"
        capsys.readouterr()
        server.stop(private_server)

        started = time.monotonic()
        with pytest.raises(runtime.ServerNotAnswering, match="not answering") as info:
            await course.run(mod.Shout.run, "down", show=False)
        assert time.monotonic() - started < 4
        assert "re-run the setup cell" in str(info.value)
        with pytest.raises(runtime.ServerNotAnswering):
            await course.history()

        @exercise("09.8")
        async def check():
            assert await course.run(mod.Shout.run, "x", show=False) == "X"

        await check()
        verdict = verdict_of(capsys)
        assert verdict.status == "unavailable" and "not your mistake" in verdict.message

        again = await runtime.start("t")
        assert again is course
        out = capsys.readouterr().out
        assert "started it again; reconnected" in out
        assert "Still running from before: 1 background worker(s)" in out and "Shout, shout" in out
        assert await course.run(mod.Shout.run, "back", show=False, timeout=15) == "BACK"
        await course.stop_all()

    asyncio.run(scenario())


def test_rerunning_setup_keeps_the_workers(private_server, capsys):
    async def scenario():
        course = await runtime.start("t")
        mod = runtime.write_module(course.scratch, "shout_keep", HELLO)
        running = await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        await runtime.start("t")
        assert course.workers[course.task_queue] is running and running.running
        assert await course.run(mod.Shout.run, "still", show=False, timeout=5) == "STILL"
        await course.stop_all()

    asyncio.run(scenario())
    assert "Still running from before: 1 background worker(s)" in capsys.readouterr().out


def test_a_check_leaves_the_learners_last_run_alone(make_course, capsys):
    """Issue 7.11: after a check, course.history() showed the check's run, not the learner's."""
    from helpers.checks import exercise

    async def scenario():
        course = await make_course()
        mod = runtime.write_module(course.scratch, "shout_last", HELLO)
        await course.start_worker(workflows=[mod.Shout], activities=[mod.shout])
        await course.run(mod.Shout.run, "mine", show=False)
        mine = course.last

        @exercise("09.7")
        async def check():
            await course.run(mod.Shout.run, "the check's", show=False)

        await check()
        assert course.last is mine
        assert '"mine"' in repr(await course.history())
        await course.stop_all()

    asyncio.run(scenario())


SLEEPY = """
import time
from datetime import timedelta
from temporalio import activity, workflow

@activity.defn
async def nap(n: int) -> int:
    time.sleep(30)  # blocks the event loop: no await
    return n

@workflow.defn
class Napping:
    @workflow.run
    async def run(self, n: int) -> int:
        return await workflow.execute_activity(nap, n, start_to_close_timeout=timedelta(seconds=60))
"""


def test_time_sleep_in_an_async_activity_is_stopped_too(scratch):
    """Walkthrough finding: `time.sleep(30)` is one C call, so the watchdog's interruption landed only after it;
    on a watched loop's thread time.sleep sleeps in slices, and the attempt is stopped within seconds."""

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "sleepy_mod", SLEEPY)
        await course.start_worker(workflows=[mod.Napping], activities=[mod.nap])
        started = time.monotonic()
        with pytest.raises(runtime.ActivityKeepsFailing) as info:
            await course.result(await course.start_workflow(mod.Napping.run, 1, show=False), 30, activity_retries=1)
        elapsed = time.monotonic() - started
        await course.stop_all()
        return info.value, elapsed

    err, elapsed = asyncio.run(scenario())
    assert elapsed < 12, elapsed
    assert err.activity == "nap" and "ActivityBlockedLoop" in err.failure and "sleepy_mod.py line 8" in err.failure
    assert time.sleep.__name__ == "_sliced_sleep"
    started = time.monotonic()
    time.sleep(0.2)  # elsewhere (no watched loop on this thread any more) it is the plain sleep
    assert 0.19 < time.monotonic() - started < 1


def test_a_check_with_many_blocked_runs_names_the_activity_and_leaves_nothing_behind(scratch, make_course, capsys):
    """Walkthrough finding: 15 runs of an activity that never awaits made the check give up after 20 s without
    naming it, and kept the kernel sluggish, so the *correct* answer failed next. Now: the verdict names the
    activity, the check's runs are terminated, and the next check passes at once."""
    from support import verdict_of

    from helpers.checks import exercise, worker_for

    blocking = LOOPS.replace("async def wait_forever", "async def wait_forever_unused")

    async def scenario():
        course = await make_course()
        mod = runtime.write_module(scratch, "many_loops", blocking)

        @exercise("09.6", timeout=12)
        async def check(activity):
            async with worker_for([mod.Looping], [activity, mod.wait_forever_unused]) as queue:
                handles = [
                    await course.start_workflow(mod.Looping.run, "spin", task_queue=queue, show=False) for _ in range(8)
                ]
                await asyncio.gather(*(course.result(h, 10) for h in handles))

        await check(mod.spin)
        first = verdict_of(capsys)
        still = [h for h in course.started if (await h.describe()).status.name == "RUNNING"]
        fixed = runtime.write_module(scratch, "many_fixed", LOOPS.replace("total += n", "return n"))
        course.started.clear()
        started = time.monotonic()

        @exercise("09.5")
        async def check_fixed():
            async with worker_for([fixed.Looping], [fixed.spin, fixed.wait_forever]) as queue:
                handles = [
                    await course.start_workflow(fixed.Looping.run, "spin", task_queue=queue, show=False)
                    for _ in range(8)
                ]
                assert await asyncio.gather(*(course.result(h, 10) for h in handles)) == [1] * 8

        await check_fixed()
        return first, still, time.monotonic() - started

    first, still, fixed_took = asyncio.run(scenario())
    assert first.status == "failed" and first.message.startswith("activity spin never lets the worker breathe")
    assert still == [], "the check's runs were terminated"
    assert verdict_of(capsys).status == "passed"
    assert fixed_took < 8, fixed_took


def test_waits_stretch_when_the_grader_says_the_machine_is_busy(scratch, monkeypatch):
    """The grader runs several notebooks at once: it sets COURSE_WAIT_SCALE so that a right answer on a busy machine
    does not time out. A no-worker wait of 1 s then takes 2 s, with the same message."""
    from helpers import waits

    monkeypatch.setenv(waits.WAIT_SCALE_VAR, "2")
    assert waits.wait_scale() == 2.0

    async def scenario():
        course = await new_course(scratch)
        mod = runtime.write_module(scratch, "shout_scaled", HELLO)
        started = time.monotonic()
        with pytest.raises(runtime.WorkflowStuck, match="did not finish within 1 s"):
            await course.run(mod.Shout.run, "x", show=False, timeout=1)
        return time.monotonic() - started

    assert 1.9 < asyncio.run(scenario()) < 6
    monkeypatch.setenv(waits.WAIT_SCALE_VAR, "nonsense")
    assert waits.wait_scale() == 1.0
