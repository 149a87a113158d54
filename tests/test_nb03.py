"""Notebook 03 (activity design): the provider, the gateway, the storage service, the pictures, and the four checks.

The exercise tests take their code from the solution notebook itself (and its generated stub): the solution, two
alternative right answers in another style, and plausible wrong answers, each with the verdict it must get. The
last test runs the notebook's graded cells on a dev server as Temporal ships it (no course settings), as a
workshop's cluster would be.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import matplotlib
import pytest
from support import run_check, solution, swap_solution
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError, TimeoutType

from helpers import backup, failures, heartbeats, payments, retries, server, timeouts, worker
from helpers.checks import nb03

matplotlib.use("Agg")

NB03 = solution("03")


def assert_verdict(verdict, ex_id: str, status: str, hint: str) -> None:
    assert (verdict.exercise, verdict.status) == (ex_id, status), verdict
    assert hint in verdict.message, verdict.message
    if status == "passed":
        assert verdict.line() == NB03.stored_verdict(ex_id)


def exercise_module(scratch: Path, cell_id: str, variant: str, variants: dict[str, str], *, edit=None):
    """The exercise cell as a module: the solution, the learner's stub, or the solution region swapped."""
    if variant == "stub":
        return NB03.module(scratch, cell_id, learner=True)

    def change(source: str) -> str:
        if variant != "solution":
            source = swap_solution(source, variants[variant])
        return edit(source) if edit else source

    return NB03.module(scratch, cell_id, edit=change)


# --------------------------------------------------------------------------- the provider (course data)


def test_the_provider_charges_once_per_key_and_refuses_a_key_reused_for_another_charge(tmp_path: Path):
    provider = payments.PaymentProvider(tmp_path / "p.db")
    first = provider.charge("o1", 4200, idempotency_key="k1")
    assert provider.charge("o1", 4200, idempotency_key="k1") == first  # a retry gets the first answer
    assert provider.charge("o1", 4200) != first and provider.charge("o1", 4200) != first  # no key: new charges
    with pytest.raises(payments.IdempotencyKeyReused, match="one key per charge"):
        provider.charge("o2", 100, idempotency_key="k1")
    assert [c.idempotency_key for c in provider.charges("o1")] == ["k1", None, None]
    assert provider.query("SELECT COUNT(*) FROM charges") == [(3,)]
    assert (
        "⚠ double charge!" in repr(provider.table({"a": "o1"}))
        and "<table" in provider.table({"a": "o1"})._repr_html_()
    )


def test_a_dropped_response_happens_after_the_charge_and_only_as_often_as_asked(tmp_path: Path):
    provider = payments.PaymentProvider(tmp_path / "p.db")
    provider.drop_response("o1")
    with pytest.raises(ConnectionResetError):
        provider.charge("o1", 500, idempotency_key="k")
    assert len(provider.charges("o1")) == 1  # it went through
    charge_id = provider.charge("o1", 500, idempotency_key="k")  # the retry: same key, the answer arrives
    assert [c.charge_id for c in provider.charges("o1")] == [charge_id]


def test_racing_requests_with_one_key_make_one_charge(tmp_path: Path):
    """Check-then-act under BEGIN IMMEDIATE and a UNIQUE constraint: 8 threads, one key, one row."""
    provider = payments.PaymentProvider(tmp_path / "p.db")
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(provider.charge("o1", 700, idempotency_key="same")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(results)) == 1 and len(results) == 8
    assert len(provider.charges("o1")) == 1
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(provider.path) as db:  # the constraint itself
        db.execute("INSERT INTO charges VALUES ('x', 'o1', 700, 'same', 0)")


def test_the_gateway_fails_by_card(tmp_path: Path):
    with pytest.raises(payments.InvalidCard):
        payments.authorize("tok_invalid#t1", 100)
    with pytest.raises(payments.CardDeclined) as declined:
        payments.authorize("tok_declined#t1", 100)
    assert declined.value.code == 51
    for _ in range(payments.UNAVAILABLE_CALLS):
        with pytest.raises(payments.GatewayUnavailable):
            payments.authorize("tok_unavailable#t1", 100)
    assert payments.authorize("tok_unavailable#t1", 100) == payments.approval("tok_unavailable", 100)
    with pytest.raises(payments.RateLimited) as limited:
        payments.authorize("tok_ratelimited#t1", 100)
    assert limited.value.retry_after == payments.RETRY_AFTER_S
    assert payments.authorize("tok_ratelimited#t1", 100) == "auth-ratelimited-100"
    assert payments.calls("tok_ratelimited#t1") == 2 and len(payments.call_times("tok_ratelimited#t1")) == 2
    with pytest.raises(payments.InvalidCard, match="amount must be positive"):
        payments.authorize("tok_visa#t1", 0)


