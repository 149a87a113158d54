"""Verdicts: every outcome of a check is one parseable line; notebook 00's checks against real runs."""

from __future__ import annotations

import asyncio

import pytest
from support import run_check

from helpers import checks, runtime
from helpers.checks import nb00


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        (NotImplementedError("Exercise 09.1: write the thing"), "not_done", "write the thing"),
        (checks.NotDone("set X"), "not_done", "set X"),
        (checks.Wrong("X should be 2"), "failed", "X should be 2"),
        (ZeroDivisionError("division by zero"), "failed", "raised ZeroDivisionError: division by zero"),
        (
            runtime.WorkflowTaskFailed(
                "m", failure="NotImplementedError: Exercise 09.1: do it (m.py line 3, in run)", workflow_id="w"
            ),
            "not_done",
            "do it",
        ),
        (
            runtime.WorkflowTaskFailed("m", failure="NameError: x (m.py line 3, in run)", workflow_id="w"),
            "failed",
            "your workflow code raised NameError: x",
        ),
    ],
)
def test_every_outcome_is_a_verdict_line(error, status, text, capsys):
    @checks.exercise("09.1")
    def check():
        raise error

    verdict = run_check(check, capsys=capsys)
    assert verdict.status == status and text in verdict.message


def test_a_check_that_hangs_is_cut_off(capsys):
    @checks.exercise("09.2", timeout=0.3)
    async def check():
        await asyncio.sleep(60)

    verdict = run_check(check, capsys=capsys)
    assert verdict.status == "failed" and "gave up after 0.3 s" in verdict.message


def test_parse_round_trips():
    for status in ("passed", "not_done", "failed", "unavailable"):
        v = checks.Verdict("03.2", status, "a hint: with a colon")
        assert checks.parse(v.line()) == v
    assert checks.parse("Hello, Ada!") is None


HELLO = """
from datetime import timedelta
from temporalio import activity, workflow

@activity.defn
async def compose_greeting(name: str) -> str:
    return f"Hello, {name}!"

@workflow.defn
class SayHello:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(compose_greeting, name, start_to_close_timeout=timedelta(seconds=5))
"""

TEAM = """
from datetime import timedelta
from temporalio import workflow
with workflow.unsafe.imports_passed_through():
    from hello import compose_greeting

@workflow.defn
class GreetTeam:
    @workflow.run
    async def run(self, names: list[str]) -> list[str]:
{body}
"""

CALL = "await workflow.execute_activity(compose_greeting, n, start_to_close_timeout=timedelta(seconds=5))"
SOLVED = f"        return [{CALL} for n in names]"
STUB = """        raise NotImplementedError('Exercise 00.1: call compose_greeting for each name')"""
NO_ACTIVITIES = """        return [f"Hello, {n}!" for n in names]"""
WRONG_ORDER = f"        return [{CALL} for n in reversed(names)]"
WHOLE_LIST = f"        return {CALL.replace(', n,', ', names,')}"
NO_AWAIT = f"        return [{CALL.removeprefix('await ')} for n in names]"
ENDLESS = "        while True:\n            pass"
JOINED = f"        return ' '.join([{CALL} for n in names])"
SORTED = f"        return [{CALL} for n in sorted(names)]"
DEDUPLICATED = f"        return [{CALL} for n in dict.fromkeys(names)]"
LAST_ONLY = f"""        for n in names:
            g = {CALL}
        return [g]"""
# Correct, in other styles: a loop with append, and all calls at once with asyncio.gather (order kept).
LOOP = f"""        out = []
        for n in names:
            out.append({CALL})
        return out"""
GATHER = """        import asyncio
        return list(await asyncio.gather(*[
            workflow.execute_activity(compose_greeting, n, start_to_close_timeout=timedelta(seconds=5)) for n in names
        ]))"""


