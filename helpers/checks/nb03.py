"""Checks for notebook 03 (activity design): an idempotent charge, timeouts and a retry policy, classified errors,
a long task that resumes.

Every check drives the learner's activity with a reference workflow (:mod:`helpers.activity_harness`) under a
real, injected failure, then reads the outside world: the provider's charges, the gateway's calls, the storage
service's log. Verdicts name no ids, times or amounts that change between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from types import ModuleType
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

from helpers import backup, heartbeats, payments, retries, runtime, worker
from helpers.activity_harness import AuthorizeHarness, ChargeHarness, ChecksumHarness, policy_to_data
from helpers.checks import NotDone, Wrong, exercise, require, worker_for


def _activity(module: Any, name: str) -> Callable[..., Any]:
    if not isinstance(module, ModuleType):
        raise Wrong(f"pass the module of the exercise cell (the name after %%module), not {type(module).__name__}.")
    fn = getattr(module, name, None)
    if fn is None:
        raise Wrong(f"the module has no function {name}(); keep the name from the cell.")
    if activity._Definition.from_callable(fn) is None:
        raise Wrong(f"{name} is not an activity: keep @activity.defn above it.")
    return fn


def activity_name(fn: Callable[..., Any]) -> str:
    defn = activity._Definition.from_callable(fn)
    assert defn is not None and defn.name is not None
    return defn.name


def _not_done_or_raise(outcome: Mapping[str, Any]) -> None:
    if outcome.get("type") == "NotImplementedError":
        raise NotImplementedError(outcome.get("message", ""))


# --------------------------------------------------------------------------- 03.1 an idempotent charge

INSTALLMENT_CENTS = 2500
SINGLE_CENTS = 1200
NO_KEY = (
    "no idempotency key reached the provider, so it could not tell the retry from a new charge: "
    "pass idempotency_key=... to provider.charge."
)
CHANGING_KEY = (
    "the retry sent a different idempotency key than the first attempt, so the provider charged again. Build the "
    "key from what stays the same across retries (activity.info().workflow_id and .activity_id), not from the "
    "attempt number, the time or a random uuid."
)


@exercise("03.1")
async def check_idempotent_charge(module: Any) -> str:
    charge = _activity(module, "charge")
    provider = getattr(module, "provider", None)
    if not isinstance(provider, payments.PaymentProvider):
        raise Wrong("the module has no `provider` (a PaymentProvider): keep the line that creates it.")
    course = runtime.current()
    two_installments, one_charge = course.new_id("check-order"), course.new_id("check-order")
    for order in (two_installments, one_charge):
        provider.drop_response(order)  # the first charge goes through, its answer is lost: the retry must not charge
    name = activity_name(charge)
    async with worker_for([ChargeHarness], [charge], purpose="charge") as queue:
        first = await course.start_workflow(
            ChargeHarness.run,
            name,
            [[two_installments, INSTALLMENT_CENTS], [two_installments, INSTALLMENT_CENTS]],
            task_queue=queue,
            id_prefix="check-charge",
            show=False,
        )
        second = await course.start_workflow(
            ChargeHarness.run,
            name,
            [[one_charge, SINGLE_CENTS]],
            task_queue=queue,
            id_prefix="check-charge",
            show=False,
        )
        outcomes = [*await course.result(first, 10), *await course.result(second, 10)]
    for outcome in outcomes:
        _not_done_or_raise(outcome)
    for outcome in outcomes:
        if outcome.get("type") == "IdempotencyKeyReused":
            raise Wrong(
                "the provider refused a charge: its key had already been used for another order's charge in another "
                "workflow. activity.info().activity_id alone starts at '1' in every workflow: combine it with the "
                "workflow id."
            )
        if "error" in outcome:
            other = "the second order" if outcome["order_id"] == one_charge else "the first order"
            raise Wrong(f"charging {other} failed: {outcome['type']}: {_scrub(outcome['message'], course)}")
    twice, once = provider.charges(two_installments), provider.charges(one_charge)
    if len(once) > 1 or len(twice) > 2:
        doubled = once if len(once) > 1 else twice
        keys = {c.idempotency_key for c in doubled}
        raise Wrong("an order was charged twice: " + (NO_KEY if keys == {None} else CHANGING_KEY))
    if len(twice) == 1:
        raise Wrong(
            "an order paid in two installments of the same amount was charged only once: both installments got "
            "the same key, so the provider took the second for a retry of the first. A key must differ between two "
            "charges, even of the same order and amount: include activity.info().activity_id."
        )
    results = [o.get("result") for o in outcomes]
    if results != [c.charge_id for c in [*twice, *once]]:
        raise Wrong("charge must return the provider's charge id (what provider.charge returns).")
    return (
        "the provider charged and then lost its answer; each retry sent the same key and got the first charge back, "
        "so 3 charges were made exactly once each, and two installments of one order were kept apart."
    )


def _scrub(text: str, course: runtime.Course) -> str:
    """Verdicts carry no ids: replace this kernel's session tag."""
    return text.replace(course.session, "…")