def test_the_storage_log_and_checksums(tmp_path: Path):
    store = backup.BackupStore(tmp_path / "b.db")

    async def work():
        return [await store.checksum_chunk("f", c) for c in range(3)]

    sums = asyncio.run(work())
    assert sum(sums) == backup.file_checksum("f", 3)
    assert [(e.chunk, e.attempt, e.op) for e in store.executions("f")] == [(c, 0, "checksum") for c in range(3)]
    assert store.chunks_done("f") == 3 and store.executions("other") == []


# --------------------------------------------------------------------------- the live demos, run twice


def test_the_killed_worker_charges_twice_without_a_key_and_once_with_one_each_time_the_cells_run(make_course, scratch):
    """Section 1, as a learner runs it and runs it again: the second run starts a worker process again (not the
    in-kernel worker the first run left), so the crash happens again."""
    checkout_demo = NB03.module(scratch, "charge-module")

    async def scenario():
        course = await make_course("03")
        ns = {"course": course, "worker": worker, "checkout_demo": checkout_demo}
        for _ in range(2):
            await NB03.run_cell("crash", ns)
            assert ns["proc"].killed
            await NB03.run_cell("crash-retry", ns)
            no_key, with_key = ns["orders"].values()
            assert len(checkout_demo.provider.charges(no_key.id)) == 2
            assert len(checkout_demo.provider.charges(with_key.id)) == 1
        await worker.stop_all()
        await course.stop_all()

    asyncio.run(scenario())


def test_the_backup_resumes_after_the_kill_each_time_the_cell_runs(make_course, scratch):
    backup_job = NB03.module(scratch, "backup-module")

    async def scenario():
        course = await make_course("03")
        ns = {"course": course, "worker": worker, "backup_job": backup_job, "heartbeats": heartbeats}
        ns.update(retries=retries, time=time, display=lambda _: None)
        for _ in range(2):
            await NB03.run_cell("backup-crash", ns)
            runs = backup_job.store.executions(ns["disk"])
            later = [e for e in runs if e.attempt > 1]
            assert {e.attempt for e in runs} == {1, 2} and 0 < later[0].chunk <= 12
            assert sorted({e.chunk for e in runs}) == list(range(24))
            assert any(h.attempt == 1 and h.details and h.details[0] > 0 for h in ns["progress"].heartbeats)
        await worker.stop_all()
        await course.stop_all()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- formulas, failures, pictures


