"""Notebook 07 (testing and operations): the billing world, pytest from a cell, the health signals, operations,
and the checks.

Demo and exercise code is taken from the solution notebook itself (and its generated stub), so the tests test what
a learner gets. Every check gets its solution, its stub, two correct answers in other styles, and plausible wrong
answers, each of which must get its own verdict. The test-writing checks run real pytest in subprocesses.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import run_check, solution
from temporalio.worker import Replayer, Worker

from helpers import contract, health, kernel, operations, pytest_runs, replay, server
from helpers.billing_world import ALWAYS, BillingWorld
from helpers.checks import nb07

NB = solution("07")
CHECK_BUDGET_S = 9.5 * contract.budget_stretch()  # a check cell's budget is 10 s (on a machine of its own)


def code_modules(scratch: Path) -> tuple[Any, Any]:
    """The notebook's billing and dunning modules, as their cells write them."""
    return NB.module(scratch, "billing-module"), NB.module(scratch, "dunning-module")


def define(source: str) -> dict[str, Any]:
    """Run a plain code cell's source (an exercise that defines a function) and return its names."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<exercise cell>", "exec"), namespace)
    return namespace


# --------------------------------------------------------------------------- the world


def test_cards_decline_fail_and_charge_as_set_up_and_every_call_is_recorded(tmp_path: Path):
    world = BillingWorld(tmp_path / "b.db")
    world.add_customer("ok")
    world.add_customer("twice", declines=2)
    world.add_customer("never", declines=ALWAYS)
    world.add_customer("down", unavailable=1, locale="nb")

    async def scenario():
        assert await world.charge("i1", "ok", 4200) == "i1-charge-1"
        assert [await world.charge("i2", "twice", 4200) for _ in range(3)] == [None, None, "i2-charge-1"]
        assert [await world.charge("i3", "never", 4200) for _ in range(4)] == [None] * 4
        with pytest.raises(ConnectionError, match="503"):
            await world.charge("i4", "down", 4200)
        assert await world.charge("i4", "down", 4200) == "i4-charge-1"
        assert await world.charge("i4", "down", 4200) == "i4-charge-2"  # the ledger counts every charge
        world.mailer_down("i1", "receipt", times=2)
        await world.send_mail("i1", "ok", "reminder", "r")  # another kind of mail is not affected
        for _ in range(2):
            with pytest.raises(ConnectionError, match="connection reset"):
                await world.send_mail("i1", "ok", "receipt", "x")
        await world.send_mail("i1", "ok", "receipt", "paid")
        await world.suspend("never", "i3")

    asyncio.run(scenario())
    assert world.charges("i4") == ["i4-charge-1", "i4-charge-2"] and world.charges("i3") == []
    assert [m.kind for m in world.mails("i1")] == ["reminder", "receipt"]
    assert world.suspended("never") and not world.suspended("ok")
    table = repr(world.invoices(["i1", "i2", "i3", "i4"]))
    assert "declined ×2, charged 42.00" in table and "failed: 503 Service Unavailable, charged 42.00 ×2" in table
    assert "sent reminder, failed: receipt not sent, connection reset ×2, sent receipt" in table
    assert "declined ×4" in table and "account suspended" in table
    assert "<table" in world.invoices(["i1"])._repr_html_()
    world.add_customer("twice", declines=2)  # adding again starts the customer afresh
    assert asyncio.run(world.charge("i5", "twice", 1)) is None


# --------------------------------------------------------------------------- pytest from a cell

PASSING = """
import asyncio

import dunning


async def test_async_tests_run_in_an_event_loop():
    await asyncio.sleep(0)
    assert dunning.VERSION == "today"


def test_fixtures_work(tmp_path):
    assert tmp_path.exists()
