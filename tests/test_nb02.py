"""Notebook 02 (determinism): the replay helpers and the three checks, against real runs on the session server."""

from __future__ import annotations

import asyncio
import gc

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from support import verdict_of
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from helpers import history, replay, runtime
from helpers.checks import nb02


def fill(template: str, **parts: str) -> str:
    for key, value in parts.items():
        template = template.replace(f"<<{key}>>", value)
    return template


# --------------------------------------------------------------------------- replay helpers

ORDERS = """
from datetime import timedelta
from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from helpers.replay import note


@activity.defn
async def charge(order_id: str) -> str:
    note("charge ran")
    return f"receipt-{order_id}"


@activity.defn
async def ship(order_id: str) -> str:
    return f"parcel-{order_id}"


@workflow.defn
class ProcessOrder:
    @workflow.run
    async def run(self, order_id: str) -> list[str]:
        note("start")
        first = await workflow.execute_activity(<<first>>, order_id, start_to_close_timeout=timedelta(seconds=5))
        note("middle")
        second = await workflow.execute_activity(<<second>>, order_id, start_to_close_timeout=timedelta(seconds=5))
        note("end")
        return [first, second]
"""

PATCHED = """
from datetime import timedelta
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orders_t import charge, ship


@workflow.defn
class ProcessOrder:
    @workflow.run
    async def run(self, order_id: str) -> list[str]:
        <<call>>
        if workflow.patched("ship-first"):
            order = [ship, charge]
        else:
            order = [charge, ship]
        step = timedelta(seconds=5)
        return [await workflow.execute_activity(a, order_id, start_to_close_timeout=step) for a in order]
"""


async def _record(course: runtime.Course, cls: type, activities: list, **worker_options) -> WorkflowHistory:
    await course.start_worker(workflows=[cls], activities=activities, **worker_options)
    handle = await course.start_workflow(cls.run, "A", show=False)
    await course.result(handle)
    await course.stop_all()
    return await handle.fetch_history()


def test_notes_show_each_workflow_task_replaying_then_going_live(make_course, scratch):
    orders = runtime.write_module(scratch, "orders_t", fill(ORDERS, first="charge", second="ship"))

    async def scenario():
        course = await make_course("02")
        replay.clear_notes()
        hist = await _record(course, orders.ProcessOrder, [orders.charge, orders.ship], max_cached_workflows=0)
        live = replay.notes()
        replayed = await replay.replay(orders.ProcessOrder, hist)
        return hist, live, replayed, replay.notes()

    hist, live, replayed, again = asyncio.run(scenario())
    assert live.rows() == [
        ("1", "live", "start"),
        ("", "activity", "charge ran"),
        ("2", "replaying", "start"),
        ("", "live", "middle"),
        ("3", "replaying", "start"),
        ("", "replaying", "middle"),
        ("", "live", "end"),
    ]
    assert replayed.ok and repr(replayed) == "✅ replays"
    assert replayed.same_result and replayed.result == replayed.recorded == ["receipt-A", "parcel-A"]
    assert again.lines() == ["start", "middle", "end"] and again.lines(replaying=False) == []
    assert replay.notes().items == []  # reading clears

    roles = replay.roles(hist)
    kinds = {r.event: r.kind for r in roles.rows}
    assert kinds["ActivityTaskScheduled"] == "command" and kinds["ActivityTaskCompleted"] == "input"
    assert kinds["WorkflowTaskStarted"] == "" and "code must ask again" in repr(roles)
    assert replay.activity_calls(hist) == ["charge", "ship"]
    tasks = replay.commands_per_task(hist)
    assert tasks == [
        ['ScheduleActivityTask charge("A")'],
        ['ScheduleActivityTask ship("A")'],
        ['CompleteWorkflowExecution result ["receipt-A", "parcel-A"]'],
    ]


