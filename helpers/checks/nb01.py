"""Checks for notebook 01 (when to orchestrate): classify use cases, turn a script into a workflow, pick timeouts."""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType

from helpers import runtime
from helpers.checks import NotDone, Wrong, exercise, require, worker_for
from helpers.history import payload_values

# --------------------------------------------------------------------------- 01.1 where orchestration fits

WORKFLOW, PLAIN = "workflow", "plain code"
CHOICES = [WORKFLOW, PLAIN]

SCENARIOS = {
    "checkout": "Checkout: reserve stock, charge the card, book a courier: three services, none may be forgotten.",
    "bank-transfer": "Move money between accounts at two banks; if the credit fails, the debit must be undone.",
    "onboarding": "Onboard a new hire over two weeks: accounts on day 1, a laptop by day 3, a reminder on day 10.",
    "loan-approval": "A loan application waits up to 5 days for an underwriter's decision, then escalates.",
    "subscription": "A customer's subscription for years: trial, monthly renewals, payment retries, cancellation.",
    "provision-cluster": "Create VMs, DNS and certificates; when step 7 of 12 fails, carry on from step 7.",
    "update-profile": "Save a user's new display name: one UPDATE in one database, inside one HTTP request.",
    "price-lookup": "Return a product's price from a cache to a web page in under 10 ms.",
    "clickstream": "Count millions of click events per second from Kafka for a live dashboard.",
    "sql-report": "Turn yesterday's 50-million-row table into a report with one SQL query in the warehouse.",
}

# The key, and why: shown when a learner's answer differs, so a wrong answer teaches something.
KEY: dict[str, tuple[str, str]] = {
    "checkout": (WORKFLOW, "several services must each happen once, in order, even if a process dies in between"),
    "bank-transfer": (WORKFLOW, "a transaction across two systems needs a durable undo (a saga) when a step fails"),
    "onboarding": (WORKFLOW, "a process that runs for weeks must survive deploys and restarts, with durable timers"),
    "loan-approval": (WORKFLOW, "waiting days for a human, with a timeout and escalation, is a durable wait"),
    "subscription": (WORKFLOW, "an entity with a long lifecycle of events and timers is a long-running workflow"),
    "provision-cluster": (WORKFLOW, "resuming from the last completed step is exactly what a workflow history gives"),
    "update-profile": (PLAIN, "one write in one database is already all-or-nothing; a workflow adds only latency"),
    "price-lookup": (PLAIN, "a stateless millisecond request has nothing to resume; a workflow costs more than it"),
    "clickstream": (PLAIN, "millions of events per second is streaming: use a stream processor, not a history each"),
    "sql-report": (PLAIN, "the warehouse does the data work in one job; a workflow may schedule it, not crunch rows"),
}