"""


def test_a_run_copies_the_module_replaces_versions_and_reports_each_test(make_course, scratch):
    kernel.write_module(scratch, "dunning", 'VERSION = "today"\n')
    tests = kernel.write_module(scratch, "test_versions", PASSING)

    async def scenario():
        await make_course("07")
        return await pytest_runs.run_versions(
            tests, {"today": {}, "tomorrow": {"dunning": 'VERSION = "tomorrow"\n'}}, timeout=30
        )

    runs = asyncio.run(scenario())
    today, tomorrow = runs["today"], runs["tomorrow"]
    assert today.passed and today.exit_code == 0 and len(today.results) == 2, today
    assert repr(today).startswith("$ python -m pytest -q -rfEp --tb=short test_versions.py\n")
    assert "PASSED test_versions.py::test_async_tests_run_in_an_event_loop" in today.output
    assert " passed in " in today.output and "Traceback" not in today.output
    assert not tomorrow.passed and tomorrow.summary().startswith("1 of 2 failed: AssertionError")
    assert "test_versions.py" in tomorrow.output and "WARN" not in tomorrow.output
    header, first, second = repr(runs).splitlines()
    assert header.split() == ["code", "under", "test", "pytest", "says"] and first.split() == ["today", "2", "passed"]
    assert second.startswith("tomorrow") and second.endswith(tomorrow.summary())


def test_a_run_that_hangs_is_stopped_and_a_module_without_tests_says_so(make_course, scratch):
    hangs = kernel.write_module(scratch, "test_hangs", "import time\n\ndef test_forever():\n    time.sleep(60)\n")
    empty = kernel.write_module(scratch, "test_empty", "def helper():\n    return 1\n")
    broken = kernel.write_module(scratch, "test_broken", "def test_x():\n    pass\n")
    (scratch / "test_broken.py").write_text("import no_such_module\n")

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        hung = await pytest_runs.run(hangs, timeout=4)
        took = time.monotonic() - started
        return hung, took, await pytest_runs.run(empty), await pytest_runs.run(broken)

    hung, took, nothing, broken_run = asyncio.run(scenario())
    assert hung.timed_out and not hung.passed and took < 8 and "stopped after 4 s" in hung.output
    assert hung.summary() == "stopped: pytest did not finish in time"
    assert not nothing.passed and nothing.results == [] and nothing.summary().startswith("no test ran")
    assert broken_run.failures and broken_run.failures[0].outcome == "error"
    assert "no_such_module" in broken_run.failures[0].message


def test_the_report_is_the_same_on_a_ci_machine(make_course, scratch, monkeypatch):
    # pytest stops truncating the short summary's messages when CI or BUILD_NUMBER is set: the notebook's stored
    # report must still match what a CI run prints
    long = "x" * 200
    wordy = kernel.write_module(scratch, "test_wordy", f"def test_long_message():\n    assert False, {long!r}\n")

    async def scenario():
        await make_course("07")
        here = await pytest_runs.run(wordy)
        monkeypatch.setenv("CI", "true")
        monkeypatch.setenv("BUILD_NUMBER", "7")
        return here, await pytest_runs.run(wordy)

    here, on_ci = asyncio.run(scenario())
    summary = [line for line in here.output.splitlines() if line.startswith("FAILED")]
    assert summary and summary[0].endswith("...") and len(summary[0]) <= int(pytest_runs.COLUMNS)
    assert on_ci.output.splitlines()[:-1] == here.output.splitlines()[:-1]  # all but "1 failed in 0.52s"


ORPHAN_PARENT = """
import os, subprocess, sys
env = {**os.environ, "COURSE_PYTEST_PARENT": str(os.getpid()), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
child = subprocess.Popen(
    [sys.executable, "-m", "pytest", "-q", "-p", "helpers.pytest_plugin", "test_hangs.py"],
    cwd=sys.argv[1], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
os._exit(0)  # a kernel that dies without stopping its pytest run
"""


def test_a_run_whose_kernel_died_is_killed(tmp_path: Path):
    (tmp_path / "test_hangs.py").write_text("import time\n\ndef test_forever():\n    time.sleep(60)\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN_PARENT, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and server._pid_alive(pid):
        time.sleep(0.1)
    assert not server._pid_alive(pid), "the orphaned pytest run is still alive"


def test_the_notebooks_own_tests_pass_in_a_few_seconds(make_course, scratch):
    code_modules(scratch)
    tests = NB.module(scratch, "test-module")

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        run = await pytest_runs.run(tests)
        return run, time.monotonic() - started

    run, took = asyncio.run(scenario())
    assert run.passed and len(run.results) == 4, run
    assert took < CHECK_BUDGET_S
    # time skipped: six days of dunning in the workflow test, and the activity tests ran without a server
    assert {r.test.split("::")[1] for r in run.results} == {
        "test_a_customer_who_never_pays_is_suspended_after_three_tries",
        "test_statements_heartbeat_after_each_customer",
        "test_a_retry_resumes_after_the_last_heartbeat",
        "test_a_cancelled_run_stops_between_two_customers",
    }


# --------------------------------------------------------------------------- the demos: gate, dashboard, operations


def test_the_gate_passes_on_todays_code_and_stops_apply_credit_with_the_reason(make_course, scratch):
    billing, dunning = code_modules(scratch)
    gate = NB.module(scratch, "ex2-code")
    v2 = NB.module(scratch, "v2-module")

    async def scenario():
        course = await make_course("07")
        ns = {"course": course, "asyncio": asyncio, "billing": billing, "dunning": dunning, "ALWAYS": ALWAYS}
        await NB.run_cell("real-runs", ns)
        ns |= {"pytest_runs": pytest_runs, "test_replay": gate, "dunning_v2": v2, "Replayer": Replayer}
        await NB.run_cell("gate-run", ns)
        await NB.run_cell("gate-why", ns | {"replay": replay})
        history = await course.client.get_workflow_handle(ns["invoices"][1].id).fetch_history()
        result = await Replayer(workflows=[v2.Dunning]).replay_workflow(history, raise_on_replay_failure=False)
        await course.stop_all()
        return ns, replay.reason(result.replay_failure)

    ns, reason = asyncio.run(scenario())
    gate_runs = ns["gate"]
    assert gate_runs["today's Dunning"].passed
    failed = gate_runs["Dunning with apply_credit"]
    assert failed.summary() == "1 of 1 failed: AssertionError: 4 of 4 recorded runs do not replay on this code"
    assert "[TMPRL1100]" in reason and "'charge'" in reason and "'apply_credit'" in reason


def test_the_dashboard_counts_what_visibility_and_the_metrics_say_and_draws_four_labelled_panels(
    make_course, scratch, tmp_path
):
    billing, dunning = code_modules(scratch)

    async def scenario():
        course = await make_course("07")
        metered = await health.metered_client(course.target, purpose="test-dashboard")
        queue = course.new_task_queue("dash")
        await health.start_worker(
            course, metered, task_queue=queue, workflows=[dunning.Dunning], activities=billing.ACTIVITIES
        )
        billing.world.add_customer("d-ok")
        billing.world.add_customer("d-down", unavailable=2)
        billing.world.add_customer("d-nb", declines=1, locale="nb")  # its reminder keeps failing
        dashboard = health.Dashboard(metered, queue, title="test")
        async with dashboard:
            for name in ("d-ok", "d-down", "d-nb"):
                invoice = billing.Invoice(course.new_id("inv"), name, 100, locale="nb" if name == "d-nb" else "en")
                await course.start_workflow(dunning.Dunning.run, invoice, id=invoice.id, task_queue=queue, show=False)
            settled = await dashboard.settle(quiet_for=1.0, timeout=15)
        await course.stop_all()
        return dashboard, settled

    dashboard, settled = asyncio.run(scenario())
    s = dashboard.signals
    assert settled and s.counts == {"Running": 1, "Completed": 2}
    assert s.attempts["charge"] == 5 and s.failures["charge"] == 2 and s.failure_rate("charge") == 2 / 5
    assert s.failures["send_reminder"] >= 1 and s.failure_rate("send_reminder") == 1.0
    assert len(s.durations) == 2 and all(0 < d < 10 for d in s.durations)
    assert dashboard.status_line() == "3 runs on the task queue (visibility): 1 running, 2 completed, 0 failed"
    fig = dashboard.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and all(titles) and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert any("GROUP BY ExecutionStatus" in t for t in titles) and any("endtoend" in t for t in titles)
    png = dashboard.png()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    (tmp_path / "dashboard.png").write_bytes(png)


def test_status_counts_wait_for_visibility_to_list_the_runs_just_awaited_as_closed(make_course, scratch, monkeypatch):
    """A run whose result was just awaited can still be listed as Running (07's strict ops-reset output read
    {'Running': 1, 'Completed': 23, ...} once under load): with running=0 the counts wait, bounded, for visibility."""
    billing, dunning = code_modules(scratch)
    monkeypatch.setattr(health, "SETTLE_S", 1.0)

    async def scenario():
        course = await make_course("07")
        queue = course.new_task_queue("counts")
        await course.start_worker(workflows=[dunning.Dunning], activities=billing.ACTIVITIES, task_queue=queue)
        billing.world.add_customer("c-ok")
        query = f"TaskQueue = '{queue}'"
        invoice = billing.Invoice(course.new_id("inv"), "c-ok", 100)
        await course.run(dunning.Dunning.run, invoice, id=invoice.id, task_queue=queue, show=False)
        settled = await health.status_counts(course.client, query, running=0)
        started = time.monotonic()
        never = await health.status_counts(course.client, query, running=5)  # never true: bounded, then as is
        took = time.monotonic() - started
        await course.stop_all()
        return settled, never, took

    settled, never, took = asyncio.run(scenario())
    assert settled == {"Completed": 1} and never == {"Completed": 1}
    assert 0.9 < took < 4


def test_prometheus_serves_the_same_counters_on_loopback(make_course, scratch):
    billing, dunning = code_modules(scratch)

    async def scenario():
        course = await make_course("07")
        ns = {
            "course": course,
            "asyncio": asyncio,
            "billing": billing,
            "dunning": dunning,
            "world": billing.world,
            "health": health,
            "Worker": Worker,
        }
        await NB.run_cell("prometheus", ns)
        return ns

    ns = asyncio.run(scenario())
    assert ns["endpoint"].address.startswith("127.0.0.1:")
    lines = ns["lines"]
    failed = [line for line in lines if line.startswith("temporal_activity_execution_failed{")]
    assert len(failed) == 1 and 'activity_type="charge"' in failed[0] and failed[0].endswith(" 1")
    assert any(line.startswith("temporal_workflow_completed{") and line.endswith(" 3") for line in lines)
    assert any('activity_type="charge"' in line and line.endswith(" 5") for line in lines)  # 3 + 1 retry + 1 decline


def test_operations_find_why_reset_and_the_cli(make_course, scratch):
    billing, dunning = code_modules(scratch)
    reset_point = define(NB.source("ex4-code"))["reset_point"]

    async def scenario():
        course = await make_course("07")
        registered = await operations.ensure_search_attributes(course.client, {"CustomerId": "Keyword"})
        again = await operations.ensure_search_attributes(course.client, {"CustomerId": "Keyword"})
        await course.start_worker(workflows=[dunning.Dunning], activities=billing.ACTIVITIES)
        billing.world.add_customer("o-nb", declines=1, locale="nb")
        billing.world.add_customer("o-receipt")
        stuck = billing.Invoice(course.new_id("inv"), "o-nb", 100, locale="nb", retry_every_s=0.05)
        failing = billing.Invoice(course.new_id("inv"), "o-receipt", 100)
        billing.world.mailer_down(failing.id, "receipt", times=3)
        for invoice in (stuck, failing):
            await course.start_workflow(dunning.Dunning.run, invoice, id=invoice.id, show=False)
        with pytest.raises(Exception, match="failed"):
            await course.result(course.client.get_workflow_handle(failing.id), 10)
        for _ in range(100):
            why_stuck = await operations.why(course.client, stuck.id)
            if why_stuck.pending and why_stuck.pending[0][1] >= 2:
                break
            await asyncio.sleep(0.1)
        why_failed = await operations.why(course.client, failing.id)
        query = f"TaskQueue = '{course.task_queue}'"
        found = await operations.find(course.client, query, attributes=["CustomerId"])
        counted = await operations.cli("workflow", "count", "--query", f"{query} GROUP BY ExecutionStatus")
        history = await course.client.get_workflow_handle(failing.id).fetch_history()
        new_run = await operations.reset(course.client, failing.id, reset_point(history), "test")
        outcome = await course.result(course.client.get_workflow_handle_for(dunning.Dunning.run, failing.id), 10)
        refused = await operations.cli("workflow", "terminate", "--workflow-id", "no-such-run", "--reason", "x")
        await course.client.get_workflow_handle(stuck.id).terminate("test over")
        await course.stop_all()
        return registered, again, why_stuck, why_failed, found, counted, new_run, outcome, refused

    registered, again, why_stuck, why_failed, found, counted, new_run, outcome, refused = asyncio.run(scenario())
    assert registered == again == {"CustomerId": "Keyword"}
    assert why_stuck.status == "RUNNING" and why_stuck.pending[0][0] == "send_reminder"
    assert why_stuck.pending[0][2] == "KeyError: 'nb'" and "attempt" in repr(why_stuck)
    assert why_failed.status == "FAILED"
    assert why_failed.failure == (
        "ActivityError(MAXIMUM_ATTEMPTS_REACHED) ← ApplicationError(ConnectionError): mailer: connection reset"
    )
    assert [r.status for r in found] == ["RUNNING", "FAILED"] and found[0].attributes == {"CustomerId": ""}
    assert counted.ok and counted.command.startswith('temporal workflow count --query "TaskQueue = ')
    assert "Group total: 1, values: Failed" in counted.output and "Group total: 1, values: Running" in counted.output
    assert new_run and outcome.status == "paid" and outcome.tries == 1
    assert not refused.ok and "workflow not found" in refused.output


def test_search_attributes_of_an_unknown_kind_are_refused_before_the_server_is_asked():
    with pytest.raises(Exception, match="Unknown search attribute kind"):
        asyncio.run(operations.ensure_search_attributes(None, {"X": "Number"}))  # type: ignore[arg-type]


def test_a_demo_that_uses_an_unfinished_answer_says_so_in_one_line(capsys):
    with nb07.uses_answer("07.4"):
        raise NotImplementedError("Exercise 07.4: return the id")
    assert capsys.readouterr().out == (
        "This cell uses your answer to exercise 07.4, which is not done yet; come back once it passes.\n"
    )
    with pytest.raises(NotImplementedError), nb07.uses_answer("07.4"):
        raise NotImplementedError("Exercise 07.3: another exercise's stub is not this one")


# --------------------------------------------------------------------------- 07.1 a time-skipping test

TEST_FIELDS = """
reminders, receipts = [], []
answers = iter([None, None, "ch-9"])

@activity.defn(name="charge")
async def charge(invoice: Invoice) -> str | None:
    return next(answers)

@activity.defn(name="send_reminder")
async def send_reminder(invoice: Invoice, tries: int) -> None:
    reminders.append(tries)

@activity.defn(name="send_receipt")
async def send_receipt(invoice: Invoice, charge_id: str, late_fee_cents: int) -> None:
    receipts.append((charge_id, late_fee_cents))

env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER)
try:
    worker = Worker(env.client, task_queue="q", workflows=[Dunning], activities=[charge, send_reminder, send_receipt])
    async with worker:
        outcome = await env.client.execute_workflow(Dunning.run, Invoice("i", "c", 100), id="i", task_queue="q")
finally:
    await env.shutdown()
assert outcome.status == "paid" and outcome.tries == 3
assert outcome.days_late == 6 and outcome.late_fee_cents == 300
assert reminders == [1, 2]
assert receipts == [("ch-9", 300)]
"""

TEST_CLOCK = """
when = []  # the skipped clock, as the test server tells the activities

@activity.defn(name="charge")
async def charge(invoice: Invoice) -> str | None:
    when.append(activity.info().current_attempt_scheduled_time)
    return "ok" if len(when) == 3 else None

class Mailbox:
    def __init__(self):
        self.sent = []

    @activity.defn(name="send_reminder")
    async def reminder(self, invoice: Invoice, tries: int) -> None:
        self.sent.append("reminder")

    @activity.defn(name="send_receipt")
    async def receipt(self, invoice: Invoice, charge_id: str, late_fee_cents: int) -> None:
        self.sent.append(f"receipt {late_fee_cents}")

box = Mailbox()
async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER) as env:
    async with Worker(env.client, task_queue="q", workflows=[Dunning], activities=[charge, box.reminder, box.receipt]):
        await env.client.execute_workflow(Dunning.run, Invoice("i", "c", 100), id="i", task_queue="q")