def test_matrix_patch_markers_and_a_learners_replayer_stays_quiet(make_course, scratch, capfd):
    v1 = runtime.write_module(scratch, "orders_t", fill(ORDERS, first="charge", second="ship"))
    v2 = runtime.write_module(scratch, "orders_t2", fill(ORDERS, first="ship", second="charge"))
    v3 = runtime.write_module(scratch, "orders_t3", fill(PATCHED, call=""))
    deprecated = fill(PATCHED, call='workflow.deprecate_patch("ship-first")').replace(
        'if workflow.patched("ship-first"):', "if True:  # the old path is gone"
    )
    v4 = runtime.write_module(scratch, "orders_t4", deprecated)

    async def scenario():
        course = await make_course("02")
        h1 = await _record(course, v1.ProcessOrder, [v1.charge, v1.ship])
        h3 = await _record(course, v3.ProcessOrder, [v1.charge, v1.ship])
        versions = {"v1": v1.ProcessOrder, "v2": v2.ProcessOrder, "v3": v3.ProcessOrder}
        table = await replay.matrix({"v1 run": h1, "v3 run": h3}, versions)
        capfd.readouterr()
        # What a learner writes: no runtime argument. Its failure must not print core log lines into the cell.
        result = await Replayer(workflows=[v2.ProcessOrder]).replay_workflow(h1, raise_on_replay_failure=False)
        return h3, table, result, await replay.replay(v4.ProcessOrder, h1.to_json())

    h3, table, result, v4_on_v1 = asyncio.run(scenario())
    assert capfd.readouterr().err == ""
    assert "Activity type of scheduled event 'charge' does not match" in replay.reason(result.replay_failure)
    assert [table.ok("v1 run", v) for v in ("v1", "v2", "v3")] == [True, False, True]
    assert [table.ok("v3 run", v) for v in ("v1", "v2", "v3")] == [False, False, True]
    assert "Non-deprecated patch marker encountered for change ship-first" in repr(table)
    assert repr(table).splitlines()[1].split()[-4:] == ["✅", "❌", "1", "✅"]  # v1 run: v1, v2 (reason 1), v3
    assert not v4_on_v1.ok and v4_on_v1.nondeterministic and repr(v4_on_v1).startswith("❌ [TMPRL1100]")
    details = {r.event: r.details for r in history.table(h3).rows}
    assert details["MarkerRecorded"] == "patch 'ship-first'"
    assert details["UpsertWorkflowSearchAttributes"] == "TemporalChangeVersion=['ship-first']"
    assert nb02.patch_ids(h3) == ["ship-first"]


def test_reason_reads_the_message_inside_core_failures():
    err = RuntimeError('activation completion failed: Failure { failure: Some(Failure { message: "[X] a \\"b\\"", s')
    assert replay.reason(err) == '[X] a "b"'
    assert replay.reason(ValueError("plain")) == "ValueError: plain"
    assert replay.reason(None) == ""


@pytest.mark.parametrize(
    ("failure", "hint"),
    [
        ("datetime.datetime.now.__call__", "now()"),
        ("random.choice.__call__", "random()"),
        ("uuid.uuid4.__call__", "uuid4()"),
        ("__builtins__.open", "activity"),
    ],
)
def test_sandbox_hint_names_the_fix(failure, hint):
    text = nb02.sandbox_hint(f"RestrictedWorkflowAccessError: Cannot access {failure} from inside a workflow. If…")
    assert text is not None and hint in text
    assert nb02.sandbox_hint("NameError: x") is None


# --------------------------------------------------------------------------- 02.1

