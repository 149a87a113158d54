"""Checks for notebook 07 (testing and operations): a time-skipping test, a replay gate, a failure rate from the
SDK's metrics, a reset point.

The two test-writing exercises run the learner's test module with real pytest (:mod:`helpers.pytest_runs`) against
the notebook's ``Dunning`` and then (if it passed there) against versions of it with a bug, made from the ``dunning``
module's own source by small edits: a test must pass on the right code and fail on each wrong one, so a test that
asserts nothing cannot pass. The other two run the learner's function on runs the check makes and compare its
answer with what the outside world (:mod:`helpers.billing_world`: the gateway's and the mailer's logs) went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from temporalio.client import WorkflowFailureError
from temporalio.worker import Worker

from helpers import health, operations, pytest_runs, runtime
from helpers.billing_world import ALWAYS, BillingWorld
from helpers.checks import NotDone, Wrong, exercise, worker_for
from helpers.errors import short_failure
from helpers.history import event_name

RUN_TIMEOUT_S = 10.0  # one run of Dunning with 0.05 s between tries takes well under a second
PYTEST_TIMEOUT_S = 15.0  # one pytest run takes 1-3 s (most of it Python starting up)
RETRY_EVERY_S = 0.05

# Lines of the notebook's Dunning that the broken versions change (the one home of these anchors).
SLEEP = "await workflow.sleep(timedelta(seconds=invoice.retry_every_s))"
REMINDER = "await workflow.execute_activity(send_reminder, args=[invoice, tries], **CALL)"
FEE = "fee = days_late * LATE_FEE_CENTS_PER_DAY"
AS_GIVEN = "the notebook's Dunning"


# --------------------------------------------------------------------------- the code under test, and its bugs


def dunning_source(dunning: ModuleType) -> str:
    """The source of the notebook's ``dunning`` module, as long as the edits below still apply to it."""
    path = getattr(dunning, "__file__", None)
    source = Path(path).read_text() if path else ""
    if not hasattr(dunning, "Dunning") or any(anchor not in source for anchor in (SLEEP, REMINDER, FEE)):
        raise Wrong("the dunning module is not as the notebook gives it: run its cell again, unchanged.")
    return source


def without(source: str, anchor: str) -> str:
    """``source`` without the line that holds ``anchor``."""
    return "\n".join(line for line in source.split("\n") if anchor not in line)


def replaced(source: str, anchor: str, new: str) -> str:
    return source.replace(anchor, new)


def swapped(source: str, first: str, second: str) -> str:
    """``source`` with the lines holding ``first`` and ``second`` changing places."""
    lines = source.split("\n")
    i = next(n for n, line in enumerate(lines) if first in line)
    j = next(n for n, line in enumerate(lines) if second in line)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@dataclass(frozen=True)
class Bug:
    """A broken version of Dunning: what it does wrong, and what a test must assert to notice."""

    does: str
    hint: str
    make: Callable[[str], str]


TEST_BUGS: dict[str, Bug] = {
    "does not wait": Bug(
        "does not wait between tries (it charges again at once)",
        "assert how long the customer was late, as the workflow measured it: the outcome's days_late (6).",
        lambda s: without(s, SLEEP),
    ),
    "sends no reminders": Bug(
        "sends no reminders",
        "record what your send_reminder mock is asked to send, and assert it (two reminders, for tries 1 and 2).",
        lambda s: without(s, REMINDER),
    ),
    "forgets the late fee": Bug(
        "forgets the late fee (0 instead of 300 cents)",
        "assert the whole outcome (its late_fee_cents), or the fee your send_receipt mock was given.",
        lambda s: replaced(s, FEE, "fee = 0"),
    ),
}
GATE_BREAKER = Bug(
    "sends the reminder after the wait instead of before it",
    "",
    lambda s: swapped(s, REMINDER, SLEEP),
)


def _test_module(module: Any, name: str) -> ModuleType:
    if not isinstance(module, ModuleType) or not getattr(module, "__file__", None):
        raise Wrong(f"pass the test module itself ({name}, the %%module cell above), not {type(module).__name__}.")
    return module


def _world(billing: ModuleType) -> BillingWorld:
    world = getattr(billing, "world", None)
    if not isinstance(world, BillingWorld) or not getattr(billing, "ACTIVITIES", None):
        raise Wrong("the billing module is not as the notebook gives it: run its cell again, unchanged.")
    return world