def test_backoff_formula_and_schedule_text():
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=0.1), maximum_interval=timedelta(seconds=1), maximum_attempts=6
    )
    assert retries.delays(policy, 6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert retries.start_times(policy, 6) == pytest.approx([0, 0.1, 0.3, 0.7, 1.5, 2.5])
    assert "then it gives up (maximum_attempts=6)" in repr(retries.schedule(policy))
    default = repr(retries.schedule(RetryPolicy()))
    assert "forever" in default and "100 s" in default and default.count("\n") == 13
    assert retries.maximum_interval(RetryPolicy()) == timedelta(seconds=100)
    assert "maximum_attempts=unlimited" in retries.describe(RetryPolicy())


def test_failures_read_like_the_chain_the_workflow_receives():
    timeout = TimeoutError(
        "activity ScheduleToStart timeout", type=TimeoutType.SCHEDULE_TO_START, last_heartbeat_details=[]
    )
    err = ActivityError(
        "Activity task timed out",
        scheduled_event_id=5,
        started_event_id=0,
        identity="",
        activity_type="call_api",
        activity_id="1",
        retry_state=RetryState.TIMEOUT,
    )
    err.__cause__ = timeout
    assert failures.describe(err) == (
        "ActivityError(TIMEOUT) ← TimeoutError(SCHEDULE_TO_START): activity ScheduleToStart timeout"
    )
    declined = ApplicationError("insufficient funds", 51, type="CardDeclined", non_retryable=True)
    assert (
        failures.describe(declined) == "ApplicationError(CardDeclined, non_retryable, details=51): insufficient funds"
    )
    assert failures.retry_state(err) == "TIMEOUT" and failures.retry_state(declined) is None


def test_pictures_draw_with_labels():
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    timeouts.diagram(ax=ax)
    assert "four activity timeouts" in ax.get_title() and len(ax.texts) > 10
    policy = RetryPolicy(initial_interval=timedelta(seconds=0.1), maximum_attempts=3)
    _, ax = plt.subplots()
    retries.plot_attempts([0, 0.11, 0.32], policy, ax=ax)
    assert ax.get_xlabel().startswith("seconds since attempt 1") and "RetryPolicy(" in ax.get_title()
    execs = [backup.Execution("f", "upload", c, 1 if c < 5 else 2, 10 + c * 0.1) for c in [*range(5), 3, 4, 5]]
    beats = [heartbeats.ServerHeartbeat(10.1, 1, [0]), heartbeats.ServerHeartbeat(10.3, 1, [2])]
    _, ax = plt.subplots()
    heartbeats.plot_resume(execs, beats, killed_at=10.45, heartbeat_timeout=1.0, title="t", ax=ax)
    labels = ax.get_legend_handles_labels()[1]
    assert "worker process killed" in labels and "chunks done twice" in labels and ax.get_ylabel() == "chunk"
    assert heartbeats.redone(execs) == [3, 4]
    plt.close("all")


def test_the_retry_explorer_needs_no_clicks_and_writes_the_policy():
    explorer = retries.RetryExplorer(RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_attempts=5))
    bundle = explorer._repr_mimebundle_()
    assert bundle["text/plain"] == explorer.summary() and "application/vnd.jupyter.widget-view+json" in bundle
    assert explorer.png().startswith(b"\x89PNG")
    explorer._sliders["backoff_coefficient"].value = 3.0  # a slider move changes the policy and the code
    assert explorer.policy.backoff_coefficient == 3.0 and "backoff_coefficient=3" in explorer.code()
    namespace = {"RetryPolicy": RetryPolicy, "timedelta": timedelta}
    pasted = eval(explorer.code(), namespace)  # the line to paste is a policy with the same schedule
    assert retries.start_times(pasted, 5) == retries.start_times(explorer.policy, 5) == [0, 0.2, 0.8, 2.6, 8.0]


def test_the_progress_watcher_reads_heartbeats_from_the_server(make_course, scratch):
    module = NB03.module(scratch, "backup-module")

    async def scenario():
        course = await make_course("03")
        await course.start_worker(workflows=[module.BackUp], activities=[module.back_up])
        handle = await course.start_workflow(module.BackUp.run, "disk-t", 12, show=False)
        watcher = heartbeats.ProgressWatcher(handle, total=12)
        assert "12" in watcher._repr_mimebundle_()["text/plain"]
        async with watcher:
            assert await course.result(handle) == 12
        assert watcher.heartbeats and watcher.heartbeats[0].details == [0]
        assert all(h.attempt == 1 for h in watcher.heartbeats)
        # throttled: 12 heartbeat() calls in ~1.2 s, the server saw the first and about one per 0.8 s
        assert 1 <= len(watcher.heartbeats) <= 4
        await course.stop_all()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- 03.1 an idempotent charge

CHARGE_VARIANTS = {
    "hashed-run-id": """
        import hashlib
        info = activity.info()
        key = hashlib.sha256(f"{info.workflow_run_id}:{info.activity_id}".encode()).hexdigest()
    """,
    "business-parts": """
        key = "-".join([order_id, activity.info().workflow_id, activity.info().activity_id])
    """,
    "no-key": """
        key = None
    """,
    "random-key": """
        import uuid
        key = str(uuid.uuid4())
    """,
    "attempt-in-key": """
        key = f"{activity.info().workflow_id}-{activity.info().attempt}"
    """,
    "order-id-key": """
        key = order_id
    """,
    "activity-id-only": """
        key = activity.info().activity_id
    """,
}


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "3 charges were made exactly once each"),
        ("hashed-run-id", "passed", "3 charges were made exactly once each"),
        ("business-parts", "passed", "3 charges were made exactly once each"),
        ("stub", "not_done", "make a key that is the same for every attempt of this charge"),
        ("no-key", "failed", "an order was charged twice: no idempotency key reached the provider"),
        ("random-key", "failed", "the retry sent a different idempotency key than the first attempt"),
        ("attempt-in-key", "failed", "not from the attempt number"),
        ("order-id-key", "failed", "was charged only once: both installments got the same key"),
        ("activity-id-only", "failed", "activity_id alone starts at '1' in every workflow"),
    ],
)
def test_nb03_idempotent_charge(variant, status, hint, make_course, scratch, capsys):
    module = exercise_module(scratch, "ex1-code", variant, CHARGE_VARIANTS)

    async def scenario():
        await make_course("03")
        await nb03.check_idempotent_charge(module)

    assert_verdict(run_check(scenario, capsys=capsys), "03.1", status, hint)