TICKETS = """
import random
import uuid
from datetime import datetime, timedelta, timezone

from temporalio import activity, workflow

AGENTS = ["ada", "grace", "linus"]


@activity.defn
async def notify_agent(agent: str, ticket_id: str) -> str:
    return f"{agent}, ticket {ticket_id} is yours"


@workflow.defn
class OpenTicket:
    @workflow.run
    async def run(self, subject: str) -> dict:
<<body>>
        await workflow.execute_activity(
            notify_agent, args=[agent, ticket_id], start_to_close_timeout=timedelta(seconds=5)
        )
        return {"subject": subject, "ticket_id": ticket_id, "agent": agent, "due": due.isoformat()}
"""
T_SOLVED = """        ticket_id = str(workflow.uuid4())
        agent = workflow.random().choice(AGENTS)
        due = workflow.now() + timedelta(hours=4)"""
T_STUB = """        raise NotImplementedError('Exercise 02.1: compute ticket_id, agent and due deterministically')"""
T_ORIGINAL = """        ticket_id = str(uuid.uuid4())
        agent = random.choice(AGENTS)
        due = datetime.now(timezone.utc) + timedelta(hours=4)"""
T_ONLY_CLOCK_LEFT = """        ticket_id = str(workflow.uuid4())
        agent = workflow.random().choice(AGENTS)
        due = datetime.now(timezone.utc) + timedelta(hours=4)"""
T_FIXED_SEED = """        rng = random.Random(42)
        ticket_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        agent = rng.choice(AGENTS)
        due = workflow.now() + timedelta(hours=4)"""
T_NO_OFFSET = """        ticket_id = str(workflow.uuid4())
        agent = workflow.random().choice(AGENTS)
        due = workflow.now()"""
T_FIRST_AGENT = """        ticket_id = str(workflow.uuid4())
        agent = AGENTS[0]
        due = workflow.now() + timedelta(hours=4)"""
T_AGENT_BY_SUBJECT = """        ticket_id = str(workflow.uuid4())
        agent = AGENTS[len(subject) % len(AGENTS)]
        due = workflow.now() + timedelta(hours=4)"""
T_SANDBOX_OFF = """        with workflow.unsafe.sandbox_unrestricted():
            ticket_id = str(uuid.uuid4())
            agent = random.choice(AGENTS)
            due = datetime.now(timezone.utc) + timedelta(hours=4)"""
T_AGENT_BY_CLOCK = """        ticket_id = str(workflow.uuid4())
        agent = AGENTS[workflow.now().second % len(AGENTS)]
        due = workflow.now() + timedelta(hours=4)"""
T_ROUNDED_CLOCK = """        ticket_id = str(workflow.uuid4())
        agent = workflow.random().choice(AGENTS)
        due = (workflow.now() + timedelta(hours=4)).replace(microsecond=0)"""


@pytest.mark.parametrize(
    ("by_second", "follows"),
    [
        ({10: ["ada"] * 8, 11: ["bo"] * 7}, True),  # runs straddled a second: one agent per second
        ({10: ["ada"] * 14, 11: ["cy"]}, True),
        ({10: ["ada", "bo", "ada"] * 3, 11: ["cy"] * 6}, False),  # random within a second
        ({10: ["ada"] * 15}, False),  # one second only: "all tickets went to one agent" says it instead
        ({10: ["ada"], 11: ["bo"], 12: ["cy"]}, False),  # no two tickets share a second: nothing to tell
    ],
)
def test_an_agent_that_follows_the_clock_is_told_apart(by_second, follows):
    """Issue 7.9: with runs in two seconds, `AGENTS[workflow.now().second % 3]` gave two agents and passed."""
    assert nb02.follows_the_clock(by_second) is follows