# --------------------------------------------------------------------------- 03.2 timeouts and a retry policy

HEALTHY = timedelta(seconds=2)
NOTICE_WITHIN = timedelta(seconds=10)
BUDGET = timedelta(seconds=30)
FIRST_RETRY_WITHIN = timedelta(seconds=1)
MAX_GAP = timedelta(seconds=5)
# Every option of workflow.execute_activity (the timeouts and retry_policy are the ones this exercise is about).
OPTION_NAMES = [
    p for p in inspect.signature(workflow.execute_activity).parameters if p not in ("activity", "arg", "args")
]


def _fmt(d: timedelta) -> str:
    return retries.fmt(d.total_seconds())


def _timedelta(options: Mapping[str, Any], key: str) -> timedelta | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise Wrong(f"{key} is {value!r}; write it as a timedelta, e.g. timedelta(seconds=5).")
    return value


@exercise("03.2")
def check_fetch_rates_options(options: Any) -> str:
    options = require(options, "fill in FETCH_RATES: the timeouts and the retry policy for fetch_rates.")
    if not isinstance(options, Mapping):
        raise Wrong("FETCH_RATES should be a dict of workflow.execute_activity options, e.g. dict(retry_policy=...).")
    for key in options:
        if key not in OPTION_NAMES:
            close = difflib.get_close_matches(str(key), OPTION_NAMES, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ": use the names of its keyword arguments"
            raise Wrong(f"{key!r} is not an option of workflow.execute_activity{hint}.")
    if all(v is Ellipsis for v in options.values()):
        raise NotDone("fill in FETCH_RATES: the timeouts and the retry policy for fetch_rates.")
    start_to_close = _timedelta(options, "start_to_close_timeout")
    if start_to_close is None:
        raise Wrong(
            "set start_to_close_timeout: it is how a hung call or a dead worker is noticed (and the SDK needs it "
            "or schedule_to_close_timeout)."
        )
    if start_to_close <= HEALTHY:
        raise Wrong(
            f"start_to_close_timeout {_fmt(start_to_close)} is not longer than a healthy call ({_fmt(HEALTHY)}): "
            "slow but healthy calls would be cut off and retried."
        )
    if start_to_close > NOTICE_WITHIN:
        raise Wrong(
            f"start_to_close_timeout {_fmt(start_to_close)}: a hung call or a dead worker must be retried within "
            f"{_fmt(NOTICE_WITHIN)}."
        )
    total = _timedelta(options, "schedule_to_close_timeout")
    if total is None:
        raise Wrong(
            "nothing ends the retries after 30 s: the default retry policy retries forever. Set "
            "schedule_to_close_timeout, the budget for all attempts together."
        )
    if total > BUDGET:
        raise Wrong(f"schedule_to_close_timeout {_fmt(total)}: the page waits at most {_fmt(BUDGET)} for rates.")
    if total <= start_to_close:
        raise Wrong(
            f"schedule_to_close_timeout ({_fmt(total)}) is not longer than start_to_close_timeout "
            f"({_fmt(start_to_close)}): there is no time left for a single retry."
        )
    if (hb := _timedelta(options, "heartbeat_timeout")) is not None and hb <= HEALTHY:
        raise Wrong("fetch_rates does not heartbeat: a heartbeat_timeout would cut off every healthy call.")
    if _timedelta(options, "schedule_to_start_timeout") is not None:
        raise Wrong(
            "leave schedule_to_start_timeout out: nothing in the task asks for it, and on a busy queue it fails "
            "calls that would have run."
        )
    policy = options.get("retry_policy")
    if policy is None:
        raise Wrong(
            "without a retry_policy the default one applies: its maximum_interval is 100 × 1 s, so a recovered "
            f"service could wait up to 100 s for the next attempt (at most {_fmt(MAX_GAP)} wanted)."
        )
    if not isinstance(policy, RetryPolicy):
        raise Wrong("retry_policy should be a RetryPolicy(...) (from temporalio.common).")
    try:
        policy._validate()
    except ValueError as err:
        raise Wrong(f"the SDK rejects this RetryPolicy: {err}.") from None
    if policy.initial_interval > FIRST_RETRY_WITHIN:
        raise Wrong(
            f"initial_interval {_fmt(policy.initial_interval)}: the first retry should come within "
            f"{_fmt(FIRST_RETRY_WITHIN)}."
        )
    if policy.maximum_interval is None:
        raise Wrong(
            f"maximum_interval is not set, so it is 100 × initial_interval = "
            f"{_fmt(retries.maximum_interval(policy))}: cap the wait between attempts at {_fmt(MAX_GAP)}."
        )
    if policy.maximum_interval > MAX_GAP:
        raise Wrong(
            f"maximum_interval {_fmt(policy.maximum_interval)}: a recovered service should be tried again within "
            f"{_fmt(MAX_GAP)}."
        )
    if policy.maximum_attempts:
        last_start = retries.start_times(policy, policy.maximum_attempts)[-1]
        if last_start + policy.maximum_interval.total_seconds() < total.total_seconds():
            raise Wrong(
                f"maximum_attempts={policy.maximum_attempts} gives up after about {retries.fmt(last_start)} of fast "
                f"failures, long before the {_fmt(total)} budget: leave it at 0 and let schedule_to_close_timeout end "
                "the retries."
            )
    # One text for every right answer: the grader compares the check's output with the solution's.
    return (
        "a hung call is retried within 10 s, the first retry comes within 1 s and the waits never exceed 5 s, and "
        "the step gives up after at most 30 s, retries included."
    )


# --------------------------------------------------------------------------- 03.3 classified errors

AUTHORIZE_CENTS = 4200
MAX_CHECK_ATTEMPTS = 4
SLOWEST_THIRD_ATTEMPT_S = 5.0


@exercise("03.3")
async def check_error_classification(module: Any) -> str:
    authorize = _activity(module, "authorize")
    policy = getattr(module, "RETRY_POLICY", None)
    if not isinstance(policy, RetryPolicy):
        raise Wrong("the module has no RETRY_POLICY = RetryPolicy(...): keep it (the check runs authorize with it).")
    # Bounded: a learner's policy may retry forever; 4 attempts tell transient from permanent.
    capped = replace(policy, maximum_attempts=min(policy.maximum_attempts or MAX_CHECK_ATTEMPTS, MAX_CHECK_ATTEMPTS))
    if (third := retries.start_times(capped, 3)[-1]) > SLOWEST_THIRD_ATTEMPT_S:
        raise Wrong(
            f"RETRY_POLICY waits {retries.fmt(third)} before a third attempt: keep initial_interval short "
            "(e.g. 100 ms) so that a brief outage is bridged quickly."
        )
    course = runtime.current()
    nonce = course.new_id("check")
    cards = {kind: f"{kind}#{nonce}" for kind in payments.CARDS}
    name = activity_name(authorize)
    async with worker_for([AuthorizeHarness], [authorize], purpose="authorize") as queue:
        handles = {
            kind: await course.start_workflow(
                AuthorizeHarness.run,
                name,
                card,
                AUTHORIZE_CENTS,
                policy_to_data(capped),
                task_queue=queue,
                id_prefix="check-authorize",
                show=False,
            )
            for kind, card in cards.items()
        }
        results = await asyncio.gather(*(course.result(h, 10) for h in handles.values()))
    outcomes = dict(zip(handles, results, strict=True))
    for outcome in outcomes.values():
        _not_done_or_raise(outcome)

    def calls(kind: str) -> int:
        return payments.calls(cards[kind])

    for kind, error_type, what in (
        ("tok_invalid", "InvalidCard", "an invalid card number (a validation error)"),
        ("tok_declined", "CardDeclined", "a declined card (a business rule)"),
    ):
        outcome = outcomes[kind]
        if "error" not in outcome:
            raise Wrong(f"{what} came back as a success: let the workflow know it failed (raise, don't return).")
        if calls(kind) > 1:
            raise Wrong(
                f"{what} was tried {calls(kind)} times: it fails the same way every time. Make {error_type} "
                "non-retryable: raise ApplicationError(..., non_retryable=True), or list its type in RETRY_POLICY's "
                "non_retryable_error_types."
            )
        if outcome["retry_state"] != "NON_RETRYABLE_FAILURE":
            raise Wrong(
                f"{what} stopped after one attempt only because of maximum_attempts ({outcome['retry_state']}): mark "
                f"{error_type} non-retryable instead, so that transient errors can still be retried."
            )
        if outcome["type"] != error_type:
            raise Wrong(
                f"for {what} the workflow received the error type {outcome['type']!r}: keep the gateway's name, "
                f"{error_type!r}, as the type, so the workflow can tell what happened."
            )
    unavailable = outcomes["tok_unavailable"]
    if "error" in unavailable:
        if unavailable["retry_state"] == "NON_RETRYABLE_FAILURE":
            raise Wrong(
                "GatewayUnavailable (a 503) was not retried: it is transient, and the gateway answers on the third "
                "call. Only validation and business-rule errors are non-retryable."
            )
        raise Wrong(
            f"GatewayUnavailable was retried, but the workflow still got {unavailable['type']} "
            f"({unavailable['retry_state']}): the gateway answers on the third call; let RETRY_POLICY allow that."
        )
    limited = outcomes["tok_ratelimited"]
    if "error" in limited:
        raise Wrong(
            f"the rate-limited call failed ({limited['type']}, {limited['retry_state']}): a rate limit is not "
            "permanent: retry it, after the delay the gateway asks for."
        )
    times = payments.call_times(cards["tok_ratelimited"])
    if len(times) >= 2 and times[1] - times[0] < payments.RETRY_AFTER_S * 0.9:
        raise Wrong(
            f"the gateway asked to retry after {payments.RETRY_AFTER_S:g} s (RateLimited.retry_after), but the retry "
            "came sooner: raise ApplicationError(..., next_retry_delay=timedelta(seconds=err.retry_after))."
        )
    for kind in ("tok_visa", "tok_unavailable", "tok_ratelimited"):
        if outcomes[kind].get("result") != payments.approval(kind, AUTHORIZE_CENTS):
            raise Wrong("authorize must return what the gateway returns (payments.authorize(card, amount_cents)).")
    return (
        "an invalid and a declined card fail at once (InvalidCard, CardDeclined: non-retryable), a 503 is retried "
        f"until it works, and the rate-limited call waited the {payments.RETRY_AFTER_S:g} s the gateway asked for."
    )


# --------------------------------------------------------------------------- 03.4 a long task that resumes

CHUNKS = 20
KILL_AFTER = 12
REDO_ALLOWANCE = 9  # heartbeats reach the server every 0.8 × heartbeat_timeout (0.8 s = 8 chunks), plus the cut one
WAIT_FOR_CHUNKS_S = 6.0


def _attr_of(module: ModuleType, fn: Any) -> str:
    return next(name for name, value in vars(module).items() if value is fn)


async def _until_chunks(store: backup.BackupStore, file: str, handle: Any, timeout: float) -> None:
    """Until attempt 1 has done KILL_AFTER chunks; raise early if the activity is failing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_look = 0.0
    while len([e for e in store.executions(file) if e.attempt == 1]) < KILL_AFTER:
        if loop.time() > deadline:
            raise Wrong(
                f"fewer than {KILL_AFTER} chunks were done in {timeout:g} s: does checksum_file call "
                "store.checksum_chunk(file, chunk) for every chunk?"
            )
        if loop.time() - last_look > 0.3:
            last_look = loop.time()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                desc = await asyncio.wait_for(handle.describe(), 3)
                for act in desc.raw_description.pending_activities:
                    failure = act.last_failure.message if act.HasField("last_failure") else ""
                    if "NotImplementedError" in failure or act.last_failure.application_failure_info.type == (
                        "NotImplementedError"
                    ):
                        raise NotImplementedError(failure)
                if desc.status is not None and desc.status.name != "RUNNING":
                    return
        await asyncio.sleep(0.05)


@exercise("03.4")
async def check_resumable_checksum(module: Any) -> str:
    checksum_file = _activity(module, "checksum_file")
    store = getattr(module, "store", None)
    if not isinstance(store, backup.BackupStore):
        raise Wrong("the module has no `store` (a BackupStore): keep the line that creates it.")
    course = runtime.current()
    file = course.new_id("check-file")
    activity_queue = course.new_task_queue(f"checksum-{file.rsplit('-', 1)[-1]}")
    proc = await worker.start_process(
        course, activities=[f"{module.__name__}:{_attr_of(module, checksum_file)}"], task_queue=activity_queue
    )
    try:
        async with worker_for([ChecksumHarness], purpose="checksum") as queue:
            handle = await course.start_workflow(
                ChecksumHarness.run,
                activity_name(checksum_file),
                activity_queue,
                file,
                CHUNKS,
                task_queue=queue,
                id_prefix="check-checksum",
                show=False,
            )
            # What the server received from the heartbeats, as they arrive (the history does not keep details).
            async with heartbeats.ProgressWatcher(handle, total=CHUNKS) as seen:
                try:
                    await _until_chunks(store, file, handle, WAIT_FOR_CHUNKS_S)
                finally:
                    proc.kill()  # mid-task, like a crash: no goodbye to the server
                # The successor: a worker in this kernel on the same task queue.
                await course.start_worker(activities=[checksum_file], task_queue=activity_queue)
                try:
                    outcome = await course.result(handle, 12)
                finally:
                    await course.stop_worker(activity_queue)
    finally:
        proc.kill()
    _not_done_or_raise(outcome)
    if outcome.get("type") == "TimeoutError":
        raise Wrong(
            "the server got no heartbeat for 1 s (heartbeat_timeout), so it timed out attempt after attempt: call "
            "activity.heartbeat(...) after every chunk."
        )
    if "error" in outcome:
        raise Wrong(f"checksum_file failed: {outcome['type']}: {_scrub(outcome['message'], course)}")
    runs = store.executions(file)
    later = [e for e in runs if e.attempt > 1]
    if not later:
        raise Wrong("no second attempt ran after the worker was killed; did checksum_file finish too early?")
    if later[0].chunk == 0:
        if any(beat.details for beat in seen.heartbeats if beat.attempt == 1):
            raise Wrong(
                "after the crash the next attempt started again at chunk 0, although the server had its heartbeat "
                "details: read activity.info().heartbeat_details at the start and continue after that chunk."
            )
        raise Wrong(
            "after the crash the next attempt started again at chunk 0: the heartbeats carried no progress. Pass it: "
            "activity.heartbeat(chunk, total), and read it back from activity.info().heartbeat_details."
        )
    if missing := sorted(set(range(CHUNKS)) - {e.chunk for e in runs}):
        raise Wrong(
            f"chunk {missing[0]} never ran: the next attempt resumed after it. Heartbeat a chunk only once it is done."
        )
    expected = backup.file_checksum(file, CHUNKS)
    result = outcome.get("result")
    if result != expected:
        after_crash = sum(backup.chunk_checksum(file, c) for c in range(later[0].chunk, CHUNKS))
        if isinstance(result, int) and result == after_crash:
            raise Wrong(
                "the checksum lost the chunks done before the crash: the next attempt started its total at 0. Put "
                "the running total in the heartbeat details too, and restore it."
            )
        if isinstance(result, int) and any(expected - result == backup.chunk_checksum(file, c) for c in range(CHUNKS)):
            raise Wrong(
                "the checksum misses one chunk: the heartbeat recorded a total that did not include the chunk it "
                "named. Heartbeat after adding a chunk to the total, not before."
            )
        raise Wrong("checksum_file returned a wrong checksum: it is the sum of store.checksum_chunk over every chunk.")
    if len(runs) > CHUNKS + REDO_ALLOWANCE:
        raise Wrong(
            "too many chunks were done twice: the heartbeats lag far behind the work. Heartbeat after every chunk."
        )
    return (
        "the worker was killed mid-task; the next attempt resumed from the heartbeat details (redoing only the "
        "chunks after the last heartbeat the server had received) and the checksum is right."
    )