@pytest.mark.parametrize(
    ("body", "status", "hint"),
    [
        (SOLVED, "passed", "one activity call per name"),
        (LOOP, "passed", "one activity call per name"),
        (GATHER, "passed", "one activity call per name"),
        (STUB, "not_done", "call compose_greeting for each name"),
        (NO_ACTIVITIES, "failed", "0 activity call(s)"),
        (WRONG_ORDER, "failed", "expected ['Hello, Linus!', 'Hello, Ada!'"),
        (WHOLE_LIST, "failed", "activity compose_greeting raised"),
        (NO_AWAIT, "failed", "did you forget `await`"),
        (ENDLESS, "failed", "without awaiting anything: an endless loop"),
        (JOINED, "failed", "your workflow returned 'Hello, Linus! Hello, Ada! Hello, Grace! Hello, Ada!'"),
        (SORTED, "failed", "in the order given"),  # issue 7.9: passed when the only team was sorted
        (LAST_ONLY, "failed", "for the team [] your workflow code raised UnboundLocalError"),  # which input
        (DEDUPLICATED, "failed", "even when a name comes twice"),  # and when it had no repeated name
    ],
    ids=[
        "solved",
        "loop",
        "gather",
        "stub",
        "no-activities",
        "wrong-order",
        "whole-list",
        "no-await",
        "endless",
        "joined",
        "sorted",
        "last-only",
        "deduplicated",
    ],
)
def test_nb00_greet_team(body, status, hint, make_course, scratch, capsys):
    hello = runtime.write_module(scratch, "hello", HELLO)
    team = runtime.write_module(scratch, "team", TEAM.format(body=body))

    async def scenario():
        await make_course("00")
        await nb00.check_greet_team(team.GreetTeam, hello.compose_greeting)

    verdict = run_check(lambda: scenario(), capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("00.1", status)
    assert hint in verdict.message


@pytest.mark.parametrize(
    ("tasks", "event", "status", "hint"),
    [
        (2, "ActivityTaskCompleted", "passed", "2 workflow tasks"),
        (..., ..., "not_done", "WORKFLOW_TASKS"),
        (3, "ActivityTaskCompleted", "failed", "WORKFLOW_TASKS = 3 is not it"),
        ("2", "ActivityTaskCompleted", "failed", "is text; write the number itself"),
        (2, "WorkflowExecutionCompleted", "failed", "RESULT_EVENT = 'WorkflowExecutionCompleted'"),
        # Issue 7.10: the API's own spellings of the right event are right too.
        (2, "EVENT_TYPE_ACTIVITY_TASK_COMPLETED", "passed", "2 workflow tasks"),
        (2, "activity_task_completed", "passed", "2 workflow tasks"),
        (2, 12, "passed", "2 workflow tasks"),  # EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        (2, "EVENT_TYPE_ACTIVITY_TASK_STARTED", "failed", "write its name as the table shows it"),
    ],
)
def test_nb00_history_quiz(tasks, event, status, hint, make_course, scratch, capsys):
    hello = runtime.write_module(scratch, "hello", HELLO)

    async def scenario():
        await make_course("00")
        await nb00.check_history_quiz(hello.SayHello, hello.compose_greeting, tasks, event)

    verdict = run_check(lambda: scenario(), capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("00.2", status)
    assert hint in verdict.message


def test_sandbox_errors_get_the_fix_not_the_sdks_pass_through_advice():
    """Issue 7.12: under 02's sandbox error the SDK advises 'mark the import as pass through': the wrong fix there."""
    from helpers import errors

    failure = (
        "RestrictedWorkflowAccessError: Cannot access datetime.datetime.now.__call__ from inside a workflow. If this "
        "is code from a module not used in a workflow or known to only be used deterministically from a workflow, "
        "mark the import as pass through. (shipping.py line 20, in run)"
    )
    hint = errors.hint_for(failure)
    assert hint.startswith("The sandbox stopped your workflow when it called datetime.datetime.now(): use workflow.now")
    assert "Not the SDK's 'mark the import as pass through'" in hint


@pytest.mark.parametrize(
    ("failure", "hint"),
    [  # walkthrough findings: hints that pointed at the wrong fix, or none
        ("RestrictedWorkflowAccessError: Cannot access time.sleep.__call__ from inside a workflow.", "workflow.sleep"),
        ("Failed decoding arguments", "a number, not a text"),
        ("activity StartToClose timeout", "ran longer than its start_to_close_timeout"),
    ],
)
def test_hints_name_the_fix(failure, hint):
    from helpers import errors

    assert hint in errors.hint_for(failure)


UNAWAITED = """
from datetime import timedelta
from temporalio import workflow

@workflow.defn
class Forgets:
    @workflow.run
    async def run(self) -> None:
        if workflow.patched("x"):
            workflow.execute_activity("verify", start_to_close_timeout=timedelta(seconds=1))
        await workflow.sleep(1)
"""


def test_a_wrong_verdict_mentions_a_call_made_without_await(scratch, capsys):
    """Walkthrough finding (02.2): a forgotten await inside `if workflow.patched(...)` was blamed on `patched`."""
    module = runtime.write_module(scratch, "forgets", UNAWAITED)
    assert checks.unawaited_calls_note([module]) == (
        "Also: line 10 of %%module forgets calls workflow.execute_activity(...) without `await`, so it never runs."
    )
    assert checks.unawaited_calls_note([module.Forgets]) is not None  # found through a class too
    assert checks.unawaited_calls_note([runtime.write_module(scratch, "fine", "import time\ntime.sleep(0)\n")]) is None

    @checks.exercise("09.3")
    def check(mod):
        raise checks.Wrong("a new run did not call verify.")

    verdict = run_check(check, module, capsys=capsys)
    assert verdict.message == "a new run did not call verify. " + checks.unawaited_calls_note([module])