def test_the_clock_of_a_run_is_that_of_its_first_completed_workflow_task():
    """A correct 02.1 failed while grading on a loaded machine: its first workflow task timed out, and workflow.now()
    in the task that ran the code was the second task's start, 12 s later."""

    def event(kind: str, second: int) -> HistoryEvent:
        return HistoryEvent(event_type=getattr(EventType, f"EVENT_TYPE_{kind}"), event_time=Timestamp(seconds=second))

    kinds = ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED"]
    timed_out = History(
        events=[event(k, 100) for k in kinds]
        + [event("WORKFLOW_TASK_TIMED_OUT", 110), event("WORKFLOW_TASK_SCHEDULED", 110)]
        + [event("WORKFLOW_TASK_STARTED", 112), event("WORKFLOW_TASK_COMPLETED", 112)]
        + [event("WORKFLOW_TASK_STARTED", 150), event("WORKFLOW_TASK_COMPLETED", 150)]
    )
    assert nb02._first_task_time(timed_out).timestamp() == 112
    first_time = History(events=[event(k, 100) for k in kinds] + [event("WORKFLOW_TASK_COMPLETED", 100)])
    assert nb02._first_task_time(first_time).timestamp() == 100


@pytest.mark.parametrize(
    ("body", "status", "hint"),
    [
        (T_SOLVED, "passed", "15 tickets: 15 different ids, agents picked at random"),
        (T_STUB, "not_done", "compute ticket_id, agent and due deterministically"),
        (T_ORIGINAL, "failed", "called uuid.uuid4(): use workflow.uuid4()"),
        (T_ONLY_CLOCK_LEFT, "failed", "called datetime.datetime.now(): use workflow.now()"),
        (T_FIXED_SEED, "failed", "15 of 15 tickets got the id"),
        (T_NO_OFFSET, "failed", "due should be 4 hours after"),
        (T_FIRST_AGENT, "failed", "all 15 tickets went to 'ada'; the agent should be picked at random"),
        (T_AGENT_BY_SUBJECT, "failed", "always went to the same agent: the pick depends on the subject"),
        (T_SANDBOX_OFF, "failed", "your workflow computes a different ticket_id"),
        (T_AGENT_BY_CLOCK, "failed", "went to"),  # in one second: all to one agent; straddling: one per second
        (T_ROUNDED_CLOCK, "passed", "every run replays to the same values"),
    ],
    ids=[
        "solved",
        "stub",
        "original",
        "clock-left",
        "fixed-seed",
        "no-offset",
        "first-agent",
        "agent-by-subject",
        "sandbox-off",
        "agent-by-clock",
        "rounded-clock",
    ],
)
def test_nb02_deterministic_ticket(body, status, hint, make_course, scratch, capsys):
    tickets = runtime.write_module(scratch, "tickets_t", fill(TICKETS, body=body))

    async def scenario():
        await make_course("02")
        await nb02.check_deterministic_ticket(tickets)

    asyncio.run(scenario())
    verdict = verdict_of(capsys)
    assert (verdict.exercise, verdict.status) == ("02.1", status), verdict
    assert hint in verdict.message, verdict.message
    if body == T_SANDBOX_OFF:
        assert "sandbox_unrestricted() only switches the sandbox's checks off" in verdict.message
        assert "Use workflow.uuid4()" in verdict.message and "workflow.now()." in verdict.message


# --------------------------------------------------------------------------- 02.2

SIGNUP = """
from datetime import timedelta
from temporalio import activity, workflow


@activity.defn
async def create_account(email: str) -> str:
    return f"account for {email}"


@activity.defn
async def verify_email(email: str) -> str:
    return f"verification link sent to {email}"


@activity.defn
async def send_welcome(email: str) -> str:
    return f"welcome mail sent to {email}"


@workflow.defn
class Signup:
    @workflow.run
    async def run(self, email: str) -> str:
        account = await workflow.execute_activity(create_account, email, start_to_close_timeout=timedelta(seconds=5))
        await workflow.execute_activity(send_welcome, email, start_to_close_timeout=timedelta(seconds=5))
        return account
"""