def test_nb03_idempotent_charge_needs_the_module(make_course, scratch, capsys):
    async def scenario():
        await make_course("03")
        await nb03.check_idempotent_charge("checkout")

    verdict = run_check(scenario, capsys=capsys)
    assert verdict.status == "failed" and "pass the module" in verdict.message


# --------------------------------------------------------------------------- 03.2 timeouts and a retry policy


def _solution_options() -> dict:
    namespace = {"timedelta": timedelta, "RetryPolicy": RetryPolicy}
    exec(NB03.source("ex2-code"), namespace)
    return namespace["FETCH_RATES"]


def _policy(**changes) -> RetryPolicy:
    base = dict(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5))
    return RetryPolicy(**{**base, **changes})


ALTERNATIVE_A = {  # the boundaries, other numbers
    "start_to_close_timeout": timedelta(seconds=10),
    "schedule_to_close_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), backoff_coefficient=1.5, maximum_interval=timedelta(seconds=4)
    ),
}
ALTERNATIVE_B = dict(  # milliseconds, a generous maximum_attempts
    start_to_close_timeout=timedelta(milliseconds=3000),
    schedule_to_close_timeout=timedelta(milliseconds=30_000),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5), maximum_attempts=50
    ),
)


@pytest.mark.parametrize(
    ("change", "status", "hint"),
    [
        ({}, "passed", "a hung call is retried within 10 s"),
        (ALTERNATIVE_A, "passed", "a hung call is retried within 10 s"),
        (ALTERNATIVE_B, "passed", "a hung call is retried within 10 s"),
        (..., "not_done", "fill in FETCH_RATES"),
        ({"start_to_close_timeout": timedelta(seconds=2)}, "failed", "is not longer than a healthy call (2 s)"),
        ({"start_to_close_timeout": timedelta(seconds=30)}, "failed", "must be retried within 10 s"),
        ({"start_to_close_timeout": 5}, "failed", "write it as a timedelta"),
        ({"schedule_to_close_timeout": None}, "failed", "the default retry policy retries forever"),
        ({"schedule_to_close_timeout": timedelta(minutes=1)}, "failed", "waits at most 30 s"),
        ({"retry_policy": None}, "failed", "without a retry_policy the default one applies"),
        ({"retry_policy": _policy(maximum_interval=None)}, "failed", "maximum_interval is not set, so it is 100"),
        ({"retry_policy": _policy(initial_interval=timedelta(seconds=2))}, "failed", "within 1 s"),
        ({"retry_policy": _policy(maximum_attempts=3)}, "failed", "maximum_attempts=3 gives up after about"),
        ({"retry_policy": _policy(maximum_interval=timedelta(seconds=0.1))}, "failed", "the SDK rejects this"),
        ({"start_to_close": timedelta(seconds=5)}, "failed", "(did you mean 'start_to_close_timeout'?)"),
        ({"schedule_to_start_timeout": timedelta(seconds=5)}, "failed", "leave schedule_to_start_timeout out"),
        ({"retries": 3}, "failed", "'retries' is not an option of workflow.execute_activity: use the names"),
        ({"task_queue": "rates", "summary": "fetch rates"}, "passed", "a hung call is retried within 10 s"),
    ],
)
def test_nb03_fetch_rates_options(change, status, hint, capsys):
    if change is ...:
        options = ...
    elif change in (ALTERNATIVE_A, ALTERNATIVE_B):
        options = change
    else:
        options = {k: v for k, v in {**_solution_options(), **change}.items() if v is not None}
    assert_verdict(run_check(nb03.check_fetch_rates_options, options, capsys=capsys), "03.2", status, hint)


def test_nb03_fetch_rates_stub_is_not_done(capsys):
    namespace = {"timedelta": timedelta, "RetryPolicy": RetryPolicy}
    exec(NB03.source("ex2-code", learner=True), namespace)
    verdict = run_check(nb03.check_fetch_rates_options, namespace["FETCH_RATES"], capsys=capsys)
    assert verdict.status == "not_done" and "FETCH_RATES" in verdict.message


# --------------------------------------------------------------------------- 03.3 classified errors

POLICY_LINE = (
    "RETRY_POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=1))"
)