def _first(text: str, limit: int = 220) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _judge_right_run(run: pytest_runs.PytestRun, ex_id: str, module: str, what: str) -> None:
    """The learner's test on the right code: it must run, and pass."""
    if run.timed_out:
        raise Wrong(
            f"your test did not finish within {PYTEST_TIMEOUT_S:g} s on {AS_GIVEN}: does it wait for a workflow "
            "that never ends (an activity no mock stands in for, a worker on another task queue)?"
        )
    if not run.results:
        raise Wrong(f"pytest found no test in {module}: keep the test function (its name must start with test_).")
    for failure in run.failures:
        if f"Exercise {ex_id}" in failure.message:
            raise NotDone(failure.message.split(f"Exercise {ex_id}:", 1)[1].strip())
    if run.failures:
        failure = run.failures[0]
        message = re.sub(r"^(?:\w+\.)+(?=\w+: )", "", _first(failure.message)) or failure.outcome  # no module path
        hint = ""
        if "WorkflowFailureError" in message:
            hint = (
                " The workflow itself failed in your test: is every activity it calls mocked and given to the worker? "
                "An activity no worker offers fails every attempt, and the receipt gives up after three."
            )
        raise Wrong(f"your test fails on {what}, which is right: {message.rstrip('.')}.{hint}")


@contextlib.contextmanager
def uses_answer(ex_id: str) -> Iterator[None]:
    """Around a demo that uses an exercise's answer: while the exercise is not done (its stub raises
    ``NotImplementedError``), the cell says so in one line instead of failing."""
    try:
        yield
    except NotImplementedError as err:
        if f"Exercise {ex_id}:" not in str(err):
            raise
        print(f"This cell uses your answer to exercise {ex_id}, which is not done yet; come back once it passes.")


# --------------------------------------------------------------------------- 07.1 a time-skipping test


@exercise("07.1", timeout=60)
async def check_time_skipping_test(test_module: Any, dunning: ModuleType) -> str:
    module = _test_module(test_module, "test_dunning")
    source = dunning_source(dunning)
    right = await pytest_runs.run(module, versions={"dunning": source}, timeout=PYTEST_TIMEOUT_S)
    _judge_right_run(right, "07.1", "test_dunning", AS_GIVEN)
    versions = {name: {"dunning": bug.make(source)} for name, bug in TEST_BUGS.items()}
    runs = await pytest_runs.run_versions(module, versions, timeout=PYTEST_TIMEOUT_S)  # all at once
    missed = [name for name in TEST_BUGS if runs[name].passed]
    if len(missed) == len(TEST_BUGS):
        raise Wrong(
            "your test passes whatever the workflow does: also on a Dunning that does not wait between tries, one "
            "that sends no reminders and one that forgets the late fee. Assert what the workflow did: the outcome it "
            "returns, and what your mocks were asked to send."
        )
    if missed:
        bug = TEST_BUGS[missed[0]]
        raise Wrong(f"your test also passes on a Dunning that {bug.does}: {bug.hint}")
    return (
        "your test passes on the notebook's Dunning and fails on each broken version (no wait between tries, no "
        "reminders, no late fee): six days of dunning, tested in seconds."
    )


# --------------------------------------------------------------------------- 07.2 the replay gate

GATE_CUSTOMERS: dict[str, dict[str, int]] = {
    "gate-pays": {},
    "gate-declined-twice": {"declines": 2},
    "gate-never-pays": {"declines": ALWAYS},
}


async def record_runs(
    dunning: ModuleType, billing: ModuleType, customers: Mapping[str, Mapping[str, Any]], purpose: str
) -> tuple[str, list[str]]:
    """Run Dunning once per customer on a task queue of its own; returns the queue and the invoice ids."""
    course = runtime.current()
    world = _world(billing)
    invoices = []
    for name, card in customers.items():
        world.add_customer(name, **card)
        invoices.append(billing.Invoice(course.new_id("check-inv"), name, 4200, retry_every_s=RETRY_EVERY_S))
    async with worker_for([dunning.Dunning], billing.ACTIVITIES, purpose=purpose) as queue:
        handles = [
            await course.start_workflow(dunning.Dunning.run, i, id=i.id, task_queue=queue, show=False) for i in invoices
        ]
        await asyncio.gather(*(course.result(h, RUN_TIMEOUT_S) for h in handles))
    return queue, [i.id for i in invoices]


@exercise("07.2", timeout=60)
async def check_replay_gate(test_module: Any, dunning: ModuleType, billing: ModuleType) -> str:
    module = _test_module(test_module, "test_replay")
    source = dunning_source(dunning)
    queue, _ = await record_runs(dunning, billing, GATE_CUSTOMERS, "gate")
    right = await pytest_runs.run(module, versions={"dunning": source}, task_queue=queue, timeout=PYTEST_TIMEOUT_S)
    _judge_right_run(right, "07.2", "test_replay", "the code that recorded the runs (it replays them all)")
    broken = f"a Dunning that {GATE_BREAKER.does}"
    wrong = await pytest_runs.run(
        module, versions={"dunning": GATE_BREAKER.make(source)}, task_queue=queue, timeout=PYTEST_TIMEOUT_S
    )
    if wrong.passed:
        raise Wrong(
            f"your test passes on {broken}, a change that breaks the recorded runs of customers who were declined: "
            "does it replay the histories RECORDED_RUNS finds, and fail when one does not replay? "
            "(replay_workflows(..., raise_on_replay_failure=False) returns the failures in replay_failures instead "
            "of raising them.)"
        )
    return (
        "your gate passes on the code that recorded the runs and fails on a change that would break the runs in "
        "flight (the reminder moved after the wait)."
    )