SIGNUP_V2 = """
from datetime import timedelta
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from signup_t import create_account, send_welcome, verify_email


@workflow.defn
class Signup:
    @workflow.run
    async def run(self, email: str) -> str:
        account = await workflow.execute_activity(create_account, email, start_to_close_timeout=timedelta(seconds=5))
<<body>>
        await workflow.execute_activity(send_welcome, email, start_to_close_timeout=timedelta(seconds=5))
        return account
"""
VERIFY = "await workflow.execute_activity(verify_email, email, start_to_close_timeout=timedelta(seconds=5))"
S_SOLVED = f"""        if workflow.patched("verify-email"):
            {VERIFY}"""
S_STUB = """        raise NotImplementedError('Exercise 02.2: call verify_email in new runs')"""
S_UNGUARDED = f"""        {VERIFY}"""
S_INVERTED = f"""        if not workflow.patched("verify-email"):
            {VERIFY}"""
S_DEPRECATED = f"""        workflow.deprecate_patch("verify-email")
        {VERIFY}"""


@pytest.mark.parametrize(
    ("body", "status", "hint"),
    [
        (S_SOLVED, "passed", "patch 'verify-email' recorded"),
        (S_STUB, "not_done", "call verify_email in new runs"),
        (S_UNGUARDED, "failed", "no longer replays on yours: [TMPRL1100] Nondeterminism error: Activity type"),
        (S_INVERTED, "failed", "but not verify_email"),
        (S_DEPRECATED, "failed", "no longer replays on yours"),
    ],
    ids=["solved", "stub", "unguarded", "inverted", "deprecated"],
)
def test_nb02_patched_signup(body, status, hint, make_course, scratch, capsys):
    signup = runtime.write_module(scratch, "signup_t", SIGNUP)
    signup_v2 = runtime.write_module(scratch, "signup_t2", fill(SIGNUP_V2, body=body))

    async def scenario():
        await make_course("02")
        await nb02.check_patched_signup(signup, signup_v2.Signup)

    asyncio.run(scenario())
    verdict = verdict_of(capsys)
    assert (verdict.exercise, verdict.status) == ("02.2", status), verdict
    assert hint in verdict.message, verdict.message
    if body == S_UNGUARDED:
        assert "Guard the new step with `if workflow.patched" in verdict.message
    if body == S_DEPRECATED:
        assert "deprecate_patch(...) is for the later cleanup, once no run recorded without the patch" in (
            verdict.message
        )
        assert "For now guard the new step with `if workflow.patched" in verdict.message


# --------------------------------------------------------------------------- 02.3


async def solved(workflow_cls: type, history_json: str) -> bool:
    hist = WorkflowHistory.from_json("replay-check", history_json)
    result = await Replayer(workflows=[workflow_cls]).replay_workflow(hist, raise_on_replay_failure=False)
    return result.replay_failure is None


async def stub(workflow_cls: type, history_json: str) -> bool:
    raise NotImplementedError("Exercise 02.3: replay the JSON history on workflow_cls")


async def lets_the_error_escape(workflow_cls: type, history_json: str) -> bool:
    await Replayer(workflows=[workflow_cls]).replay_workflow(WorkflowHistory.from_json("x", history_json))
    return True


async def forgets_await(workflow_cls: type, history_json: str) -> bool:
    hist = WorkflowHistory.from_json("x", history_json)
    result = Replayer(workflows=[workflow_cls]).replay_workflow(hist, raise_on_replay_failure=False)
    return result.replay_failure is None  # type: ignore[attr-defined]


async def always_true(workflow_cls: type, history_json: str) -> bool:
    return True


async def returns_the_result(workflow_cls: type, history_json: str) -> object:
    hist = WorkflowHistory.from_json("x", history_json)
    return await Replayer(workflows=[workflow_cls]).replay_workflow(hist, raise_on_replay_failure=False)