assert [round((b - a).total_seconds() / 86400) for a, b in zip(when, when[1:])] == [3, 3]
assert box.sent == ["reminder", "reminder", "receipt 300"]
"""

TEST_NOTHING = """
@activity.defn(name="charge")
async def charge(invoice: Invoice) -> str | None:
    return "ok"

@activity.defn(name="send_reminder")
async def send_reminder(invoice: Invoice, tries: int) -> None:
    pass

@activity.defn(name="send_receipt")
async def send_receipt(invoice: Invoice, charge_id: str, late_fee_cents: int) -> None:
    pass

mocks = [charge, send_reminder, send_receipt]
async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER) as env:
    async with Worker(env.client, task_queue="q", workflows=[Dunning], activities=mocks):
        await env.client.execute_workflow(Dunning.run, Invoice("i", "c", 100), id="i", task_queue="q")
"""

TEST_OUTCOME_ONLY = NB.solution_body("ex1-code").replace(
    'assert mails == ["reminder 1", "reminder 2", "receipt ch_1, late fee 300"]', ""
)
TEST_STATUS_AND_DAYS = TEST_FIELDS.replace(
    "assert outcome.days_late == 6 and outcome.late_fee_cents == 300\nassert reminders == [1, 2]\n"
    'assert receipts == [("ch-9", 300)]',
    "assert outcome.days_late == 6",
)
TEST_WRONG_FEE = NB.solution_body("ex1-code").replace("late_fee_cents=300", "late_fee_cents=600")
TEST_NO_RECEIPT_MOCK = NB.solution_body("ex1-code").replace(
    "mocks = [charge, send_reminder, send_receipt]", "mocks = [charge, send_reminder]"
)
TEST_NO_REMINDER_MOCK = NB.solution_body("ex1-code").replace(
    "mocks = [charge, send_reminder, send_receipt]", "mocks = [charge, send_receipt]"
)
for _wrong in (TEST_OUTCOME_ONLY, TEST_STATUS_AND_DAYS, TEST_WRONG_FEE, TEST_NO_RECEIPT_MOCK, TEST_NO_REMINDER_MOCK):
    assert _wrong not in (NB.solution_body("ex1-code"), TEST_FIELDS)  # the solution changed: update the edit


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "fails on each broken version (no wait between tries, no reminders, no late fee)"),
        ("fields", "passed", "your test passes on the notebook's Dunning and fails on each broken version"),
        ("clock", "passed", "your test passes on the notebook's Dunning and fails on each broken version"),
        ("stub", "not_done", "mock charge (declined twice, then a charge id) and the mails; run Dunning"),
        ("nothing", "failed", "your test passes whatever the workflow does: also on a Dunning that does not wait"),
        ("outcome-only", "failed", "also passes on a Dunning that sends no reminders: record what your send_reminder"),
        ("status-and-days", "failed", "also passes on a Dunning that sends no reminders"),
        ("wrong-fee", "failed", "your test fails on the notebook's Dunning, which is right: AssertionError"),
        ("no-receipt-mock", "failed", "WorkflowFailureError: Workflow execution failed. The workflow itself failed"),
    ],
)
def test_nb07_time_skipping_test(variant, status, hint, make_course, scratch, capsys):
    _, dunning = code_modules(scratch)
    bodies = {
        "fields": TEST_FIELDS,
        "clock": TEST_CLOCK,
        "nothing": TEST_NOTHING,
        "outcome-only": TEST_OUTCOME_ONLY,
        "status-and-days": TEST_STATUS_AND_DAYS,
        "wrong-fee": TEST_WRONG_FEE,
        "no-receipt-mock": TEST_NO_RECEIPT_MOCK,
    }
    if variant in bodies:
        tests = kernel.write_module(scratch, "test_dunning", NB.with_solution("ex1-code", bodies[variant]))
    else:
        tests = NB.module(scratch, "ex1-code", learner=variant == "stub")

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        await nb07.check_time_skipping_test(tests, dunning)
        assert time.monotonic() - started < CHECK_BUDGET_S

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("07.1", status), verdict
    assert hint in verdict.message, verdict.message


def test_nb07_a_test_that_hangs_on_the_right_code_is_stopped_and_named(make_course, scratch, capsys, monkeypatch):
    """No mock for send_reminder: the workflow retries an activity nobody serves forever, and the test never ends."""
    monkeypatch.setattr(nb07, "PYTEST_TIMEOUT_S", 6.0)
    _, dunning = code_modules(scratch)
    tests = kernel.write_module(scratch, "test_dunning", NB.with_solution("ex1-code", TEST_NO_REMINDER_MOCK))

    async def scenario():
        await make_course("07")
        await nb07.check_time_skipping_test(tests, dunning)

    verdict = run_check(scenario, capsys=capsys)
    assert verdict.status == "failed" and "did not finish within 6 s on the notebook's Dunning" in verdict.message
    assert "an activity no mock stands in for" in verdict.message


def test_nb07_the_broken_versions_are_made_from_the_notebooks_code(scratch):
    _, dunning = code_modules(scratch)
    source = nb07.dunning_source(dunning)
    for name, bug in nb07.TEST_BUGS.items():
        changed = bug.make(source)
        assert changed != source and compile(changed, name, "exec")
    assert nb07.GATE_BREAKER.make(source).index(nb07.SLEEP) < nb07.GATE_BREAKER.make(source).index(nb07.REMINDER)
    edited = kernel.write_module(scratch, "dunning", source.replace(nb07.FEE, "fee = 50 * days_late"))
    with pytest.raises(nb07.Wrong, match="not as the notebook gives it"):
        nb07.dunning_source(edited)


# --------------------------------------------------------------------------- 07.2 the replay gate

GATE_RAISES = """
histories = [history async for history in client.list_workflows(RECORDED_RUNS).map_histories()]
assert histories, "nothing to replay"