# --------------------------------------------------------------------------- 07.3 a failure rate

RATE_CUSTOMERS: dict[str, dict[str, int]] = {
    "rate-pays": {},
    "rate-gateway-down": {"unavailable": 2},
    "rate-declined": {"declines": 1},
    "rate-receipt-dropped": {},
}
# Each activity's attempts are calls to one service; the world's log of those calls is the truth.
SERVICE_OF = {
    "charge": ("gateway", ""),
    "send_reminder": ("mailer", "reminder"),
    "send_receipt": ("mailer", "receipt"),
    "suspend_account": ("accounts", ""),
}


def _truth(world: BillingWorld, invoice_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{activity: (failed attempts, attempts)}`` as the services saw them."""
    out = {}
    for activity, (service, kind) in SERVICE_OF.items():
        calls = [c for i in invoice_ids for c in world.calls(i, service=service) if kind in c.outcome]
        out[activity] = (sum(c.failed for c in calls), len(calls))
    return out


async def metered_updates(dunning: ModuleType, billing: ModuleType) -> tuple[list[Any], dict[str, tuple[int, int]]]:
    """Run :data:`RATE_CUSTOMERS`' invoices on a worker that records the SDK's metrics; returns every update and
    what the services saw."""
    course = runtime.current()
    world = _world(billing)
    metered = await health.metered_client(course.target, purpose="check")
    queue = course.new_task_queue(f"rates-{next(course._ids)}")
    invoices = []
    for name, card in RATE_CUSTOMERS.items():
        world.add_customer(name, **card)
        invoices.append(billing.Invoice(course.new_id("check-inv"), name, 4200, retry_every_s=RETRY_EVERY_S))
    world.mailer_down(invoices[-1].id, "receipt", times=1)
    async with Worker(metered.client, task_queue=queue, workflows=[dunning.Dunning], activities=billing.ACTIVITIES):
        handles = [
            await course.start_workflow(dunning.Dunning.run, i, id=i.id, task_queue=queue, show=False) for i in invoices
        ]
        await asyncio.gather(*(course.result(h, RUN_TIMEOUT_S) for h in handles))
    return list(metered.retrieve_updates()), _truth(world, [i.id for i in invoices])


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


def _rate_mistake(activity: str, got: float, truth: Mapping[str, tuple[int, int]]) -> str:
    failed, attempts = truth[activity]
    expected = failed / attempts if attempts else 0.0
    saw = f"the services saw {failed} of its {attempts} attempts fail ({expected:.2f})"
    total_failed = sum(f for f, _ in truth.values())
    total = sum(a for _, a in truth.values())
    if expected and abs(got - 100 * expected) < 1e-6:
        return f"failure_rate(updates, {activity!r}) returned {got:g}, a percentage: return a share between 0 and 1."
    if total and abs(got - total_failed / total) < 1e-9:
        return (
            f"failure_rate(updates, {activity!r}) returned {got:.2f}, the rate of all activities together; {saw}. "
            "Count only the updates whose attributes['activity_type'] is the one asked for."
        )
    if attempts > failed and abs(got - failed / (attempts - failed)) < 1e-9:
        return (
            f"failure_rate(updates, {activity!r}) returned {got:.2f}: failures divided by successful attempts; {saw}. "
            "Divide by all attempts (temporal_activity_execution_latency has one value per attempt, failed or not)."
        )
    return f"failure_rate(updates, {activity!r}) returned {got:.2f}; {saw}."


@exercise("07.3", timeout=40)
async def check_failure_rate(failure_rate: Any, dunning: ModuleType, billing: ModuleType) -> str:
    if not callable(failure_rate):
        raise Wrong("failure_rate must be a function: def failure_rate(updates, activity_type): ...")
    dunning_source(dunning)
    updates, truth = await metered_updates(dunning, billing)
    for activity in SERVICE_OF:
        try:
            got = await _call(failure_rate, updates, activity)
        except ZeroDivisionError:
            raise Wrong(
                f"failure_rate(updates, {activity!r}) raised ZeroDivisionError: an activity that never ran has no "
                "attempts; return 0.0 for it."
            ) from None
        except (NotImplementedError, NotDone):
            raise
        except Exception as err:
            raise Wrong(f"failure_rate(updates, {activity!r}) raised {_first(short_failure(err))}") from None
        if isinstance(got, bool) or not isinstance(got, int | float):
            raise Wrong(f"failure_rate(updates, {activity!r}) returned {got!r}: return a number between 0 and 1.")
        failed, attempts = truth[activity]
        if abs(got - (failed / attempts if attempts else 0.0)) > 1e-9:
            raise Wrong(_rate_mistake(activity, float(got), truth))
    charge, receipt = truth["charge"], truth["send_receipt"]
    return (
        f"your rates match what the card gateway and the mailer saw: charge {charge[0]} of {charge[1]} attempts "
        f"failed, send_receipt {receipt[0]} of {receipt[1]}, and 0.0 for activities that never failed or never ran."
    )


# --------------------------------------------------------------------------- 07.4 a reset point

RESET_CUSTOMERS: dict[str, tuple[str, dict[str, int]]] = {
    "reset-pays": ("paid on the first try", {}),
    "reset-declined-once": ("paid on the second try", {"declines": 1}),
}
RECEIPT_FAILURES = 3  # the receipt's retry policy allows three attempts: then the run fails


async def _failed_runs(dunning: ModuleType, billing: ModuleType, queue: str) -> list[tuple[str, str, Any]]:
    """Runs whose customer paid and whose receipt was dropped until the run failed: (label, invoice id, handle)."""
    course = runtime.current()
    world = _world(billing)
    runs = []
    for name, (label, card) in RESET_CUSTOMERS.items():
        world.add_customer(name, **card)
        invoice = billing.Invoice(course.new_id("check-inv"), name, 4200, retry_every_s=RETRY_EVERY_S)
        world.mailer_down(invoice.id, "receipt", times=RECEIPT_FAILURES)
        handle = await course.start_workflow(dunning.Dunning.run, invoice, id=invoice.id, task_queue=queue, show=False)
        runs.append((label, invoice.id, handle))
    for _, _, handle in runs:
        try:
            await course.result(handle, RUN_TIMEOUT_S)
        except WorkflowFailureError:
            continue
        raise Wrong(
            "a run whose receipts were all dropped did not fail: is the dunning module as the notebook gives it?"
        )
    return runs


def _event(history: Any, event_id: Any) -> str:
    found = next((e for e in history.events if e.event_id == event_id), None)
    return f"event {event_id} ({event_name(found)})" if found is not None else f"event {event_id!r}"


@exercise("07.4", timeout=45)
async def check_reset_point(reset_point: Any, dunning: ModuleType, billing: ModuleType) -> str:
    if not callable(reset_point):
        raise Wrong("reset_point must be a function: def reset_point(history): ...")
    dunning_source(dunning)
    course = runtime.current()
    world = _world(billing)
    async with worker_for([dunning.Dunning], billing.ACTIVITIES, purpose="reset") as queue:
        for label, invoice_id, handle in await _failed_runs(dunning, billing, queue):
            history = await handle.fetch_history()
            event_id = await _call(reset_point, history)
            if isinstance(event_id, bool) or not isinstance(event_id, int):
                raise Wrong(f"reset_point returned {event_id!r}: return an event id (an int, event.event_id).")
            where = _event(history, event_id)
            try:
                run_id = await operations.reset(course.client, invoice_id, event_id, "course check: reset_point")
            except Exception as err:
                raise Wrong(
                    f"the server refused to reset the run of the customer {label} to {where}: "
                    f"{_first(short_failure(err))}. Name the event that ended a workflow task (WorkflowTaskCompleted)."
                ) from None
            new_run = course.client.get_workflow_handle_for(dunning.Dunning.run, invoice_id, run_id=run_id)
            course.started.append(new_run)
            try:
                await course.result(new_run, RUN_TIMEOUT_S)
            except WorkflowFailureError:
                raise Wrong(
                    f"reset to {where}, the new run of the customer {label} failed again: that point comes after "
                    "send_receipt was scheduled, so the new run replayed the receipt's recorded failure. Reset to the "
                    "workflow task that scheduled it."
                ) from None
            charges = len(world.charges(invoice_id))
            if charges != 1:
                raise Wrong(
                    f"reset to {where}, the customer {label} was charged {charges} times: that point comes before the "
                    "charge that took the money completed, so the new run charged again. Reset to the workflow task "
                    "that ran right after it."
                )
            if not world.mails(invoice_id, kind="receipt"):
                raise Wrong(f"reset to {where}, the new run of the customer {label} sent no receipt.")
    return (
        "each failed run was reset to the workflow task right after its charge: the new runs sent the receipts, and "
        "every customer was charged once."
    )