def _policy_line(new: str):
    def edit(source: str) -> str:
        assert POLICY_LINE in source
        return source.replace(POLICY_LINE, new)

    return edit


AUTHORIZE_VARIANTS = {
    # right: the policy names the permanent errors; only the rate limit needs an ApplicationError
    "by-policy": """
        try:
            return payments.authorize(card, amount_cents)
        except payments.RateLimited as err:
            delay = timedelta(seconds=err.retry_after)
            raise ApplicationError("rate limited", type="RateLimited", next_retry_delay=delay)
    """,
    # right: one except per error, details kept, the rate limit waited out inside the activity
    "explicit-and-wait": """
        import asyncio
        for _ in range(3):
            try:
                return payments.authorize(card, amount_cents)
            except payments.InvalidCard as err:
                raise ApplicationError(f"invalid card: {err}", type="InvalidCard", non_retryable=True)
            except payments.CardDeclined as err:
                raise ApplicationError("declined", err.code, type="CardDeclined", non_retryable=True)
            except payments.RateLimited as err:
                await asyncio.sleep(err.retry_after)
        raise ApplicationError("still rate limited", type="RateLimited")
    """,
    "unclassified": """
        return payments.authorize(card, amount_cents)
    """,
    "everything-permanent": """
        try:
            return payments.authorize(card, amount_cents)
        except Exception as err:
            raise ApplicationError(str(err), type=type(err).__name__, non_retryable=True) from err
    """,
    "rate-limit-ignored": """
        try:
            return payments.authorize(card, amount_cents)
        except (payments.InvalidCard, payments.CardDeclined) as err:
            raise ApplicationError(str(err), type=type(err).__name__, non_retryable=True) from err
    """,
    "one-generic-type": """
        try:
            return payments.authorize(card, amount_cents)
        except (payments.InvalidCard, payments.CardDeclined) as err:
            raise ApplicationError(str(err), type="PaymentError", non_retryable=True) from err
        except payments.RateLimited as err:
            raise ApplicationError(str(err), next_retry_delay=timedelta(seconds=err.retry_after)) from err
    """,
    "swallowed": """
        try:
            return payments.authorize(card, amount_cents)
        except (payments.InvalidCard, payments.CardDeclined):
            return "declined"
        except payments.RateLimited as err:
            raise ApplicationError(str(err), next_retry_delay=timedelta(seconds=err.retry_after)) from err
    """,
}
AUTHORIZE_POLICIES = {
    "by-policy": _policy_line(
        "RETRY_POLICY = RetryPolicy(\n"
        "    initial_interval=timedelta(milliseconds=100), non_retryable_error_types=['InvalidCard', 'CardDeclined']\n"
        ")"
    ),
    "one-attempt": _policy_line("RETRY_POLICY = RetryPolicy(maximum_attempts=1)"),
    "slow-policy": _policy_line("RETRY_POLICY = RetryPolicy(initial_interval=timedelta(seconds=5))"),
}


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "a 503 is retried until it works"),
        ("by-policy", "passed", "a 503 is retried until it works"),
        ("explicit-and-wait", "passed", "waited the 1.5 s the gateway asked for"),
        ("stub", "not_done", "call payments.authorize; fail invalid and declined cards at once"),
        ("unclassified", "failed", "an invalid card number (a validation error) was tried 4 times"),
        ("everything-permanent", "failed", "GatewayUnavailable (a 503) was not retried: it is transient"),
        ("rate-limit-ignored", "failed", "but the retry came sooner: raise ApplicationError(..., next_retry_delay"),
        ("one-generic-type", "failed", "received the error type 'PaymentError': keep the gateway's name"),
        ("swallowed", "failed", "came back as a success: let the workflow know it failed"),
        ("one-attempt", "failed", "stopped after one attempt only because of maximum_attempts"),
        ("slow-policy", "failed", "RETRY_POLICY waits 15 s before a third attempt"),
    ],
)
def test_nb03_error_classification(variant, status, hint, make_course, scratch, capsys):
    body = "unclassified" if variant in ("one-attempt", "slow-policy") else variant
    module = exercise_module(scratch, "ex3-code", body, AUTHORIZE_VARIANTS, edit=AUTHORIZE_POLICIES.get(variant))

    async def scenario():
        await make_course("03")
        await nb03.check_error_classification(module)

    assert_verdict(run_check(scenario, capsys=capsys), "03.3", status, hint)


# --------------------------------------------------------------------------- 03.4 a long task that resumes