async def each():
    for history in histories:
        yield history

await Replayer(workflows=[Dunning]).replay_workflows(each())  # raises the first NondeterminismError
"""

GATE_ITERATOR = """
replayed = 0
async for execution in client.list_workflows(RECORDED_RUNS):
    history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
    result = await Replayer(workflows=[Dunning]).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{execution.id} does not replay"
    replayed += 1
assert replayed >= 1
"""

GATE_NEVER_LOOKS = """
histories = client.list_workflows(RECORDED_RUNS).map_histories()
await Replayer(workflows=[Dunning]).replay_workflows(histories, raise_on_replay_failure=False)
"""

GATE_WRONG_QUERY = """
histories = client.list_workflows("WorkflowType = 'dunning'").map_histories()  # (wrong) the type's case
results = await Replayer(workflows=[Dunning]).replay_workflows(histories, raise_on_replay_failure=False)
assert not results.replay_failures
"""

GATE_INVERTED = """
histories = client.list_workflows(RECORDED_RUNS).map_histories()
results = await Replayer(workflows=[Dunning]).replay_workflows(histories, raise_on_replay_failure=False)
assert results.replay_failures, "expected failures"
"""


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "your gate passes on the code that recorded the runs and fails on a change"),
        ("raises", "passed", "your gate passes on the code that recorded the runs"),
        ("iterator", "passed", "your gate passes on the code that recorded the runs"),
        ("stub", "not_done", "count the runs RECORDED_RUNS finds (fail if none), replay their histories on Dunning"),
        ("never-looks", "failed", "your test passes on a Dunning that sends the reminder after the wait"),
        ("wrong-query", "failed", "does it replay the histories RECORDED_RUNS finds, and fail when one does not"),
        ("inverted", "failed", "your test fails on the code that recorded the runs (it replays them all)"),
    ],
)
def test_nb07_replay_gate(variant, status, hint, make_course, scratch, capsys):
    billing, dunning = code_modules(scratch)
    bodies = {
        "raises": GATE_RAISES,
        "iterator": GATE_ITERATOR,
        "never-looks": GATE_NEVER_LOOKS,
        "wrong-query": GATE_WRONG_QUERY,
        "inverted": GATE_INVERTED,
    }
    if variant in bodies:
        gate = kernel.write_module(scratch, "test_replay", NB.with_solution("ex2-code", bodies[variant]))
    else:
        gate = NB.module(scratch, "ex2-code", learner=variant == "stub")

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        await nb07.check_replay_gate(gate, dunning, billing)
        assert time.monotonic() - started < CHECK_BUDGET_S

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("07.2", status), verdict
    assert hint in verdict.message, verdict.message


# --------------------------------------------------------------------------- 07.3 a failure rate

RATE_COMPREHENSIONS = """
mine = [u for u in updates if u.attributes.get("activity_type") == activity_type]
attempts = sum(1 for u in mine if u.metric.name == "temporal_activity_execution_latency")
failed = sum(u.value for u in mine if u.metric.name == "temporal_activity_execution_failed")
return 0.0 if attempts == 0 else failed / attempts
"""

RATE_BY_KIND = """
from collections import Counter