def _did_you_mean(key: Any, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@exercise("01.1")
def check_classification(answers: Any) -> str:
    answers = require(
        answers, "fill in ANSWERS: 'workflow' or 'plain code' for each scenario (the quiz shows the code)."
    )
    if not isinstance(answers, Mapping):
        raise Wrong("ANSWERS should be a dict like {'checkout': 'workflow', ...}, one entry per scenario.")
    if unknown := [k for k in answers if k not in SCENARIOS]:
        raise Wrong(
            f"unknown scenario {unknown[0]!r}{_did_you_mean(unknown[0], SCENARIOS)}; use the keys the quiz shows."
        )
    missing = [k for k in SCENARIOS if answers.get(k, ...) is ...]
    if missing:
        raise NotDone(f"{len(missing)} scenario(s) still need an answer, e.g. {missing[0]!r}.")
    bad = [k for k in SCENARIOS if answers[k] not in CHOICES]
    if bad:
        raise Wrong(f"the answer for {bad[0]!r} is {answers[bad[0]]!r}; use 'workflow' or 'plain code'.")
    wrong = [k for k in SCENARIOS if answers[k] != KEY[k][0]]
    if wrong:
        first = wrong[0]
        return_hint = f"{len(wrong)} of {len(SCENARIOS)} need another look. {first!r} is not {answers[first]!r}: "
        raise Wrong(return_hint + KEY[first][1] + ".")
    fits = sum(1 for k in SCENARIOS if KEY[k][0] == WORKFLOW)
    return f"all {len(SCENARIOS)} right: {fits} call for durable orchestration, {len(SCENARIOS) - fits} do not."


# --------------------------------------------------------------------------- 01.2 a script made durable

REFUND_STEPS = ["cancel_shipment", "refund_payment", "email_customer"]
# Orders whose refunds tell a right answer from plausible wrong ones: 29.75 (any formatting agrees), 30.00 and
# 4.10 (only "{amount:.2f}" gives them two decimals, as the script's email does).
ORDERS = [
    [{"sku": "mug", "price": 12.5, "qty": 2}, {"sku": "tea", "price": 4.75, "qty": 1}],
    [{"sku": "mug", "price": 12.5, "qty": 2}, {"sku": "tea", "price": 5.0, "qty": 1}],
    [{"sku": "card", "price": 2.05, "qty": 2}],
]


def refund_of(items: list[dict[str, Any]]) -> float:
    return round(sum(item["price"] * item["qty"] for item in items), 2)


@exercise("01.2")
async def check_refund_workflow(module: Any) -> str:
    course = runtime.current()
    wf = getattr(module, "RefundWorkflow", None)
    if wf is None:
        raise Wrong("the module has no RefundWorkflow class; keep the class name from the cell.")
    acts = []
    for name in REFUND_STEPS:
        fn = getattr(module, name, None)
        if fn is None:
            raise Wrong(f"the module has no activity {name}(); keep the three activity functions.")
        if activity._Definition.from_callable(fn) is None:
            raise Wrong(f"{name} is not an activity yet: put @activity.defn above it.")
        acts.append(fn)
    orders = [{"id": course.new_id("check-refund"), "email": "ada@example.com", "items": i} for i in ORDERS]
    async with worker_for([wf], acts, purpose="refund") as queue:
        handles = [
            await course.start_workflow(wf.run, order, id=order["id"], task_queue=queue, show=False) for order in orders
        ]
        try:
            results = await asyncio.gather(*(course.result(h, 8.0, activity_retries=1) for h in handles))
        except (runtime.WorkflowTaskFailed, runtime.ActivityKeepsFailing) as err:
            _raise_if_unknown_activity(err.failure)
            raise
    ledger = getattr(getattr(module, "refund_script", None), "ledger", None)
    for order, handle, result in zip(orders, handles, results, strict=True):
        await _check_one_refund(order, handle, result, ledger)
    amounts = ", ".join(f"{refund_of(i):.2f}" for i in ORDERS)
    return (
        f"3 refunds ({amounts}): 3 activities each in the script's order, the amount computed in the workflow, "
        "the same email, each step run once."
    )


async def _check_one_refund(order: dict[str, Any], handle: Any, result: Any, ledger: Any) -> None:
    order_id, amount = order["id"], refund_of(order["items"])
    scheduled = await _scheduled_activities(handle)
    names = [name for name, _ in scheduled]
    ran_in_workflow = [
        s for s in REFUND_STEPS if s not in names and ledger is not None and ledger.has(order_id, s, "done")
    ]
    if ran_in_workflow:
        raise Wrong(
            f"{ran_in_workflow[0]} ran, but inside the workflow code, not as an activity: it is not in the history, "
            "so after a crash it would run again. Call it with workflow.execute_activity(...)."
        )
    if names != REFUND_STEPS:
        raise Wrong(f"the history shows the activities {names}; the script runs {REFUND_STEPS}, in this order.")
    amounts = [a for a in scheduled[1][1] if isinstance(a, int | float)]
    if not any(abs(a - amount) < 0.005 for a in amounts):
        raise Wrong(f"refund_payment got {scheduled[1][1]}; for these items the amount to refund is {amount}.")
    email = f"We refunded {amount:.2f} for order {order_id}."
    if email not in scheduled[2][1]:
        texts = [a for a in scheduled[2][1] if isinstance(a, str) and a != order_id]
        got = f"the text {texts[0].replace(order_id, '<order id>')!r}" if texts else f"{scheduled[2][1]}"
        raise Wrong(
            f"for a refund of {amount:.2f}, email_customer got {got}; keep the script's steps as they are, "
            f"including its email, with two decimals: f\"We refunded {{amount:.2f}} for order {{order['id']}}.\""
        )
    if ledger is not None:
        twice = [s for s in REFUND_STEPS if ledger.counts(order_id)[(s, "done")] != 1]
        if twice:
            raise Wrong(f"the history is right, but {twice[0]} did not run exactly once: call refund_script's step.")
    expected = f"refunded {amount:.2f}"
    if result != expected:
        raise Wrong(f"the workflow returned {result!r}; the script returns {expected!r}.")


def _raise_if_unknown_activity(failure: str) -> None:
    """An activity that is not one of the script's steps (e.g. the whole script in one activity)."""
    if m := re.search(r"Activity function (\S+) .*?is not registered", failure):
        raise Wrong(
            f"your workflow calls an activity {m[1]}, but the check runs only {_and(REFUND_STEPS)}: call those "
            "three as activities, one for each step of the script."
        )


def _and(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


async def _scheduled_activities(handle: Any) -> list[tuple[str, list[Any]]]:
    """``(activity name, decoded inputs)`` for each ActivityTaskScheduled event, in order."""
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            out.append((attrs.activity_type.name, payload_values(attrs.input)))
    return out


# --------------------------------------------------------------------------- 01.3 timeouts

# The slowest a healthy call of each step has taken (what monitoring says).
SLOWEST_HEALTHY = {
    "reserve_stock": timedelta(milliseconds=500),
    "charge": timedelta(seconds=8),
    "ship": timedelta(seconds=3),
    "notify": timedelta(seconds=1),
}
MAX_FACTOR = 10


def _fmt(d: timedelta) -> str:
    s = d.total_seconds()
    if s >= 3600 and s % 360 == 0:
        return f"{s / 3600:g} h"
    if s >= 60 and s % 6 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


@exercise("01.3")
def check_timeouts(timeouts: Any) -> str:
    timeouts = require(timeouts, "fill in TIMEOUTS: a timedelta for each of the four steps.")
    if not isinstance(timeouts, Mapping):
        raise Wrong("TIMEOUTS should be a dict like {'charge': timedelta(seconds=...), ...}.")
    if unknown := [k for k in timeouts if k not in SLOWEST_HEALTHY]:
        raise Wrong(
            f"unknown step {unknown[0]!r}{_did_you_mean(unknown[0], SLOWEST_HEALTHY)}; "
            f"the steps are: {', '.join(SLOWEST_HEALTHY)}."
        )
    missing = [s for s in SLOWEST_HEALTHY if timeouts.get(s, ...) is ...]
    if missing:
        raise NotDone(f"TIMEOUTS still needs a timeout for {missing[0]!r}.")
    for step, slowest in SLOWEST_HEALTHY.items():
        value = timeouts[step]
        if not isinstance(value, timedelta):
            raise Wrong(f"TIMEOUTS[{step!r}] is {value!r}; write it as a timedelta, e.g. timedelta(seconds=5).")
        if value <= slowest:
            raise Wrong(
                f"{step}: {_fmt(value)} is not longer than its slowest healthy call ({_fmt(slowest)}). Such calls "
                "would be cut off and run again"
                + ("; for charge that can mean charging twice." if step == "charge" else ".")
            )
        if value > slowest * MAX_FACTOR:
            raise Wrong(
                f"{step}: {_fmt(value)} is far longer than it ever needs ({_fmt(slowest)}). After a crash or a hung "
                f"call, Temporal waits that long before retrying: stay within {MAX_FACTOR}× ({_fmt(slowest * 10)})."
            )
    return "every step gets longer than its slowest healthy call, and a crash is noticed within 10× that."