CHECKSUM_VARIANTS = {
    "dict-details": """
        state = activity.info().heartbeat_details[0] if activity.info().heartbeat_details else {"next": 0, "total": 0}
        while state["next"] < chunks:
            state["total"] += await store.checksum_chunk(file, state["next"])
            state["next"] += 1
            activity.heartbeat(state)
        return state["total"]
    """,
    "next-chunk-details": """
        chunk, total = activity.info().heartbeat_details or (0, 0)
        while chunk < chunks:
            total += await store.checksum_chunk(file, chunk)
            chunk += 1
            activity.heartbeat(chunk, total)  # the next chunk to do, and the total so far
        return total
    """,
    "no-heartbeat": """
        total = 0
        for chunk in range(chunks):
            total += await store.checksum_chunk(file, chunk)
        return total
    """,
    "no-resume": """
        total = 0
        for chunk in range(chunks):
            total += await store.checksum_chunk(file, chunk)
            activity.heartbeat(chunk, total)
        return total
    """,
    "empty-heartbeat": """
        details = activity.info().heartbeat_details
        next_chunk, total = (details[0] + 1, details[1]) if details else (0, 0)
        for chunk in range(next_chunk, chunks):
            total += await store.checksum_chunk(file, chunk)
            activity.heartbeat()
        return total
    """,
    "chunk-only": """
        details = activity.info().heartbeat_details
        total = 0
        for chunk in range(details[0] + 1 if details else 0, chunks):
            total += await store.checksum_chunk(file, chunk)
            activity.heartbeat(chunk)
        return total
    """,
    "heartbeat-first": """
        details = activity.info().heartbeat_details
        next_chunk, total = (details[0] + 1, details[1]) if details else (0, 0)
        for chunk in range(next_chunk, chunks):
            activity.heartbeat(chunk, total)
            total += await store.checksum_chunk(file, chunk)
        return total
    """,
}


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "the next attempt resumed from the heartbeat details"),
        ("dict-details", "passed", "the checksum is right"),
        ("next-chunk-details", "passed", "the checksum is right"),
        ("stub", "not_done", "resume from the heartbeat details if any"),
        ("no-heartbeat", "failed", "the server got no heartbeat for 1 s"),
        ("no-resume", "failed", "started again at chunk 0, although the server had its heartbeat details"),
        ("empty-heartbeat", "failed", "started again at chunk 0: the heartbeats carried no progress"),
        ("chunk-only", "failed", "the checksum lost the chunks done before the crash"),
        ("heartbeat-first", "failed", "Heartbeat after adding a chunk to the total, not before"),
    ],
)
def test_nb03_resumable_checksum(variant, status, hint, make_course, scratch, capsys):
    module = exercise_module(scratch, "ex4-code", variant, CHECKSUM_VARIANTS)

    async def scenario():
        await make_course("03")
        await nb03.check_resumable_checksum(module)

    assert_verdict(run_check(scenario, capsys=capsys), "03.4", status, hint)


# --------------------------------------------------------------------------- on a server as Temporal ships it


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """A dev server without the course's dynamic config: short timers and backoffs are rounded up to ~1 s."""
    dev = server.DevServer.start(
        headless=True, course_config=False, log_path=tmp_path_factory.mktemp("plain") / "server.log"
    )
    yield dev
    dev.stop()


@pytest.mark.parametrize(
    ("cell_id", "variant", "variants", "check", "status", "hint"),
    [
        ("ex3-code", "rate-limit-ignored", AUTHORIZE_VARIANTS, nb03.check_error_classification, "failed", "sooner"),
        ("ex3-code", "unclassified", AUTHORIZE_VARIANTS, nb03.check_error_classification, "failed", "was tried"),
        ("ex4-code", "no-resume", CHECKSUM_VARIANTS, nb03.check_resumable_checksum, "failed", "at chunk 0"),
    ],
)
def test_wrong_answers_are_still_wrong_where_timers_are_rounded_up(
    cell_id, variant, variants, check, status, hint, plain_server, make_course, scratch, monkeypatch, capsys
):
    """The verdicts that depend on timing: a retry that ignores 'retry after 1.5 s' still comes too soon when the
    server rounds the 100 ms backoff up to a second."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", plain_server.address)
    module = exercise_module(scratch, cell_id, variant, variants)

    async def scenario():
        course = await make_course("03")
        assert course.target.address == plain_server.address
        await check(module)

    verdict = run_check(scenario, capsys=capsys)
    assert verdict.status == status and hint in verdict.message, verdict