from temporalio.runtime import BUFFERED_METRIC_KIND_COUNTER, BUFFERED_METRIC_KIND_HISTOGRAM

seen = Counter()
for u in updates:
    name = u.metric.name
    if u.attributes.get("activity_type") != activity_type or not name.startswith("temporal_activity_execution"):
        continue
    if u.metric.kind == BUFFERED_METRIC_KIND_HISTOGRAM and u.metric.name.endswith("_latency"):
        seen["attempts"] += 1
    elif u.metric.kind == BUFFERED_METRIC_KIND_COUNTER and u.metric.name.endswith("_failed"):
        seen["failed"] += u.value
try:
    return seen["failed"] / seen["attempts"]
except ZeroDivisionError:
    return 0.0
"""

RATE_POOLED = """
attempts = sum(1 for u in updates if u.metric.name == "temporal_activity_execution_latency")
failed = sum(u.value for u in updates if u.metric.name == "temporal_activity_execution_failed")
return failed / attempts if attempts else 0.0
"""

RATE_PER_SUCCESS = NB.solution_body("ex3-code").replace(
    "return failed / attempts if attempts else 0.0", "return failed / (attempts - failed) if attempts else 0.0"
)
RATE_DIVIDES_BY_ZERO = NB.solution_body("ex3-code").replace(
    "return failed / attempts if attempts else 0.0", "return failed / attempts"
)
RATE_PERCENT = NB.solution_body("ex3-code").replace(
    "return failed / attempts if attempts else 0.0", "return 100 * failed / attempts if attempts else 0.0"
)
for _wrong in (RATE_PER_SUCCESS, RATE_DIVIDES_BY_ZERO, RATE_PERCENT):
    assert _wrong != NB.solution_body("ex3-code")  # the solution changed: update the edit


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "your rates match what the card gateway and the mailer saw: charge 2 of 7"),
        ("comprehensions", "passed", "charge 2 of 7 attempts failed, send_receipt 1 of 5"),
        ("by-kind", "passed", "charge 2 of 7 attempts failed, send_receipt 1 of 5"),
        ("stub", "not_done", "the share of activity_type's attempts that failed, from the SDK's metric updates"),
        ("pooled", "failed", "the rate of all activities together; the services saw 2 of its 7 attempts fail"),
        ("per-success", "failed", "failures divided by successful attempts; the services saw 2 of its 7 attempts"),
        ("divides-by-zero", "failed", "raised ZeroDivisionError: an activity that never ran has no attempts"),
        ("percent", "failed", "a percentage: return a share between 0 and 1"),
    ],
)
def test_nb07_failure_rate(variant, status, hint, make_course, scratch, capsys):
    billing, dunning = code_modules(scratch)
    bodies = {
        "comprehensions": RATE_COMPREHENSIONS,
        "by-kind": RATE_BY_KIND,
        "pooled": RATE_POOLED,
        "per-success": RATE_PER_SUCCESS,
        "divides-by-zero": RATE_DIVIDES_BY_ZERO,
        "percent": RATE_PERCENT,
    }
    if variant in bodies:
        source = NB.with_solution("ex3-code", bodies[variant])
    else:
        source = NB.source("ex3-code", learner=variant == "stub")
    failure_rate = define(source)["failure_rate"]

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        await nb07.check_failure_rate(failure_rate, dunning, billing)
        assert time.monotonic() - started < CHECK_BUDGET_S

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("07.3", status), verdict
    assert hint in verdict.message, verdict.message


def test_nb07_the_rates_come_from_one_update_per_attempt(make_course, scratch):
    billing, dunning = code_modules(scratch)

    async def scenario():
        await make_course("07")
        return await nb07.metered_updates(dunning, billing)

    updates, truth = asyncio.run(scenario())
    assert truth == {"charge": (2, 7), "send_reminder": (0, 1), "send_receipt": (1, 5), "suspend_account": (0, 0)}
    attempts = [u for u in updates if u.metric.name == health.ATTEMPTS and u.attributes["activity_type"] == "charge"]
    assert len(attempts) == 7


# --------------------------------------------------------------------------- 07.4 a reset point

RESET_AFTER_CHARGE = """
events = list(history.events)