@pytest.mark.parametrize(
    ("fn", "status", "hint"),
    [
        (solved, "passed", "False when two activities swap places"),
        (stub, "not_done", "replay the JSON history on workflow_cls"),
        (lets_the_error_escape, "failed", "raised NondeterminismError for a change that swaps the two activities"),
        (
            forgets_await,
            "failed",
            "raised AttributeError: 'coroutine' object has no attribute 'replay_failure' for the unchanged code. "
            "Did you forget `await`?",
        ),
        (always_true, "failed", "said True for a change that swaps the two activities"),
        (returns_the_result, "failed", "should return True or False"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
def test_nb02_replays_ok(fn, status, hint, make_course, scratch, capsys):
    async def scenario():
        await make_course("02")
        await nb02.check_replays_ok(fn)

    asyncio.run(scenario())
    gc.collect()  # a coroutine left un-awaited warns when collected: here, inside the filter above
    verdict = verdict_of(capsys)
    assert (verdict.exercise, verdict.status) == ("02.3", status), verdict
    assert hint in verdict.message, verdict.message


def test_until_waits_for_an_event_and_is_bounded(make_course, scratch):
    orders = runtime.write_module(scratch, "orders_t", fill(ORDERS, first="charge", second="ship"))

    async def scenario():
        course = await make_course("02")
        await course.start_worker(workflows=[orders.ProcessOrder], activities=[orders.charge, orders.ship])
        handle = await course.start_workflow(orders.ProcessOrder.run, "A", show=False)
        await replay.until(handle, "ActivityTaskScheduled")
        await course.result(handle)
        await course.stop_all()
        with pytest.raises(runtime.CourseError, match="recorded no TimerStarted"):
            await replay.until(handle, "TimerStarted", timeout=2)

    asyncio.run(scenario())


def test_an_agent_derived_from_the_clock_below_a_second_is_told_apart():
    """Walkthrough finding: `AGENTS[int(workflow.time() * 1000) % len(AGENTS)]` passed 02.1."""
    from datetime import datetime, timedelta, timezone

    agents = ["ada", "bo", "cy"]
    start = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
    times = [start + timedelta(microseconds=137_000 * i + 1_000) for i in range(15)]
    by_ms = [agents[int(t.timestamp() * 1000) % 3] for t in times]
    assert nb02.clock_rule(agents, by_ms, times) == "int(time * 1000) % len(AGENTS)"
    by_second = [agents[t.second % 3] for t in times]
    assert nb02.clock_rule(agents, by_second, times) is not None
    varied = ["ada", "bo", "cy", "cy", "bo", "ada", "ada", "cy", "bo", "bo", "ada", "cy", "bo", "cy", "ada"]
    assert nb02.clock_rule(agents, varied, times) is None


def test_the_replay_picture_says_what_to_run_first_when_nothing_was_recorded():
    """Walkthrough finding: run out of order, the picture cell raised `max() arg is an empty sequence`."""
    with pytest.raises(runtime.CourseError, match="run the workflow cell above first"):
        replay.NotesTable([]).plot()


def test_the_replay_picture_puts_each_line_in_its_task():
    """Issue 7.12: 02 drew no picture; the replay grid (a column per workflow task) comes from the notes."""
    import matplotlib

    matplotlib.use("Agg")
    items = [
        replay.Note("workflow", False, "asks to charge", 3),
        replay.Note("activity", False, "charge ran"),
        replay.Note("workflow", True, "asks to charge", 3),
        replay.Note("workflow", False, "asks for a timer", 9),
        replay.Note("workflow", True, "asks to charge", 3),
        replay.Note("workflow", True, "asks for a timer", 9),
        replay.Note("workflow", False, "completes", 14),
    ]
    lines, tasks, cells = replay.NotesTable(items).grid()
    assert lines == ["asks to charge", "charge ran", "asks for a timer", "completes"] and tasks == 3
    assert [cells.get(("asks to charge", t)) for t in (1, 2, 3)] == ["live", "replaying", "replaying"]
    assert cells[("charge ran", 1)] == "activity" and ("charge ran", 2) not in cells
    assert cells[("completes", 3)] == "live"
    replay.NotesTable(items).plot(title="t")