def activity_type(scheduled_id):
    scheduled = next(e for e in events if e.event_id == scheduled_id)
    return scheduled.activity_task_scheduled_event_attributes.activity_type.name

charged = [
    e.event_id
    for e in events
    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    and activity_type(e.activity_task_completed_event_attributes.scheduled_event_id) == "charge"
]
return next(
    e.event_id
    for e in events
    if e.event_id > charged[-1] and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
)
"""

RESET_BACKWARDS = """
events = list(history.events)
receipt = max(
    i for i, e in enumerate(events)
    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    and e.activity_task_scheduled_event_attributes.activity_type.name == "send_receipt"
)
for event in reversed(events[:receipt]):
    if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
        return event.event_id
"""

RESET_FIRST_TASK = """
return next(e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
"""

RESET_LAST_TASK = """
return [e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED][-1]
"""

RESET_ACTIVITY_EVENT = """
return [e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED][-1]
"""

RESET_AFTER_FIRST_CHARGE = """
events = list(history.events)
done = next(e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
tasks = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
return next(task for task in tasks if task > done)
"""


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "each failed run was reset to the workflow task right after its charge"),
        ("after-charge", "passed", "every customer was charged once"),
        ("backwards", "passed", "every customer was charged once"),
        ("stub", "not_done", "return the id of the event that ended the workflow task right after the charge"),
        ("first-task", "failed", "the customer paid on the first try was charged 2 times: that point comes before"),
        ("last-task", "failed", "failed again: that point comes after send_receipt was scheduled"),
        ("activity-event", "failed", "the server refused to reset the run of the customer paid on the first try"),
        ("after-first-charge", "failed", "the customer paid on the second try was charged 2 times"),
    ],
)
def test_nb07_reset_point(variant, status, hint, make_course, scratch, capsys):
    billing, dunning = code_modules(scratch)
    bodies = {
        "after-charge": RESET_AFTER_CHARGE,
        "backwards": RESET_BACKWARDS,
        "first-task": RESET_FIRST_TASK,
        "last-task": RESET_LAST_TASK,
        "activity-event": RESET_ACTIVITY_EVENT,
        "after-first-charge": RESET_AFTER_FIRST_CHARGE,
    }
    if variant in bodies:
        source = NB.with_solution("ex4-code", bodies[variant])
    else:
        source = NB.source("ex4-code", learner=variant == "stub")
    reset_point = define(source)["reset_point"]

    async def scenario():
        await make_course("07")
        started = time.monotonic()
        await nb07.check_reset_point(reset_point, dunning, billing)
        assert time.monotonic() - started < CHECK_BUDGET_S

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("07.4", status), verdict
    assert hint in verdict.message, verdict.message
