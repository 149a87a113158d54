"""Notebook 04 (sagas): the SQLite world, the saga lab, the crash / cancellation / parallel demos, and the checks.

Demo and exercise code is taken from the solution notebook itself (and its generated stub), so the tests test
what a learner gets. Every check gets its solution, its stub, two correct answers in other styles, and plausible
wrong answers, each of which must get its own verdict.
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
from support import run_check, solution
from temporalio.exceptions import ApplicationError

from helpers import history, kernel, saga_lab, worker
from helpers.checks import nb04
from helpers.shop_world import COMPENSATION_OF, KINDS, ORDER_STEPS, ShopWorld

NB = solution("04")


def with_solution(cell_id: str, body: str, *, prelude: str = "", imports: str = "") -> str:
    """The exercise cell with its solution region replaced by ``body`` (dedented, then indented like the region);
    ``prelude`` goes before the workflow class, ``imports`` at the top."""
    source = NB.with_solution(cell_id, body)
    if prelude:
        source = source.replace("@workflow.defn", textwrap.dedent(prelude).strip("\n") + "\n\n\n@workflow.defn", 1)
    return (imports + "\n" if imports else "") + source


# --------------------------------------------------------------------------- the world


def test_services_are_idempotent_where_a_real_one_is_and_record_every_call(tmp_path: Path):
    world = ShopWorld(tmp_path / "w.db")

    async def scenario():
        assert await world.reserve_stock("o1", "mug", 2) == "done: 2 × mug held"
        assert await world.reserve_stock("o1", "mug", 2) == "no-op: already held"
        assert await world.charge("o1", 25.0) == "done: 25.00 charged"
        assert await world.charge("o1", 25.0) == "no-op: already charged"
        assert await world.ship("o1", "here") == "done: shipment booked"
        assert str(world.order_state("o1")) == "stock held: 2 · paid: 25.00 · shipment: booked"
        assert world.order_state("o1").consistent("COMPLETED") and not world.order_state("o1").consistent("FAILED")
        # undo: each compensation is safe to repeat, and harmless when its step never happened
        assert await world.cancel_shipment("o1") == "done: shipment cancelled"
        assert await world.cancel_shipment("o1") == "no-op: already cancelled"
        assert await world.cancel_shipment("never") == "no-op: nothing booked"
        assert await world.release_stock("o1") == "done: 2 × mug released"
        assert await world.release_stock("o1") == "no-op: already released"
        assert await world.refund("never", 25.0) == "no-op: nothing was charged"
        # a refund is a new movement of money each time, unless its key was seen before
        assert await world.refund("o1", 10.0) == "done: 10.00 refunded"
        assert await world.refund("o1", 10.0) == "done: 10.00 refunded"
        assert await world.refund("o1", 5.0, key="k") == "done: 5.00 refunded"
        assert await world.refund("o1", 5.0, key="k") == "no-op: a refund with this key was already made"
        assert world.refunds("o1") == 3
        with pytest.raises(ApplicationError, match=r"more than the 0\.00 left"):
            await world.refund("o1", 1.0)
        assert world.order_state("o1").untouched and world.order_state("o1").consistent("FAILED")
        world.set_points("ada", 100)
        await world.revoke_points("ada", 30, order_id="p1", key="x")
        await world.revoke_points("ada", 30, order_id="p1", key="x")
        await world.revoke_points("ada", 5, order_id="p2")
        await world.revoke_points("ada", 5, order_id="p2")
        assert world.points("ada") == 60 and world.points_moves("p1") == [(-30, "x")]

    asyncio.run(scenario())
    effects = world.effects("o1")
    assert effects.actions()[:3] == ["reserve_stock", "reserve_stock", "charge"]
    assert effects.actions(compensations=True, changed=True) == ["cancel_shipment", "release_stock", *["refund"] * 3]
    assert effects.count("refund") == 3 and effects.rows[-1].outcome.startswith("rejected: ")
    assert "↩ cancel_shipment" in repr(effects) and "<table" in effects._repr_html_()


def test_injected_failures_transient_permanent_timeout_slow(tmp_path: Path):
    world = ShopWorld(tmp_path / "w.db")

    async def scenario():
        world.inject("o", "reserve_stock", "transient")
        with pytest.raises(ConnectionError):
            await world.reserve_stock("o", "mug", 1)
        assert await world.reserve_stock("o", "mug", 1) == "done: 1 × mug held"  # one call only
        world.inject("o", "charge", "permanent")
        for _ in range(2):  # every call
            with pytest.raises(ApplicationError) as err:
                await world.charge("o", 5.0)
            assert err.value.non_retryable and err.value.type == "Rejected" and err.value.message == "card declined"
        assert world.order_state("o").paid_cents == 0  # a rejection changes nothing
        world.inject("o", "ship", "timeout", delay=0.3)
        started = time.monotonic()
        await world.ship("o", "x")  # took effect, then held its answer back
        assert time.monotonic() - started >= 0.3 and world.order_state("o").shipment == "booked"
        world.inject("o", "release_stock", "permanent", delay=0.2)  # a service that takes its time to say no
        started = time.monotonic()
        with pytest.raises(ApplicationError):
            await world.release_stock("o")
        assert time.monotonic() - started >= 0.2
        with pytest.raises(ValueError, match="kind must be one of"):
            world.inject("o", "ship", "sometimes")

    asyncio.run(scenario())
    outcomes = [e.outcome for e in world.effects("o").rows]
    assert outcomes[0] == "failed: service unavailable" and outcomes[2] == "rejected: card declined"
    assert outcomes[-2:] == [
        "done: shipment booked · then its answer was lost",
        "rejected: the warehouse system refuses the release",
    ]


# --------------------------------------------------------------------------- the demos, from the notebook


def demo_modules(scratch: Path) -> dict:
    """The notebook's modules, as its cells write them."""
    return {
        name: NB.module(scratch, cell)
        for name, cell in [
            ("shop", "shop-module"),
            ("order_plain", "no-saga-module"),
            ("order_saga", "saga-module"),
            ("order_saga_after", "saga-after-module"),
            ("parallel_saga", "parallel-module"),
        ]
    }


def test_the_saga_leaves_every_failure_point_consistent_and_registering_after_does_not(make_course, scratch):
    import matplotlib

    matplotlib.use("Agg")
    mods = demo_modules(scratch)
    shop, saga, after = mods["shop"], mods["order_saga"].OrderSaga, mods["order_saga_after"].OrderSagaRegisteringAfter

    async def scenario():
        course = await make_course("04")
        await course.start_worker(
            workflows=[saga, after, mods["order_plain"].OrderWithoutSaga], activities=shop.ACTIVITIES
        )
        sagas = {"after": after, "before": saga}
        started = time.monotonic()
        matrix = await saga_lab.failure_matrix(course, sagas, world=shop.world, new_order=shop.new_order)
        assert time.monotonic() - started < 9  # the notebook cell's budget is 10 s
        order = shop.new_order(course.new_id("order"))
        shop.world.inject(order["id"], "ship", "permanent")
        plain = await saga_lab.run(
            course, mods["order_plain"].OrderWithoutSaga.run, order, world=shop.world, show=False
        )
        await course.stop_all()
        return matrix, plain

    matrix, plain = asyncio.run(scenario())
    timeouts = [f"{step} · timeout" for step in ORDER_STEPS]
    assert matrix.inconsistent("before") == [] and matrix.inconsistent("after") == timeouts
    assert len(matrix.scenarios) == 1 + len(ORDER_STEPS) * len(KINDS)
    for step in ORDER_STEPS:
        run = matrix.runs[(f"{step} · permanent", "before")]
        assert run.outcome.error_type == "OrderFailed" and f"{step} failed" in run.outcome.message
        # last in, first out, read from the world: the undo calls come in reverse order of the steps
        undone = list(dict.fromkeys(run.effects.actions(compensations=True)))
        forward = list(dict.fromkeys(run.effects.actions(compensations=False)))
        assert undone == [COMPENSATION_OF[s] for s in reversed(forward)]
        assert matrix.runs[(f"{step} · transient", "before")].outcome.status == "COMPLETED"
    assert "❌ failed, 25.00 still charged" in repr(matrix) and "<table" in matrix._repr_html_()
    matrix.plot()
    assert not plain.consistent and plain.state.leftovers() == ["2 items still held", "25.00 still charged"]
    assert plain.verdict() == "❌ inconsistent: 2 items still held, 25.00 still charged"


def test_a_worker_killed_while_compensating_is_replaced_and_nothing_is_undone_twice(make_course, scratch):
    mods = demo_modules(scratch)

    async def scenario():
        course = await make_course("04")
        ns = {"course": course, "worker": worker, "saga_lab": saga_lab, "time": time, **mods}
        await NB.run_cell("crash-start", ns)
        assert ns["first"].killed and ns["shop"].world.order_state(ns["crash_order"]["id"]).held == 2
        started = time.monotonic()
        await NB.run_cell("crash-resume", ns)
        assert time.monotonic() - started < 9
        await worker.stop_all()
        return ns

    ns = asyncio.run(scenario())
    crashed, first, second = ns["crashed"], ns["first"], ns["second"]
    assert crashed.consistent and crashed.outcome.error_type == "OrderFailed"
    effects = crashed.effects
    assert [effects.count(a) for a in ("refund", "release_stock")] == [1, 1]  # each undone once
    by_process = {(e.action, e.outcome.split(":")[0]): e.pid for e in effects.rows if e.compensation}
    assert by_process[("refund", "done")] == first.pid and by_process[("refund", "no-op")] == second.pid
    assert by_process[("release_stock", "done")] == second.pid
    assert "worker 1 (killed)" in repr(crashed) and "worker 2" in repr(crashed)


def test_a_cancelled_order_is_undone_even_when_the_cancel_lands_in_the_compensations(make_course, scratch):
    mods = demo_modules(scratch)

    async def scenario():
        course = await make_course("04")
        await course.start_worker(workflows=[mods["order_saga"].OrderSaga], activities=mods["shop"].ACTIVITIES)
        ns = {"course": course, "worker": worker, "saga_lab": saga_lab, **mods}
        await NB.run_cell("cancel-run", ns)
        late_ns = {**ns}
        import matplotlib

        matplotlib.use("Agg")
        await NB.run_cell("cancel-during", late_ns)
        await course.stop_all()
        return ns["cancelled"], late_ns["late"]

    cancelled, late = asyncio.run(scenario())
    assert cancelled.outcome.status == "CANCELED" and cancelled.consistent
    assert cancelled.state.shipment == "cancelled"  # the shipment booked before the cancel was undone
    assert late.outcome.error_type == "OrderFailed" and late.consistent
    assert late.effects.actions(compensations=True, changed=True) == ["refund", "release_stock"]
    names = [history.event_name(e) for e in late.history.events]
    requested = names.index("WorkflowExecutionCancelRequested")
    assert names.count("ActivityTaskScheduled") == 6 and names.index("ActivityTaskScheduled", requested) > requested


def test_parallel_steps_compensate_only_what_may_have_happened(make_course, scratch):
    import matplotlib

    matplotlib.use("Agg")
    mods = demo_modules(scratch)

    async def scenario():
        course = await make_course("04")
        ns = {"course": course, "saga_lab": saga_lab, **mods}
        await NB.run_cell("parallel-run", ns)
        # a cancel while both parallel steps run: both may have happened, both are undone
        order = mods["shop"].new_order(course.new_id("order"))
        mods["shop"].world.inject(order["id"], "charge", "timeout")
        handle = await course.start_workflow(
            mods["parallel_saga"].ParallelOrderSaga.run, order, id=order["id"], show=False
        )
        await worker.wait_until(lambda: mods["shop"].world.effects(order["id"]).count("charge") == 1, 5)
        await handle.cancel()
        cancelled = await saga_lab.finish(course, handle, world=mods["shop"].world)
        await course.stop_all()
        return ns["parallel"], cancelled

    parallel, cancelled = asyncio.run(scenario())
    assert parallel.consistent and parallel.outcome.message == "charge failed: card declined; undone: release_stock"
    assert parallel.effects.actions() == ["reserve_stock", "charge", "release_stock"]  # the stock was held first
    bars = {b.row: b for b in saga_lab.timeline_bars(parallel.history)}
    assert bars["charge"].kind == "failed" and bars["↩ release_stock"].kind == "compensation"
    assert bars["reserve_stock"].start < bars["charge"].end  # they overlapped
    assert cancelled.outcome.status == "CANCELED" and cancelled.consistent
    assert set(cancelled.effects.actions(compensations=True, changed=True)) == {"refund", "release_stock"}


def test_the_failure_picker_runs_one_order_and_needs_no_clicks(make_course, scratch):
    import matplotlib

    matplotlib.use("Agg")
    mods = demo_modules(scratch)

    async def scenario():
        course = await make_course("04")
        ns = {"course": course, "saga_lab": saga_lab, "ORDER_STEPS": ORDER_STEPS, "KINDS": KINDS, **mods}
        await NB.run_cell("picker", ns)
        picker = saga_lab.FailurePicker(ns["order_with_failure"], steps=ORDER_STEPS, kinds=KINDS)
        bundle = picker._repr_mimebundle_()
        assert bundle["text/plain"] == picker.summary() and "application/vnd.jupyter.widget-view+json" in bundle
        picker.step, picker.kind = "charge", "timeout"
        run = await picker.run_selected()
        assert len(picker._output.outputs) == 2  # the run and its timeline, shown under the buttons
        picker.step = None
        ok = await picker.run_selected()
        await course.stop_all()
        return run, ok

    run, ok = asyncio.run(scenario())
    assert run.consistent and run.effects.count("refund") == 1 and run.outcome.error_type == "OrderFailed"
    assert ok.outcome.status == "COMPLETED" and ok.consistent


def test_the_sql_demo_reads_the_same_rows_as_the_world(tmp_path: Path):
    world = ShopWorld(tmp_path / "world.db")
    asyncio.run(world.charge("o9", 25.0))
    rows = sqlite3.connect(world.path).execute("SELECT kind, cents FROM payments WHERE order_id = 'o9'").fetchall()
    assert rows == [("charge", 2500)]


# --------------------------------------------------------------------------- 04.1 the trip saga

TRIP_ALT_HELPER = (
    """
    saga = Saga(trip)
    succeeded = False
    try:
        await saga.step(book_flight, cancel_flight)
        await saga.step(book_hotel, cancel_hotel)
        await saga.step(book_car, cancel_car)
        succeeded = True
    finally:
        if not succeeded:
            await saga.compensate()
    """,
    """
    class Saga:
        def __init__(self, trip):
            self.trip = trip
            self.undo = []

        async def step(self, do, undo):
            self.undo.insert(0, undo)  # newest first
            await workflow.execute_activity(do, self.trip, **STEP)

        async def compensate(self):
            for undo in self.undo:
                await workflow.execute_activity(undo, self.trip, **UNDO)
    """,
)

TRIP_ALT_EXPLICIT = """
    undo = []
    try:
        undo.append(lambda: workflow.execute_activity(cancel_flight, trip, **UNDO))
        await workflow.execute_activity(book_flight, trip, **STEP)
        undo.append(lambda: workflow.execute_activity(cancel_hotel, trip, **UNDO))
        await workflow.execute_activity(book_hotel, trip, **STEP)
        undo.append(lambda: workflow.execute_activity(cancel_car, trip, **UNDO))
        await workflow.execute_activity(book_car, trip, **STEP)
    except BaseException:
        while undo:
            await undo.pop()()
        raise
"""

TRIP_FIFO = NB.solution_body("ex1-code").replace("reversed(compensations)", "compensations")
TRIP_REGISTER_AFTER = """
    compensations = []
    try:
        for book, cancel in [(book_flight, cancel_flight), (book_hotel, cancel_hotel), (book_car, cancel_car)]:
            await workflow.execute_activity(book, trip, **STEP)
            compensations.append(cancel)  # after the booking returned
    except Exception as err:
        for cancel in reversed(compensations):
            await workflow.execute_activity(cancel, trip, **UNDO)
        raise ApplicationError(f"trip not booked: {err}", non_retryable=True)
"""
TRIP_SWALLOWS = NB.solution_body("ex1-code").replace(
    """raise ApplicationError(f"trip {trip['id']} not booked: {err}", type="TripFailed", non_retryable=True)""",
    'return "sorry, not booked"',
)
TRIP_PLAIN_RAISE = NB.solution_body("ex1-code").replace(
    """raise ApplicationError(f"trip {trip['id']} not booked: {err}", type="TripFailed", non_retryable=True)""",
    'raise RuntimeError("trip not booked")',
)
TRIP_ALL_UP_FRONT = """
    compensations = [cancel_flight, cancel_hotel, cancel_car]  # all of them, before anything runs
    try:
        for book in [book_flight, book_hotel, book_car]:
            await workflow.execute_activity(book, trip, **STEP)
    except Exception:
        for cancel in reversed(compensations):
            await workflow.execute_activity(cancel, trip, **UNDO)
        raise
"""
for _wrong in (TRIP_FIFO, TRIP_SWALLOWS, TRIP_PLAIN_RAISE):
    assert _wrong != NB.solution_body("ex1-code")  # the solution changed: update the edit
TRIP_NO_RETRIES = NB.solution_body("ex1-code").replace(
    "await workflow.execute_activity(book, trip, **STEP)",
    "await workflow.execute_activity(book, trip, start_to_close_timeout=timedelta(seconds=1), "
    "retry_policy=RetryPolicy(maximum_attempts=1))  # (wrong) one attempt only",
)
TRIP_NO_UNDO = """
    for book in [book_flight, book_hotel, book_car]:
        await workflow.execute_activity(book, trip, **STEP)
"""


def trip_module(scratch: Path, variant: str):
    NB.module(scratch, "shop-module")
    travel = NB.module(scratch, "travel-module")
    if variant == "solution":
        saga = NB.module(scratch, "ex1-code")
    elif variant == "stub":
        saga = NB.module(scratch, "ex1-code", learner=True)
    else:
        bodies = {
            "helper-class": TRIP_ALT_HELPER,
            "explicit": (TRIP_ALT_EXPLICIT, ""),
            "fifo": (TRIP_FIFO, ""),
            "register-after": (TRIP_REGISTER_AFTER, ""),
            "swallows": (TRIP_SWALLOWS, ""),
            "all-up-front": (TRIP_ALL_UP_FRONT, ""),
            "no-undo": (TRIP_NO_UNDO, ""),
            "plain-raise": (TRIP_PLAIN_RAISE, ""),
            "no-retries": (TRIP_NO_RETRIES, ""),
        }
        body, prelude = bodies[variant]
        imports = (
            "from datetime import timedelta\nfrom temporalio.common import RetryPolicy"
            if variant == "no-retries"
            else ""
        )
        saga = kernel.write_module(
            scratch, "trip_saga", with_solution("ex1-code", body, prelude=prelude, imports=imports)
        )
    return saga.TripSaga, travel


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "a failure at each step leaves nothing booked, cancellations run newest first"),
        ("helper-class", "passed", "cancellations run newest first"),
        ("explicit", "passed", "cancellations run newest first"),
        ("stub", "not_done", "book flight, hotel and car with STEP; when one fails, undo what may have happened"),
        ("fifo", "failed", "the cancellations reached the world oldest first (cancel_flight then cancel_hotel"),
        (
            "register-after",
            "failed",
            "the hotel's cancellation was registered only after book_hotel returned. Register each",
        ),
        ("swallows", "failed", "book_car failed for good, yet the workflow completed"),
        ("all-up-front", "failed", "yet cancel_car and cancel_hotel ran, although book_car and book_hotel never"),
        ("no-undo", "failed", "nothing was undone: the flight and the hotel are still booked"),
        ("plain-raise", "failed", "your workflow raised RuntimeError: trip not booked (trip_saga.py line"),
        ("no-retries", "failed", "a transient failure is Temporal's to retry"),
    ],
)
def test_nb04_trip_saga(variant, status, hint, make_course, scratch, capsys):
    saga, travel = trip_module(scratch, variant)

    async def scenario():
        await make_course("04")
        started = time.monotonic()
        await nb04.check_trip_saga(saga, travel)
        assert time.monotonic() - started < 9

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("04.1", status), verdict
    assert hint in verdict.message, verdict.message


# --------------------------------------------------------------------------- 04.2 an idempotent compensation

REVOKE_INFO_KEY = """
    info = activity.info()  # the same workflow id and activity id on every attempt
    return await world.revoke_points(
        order["customer"], order["points"], order_id=order["id"], key=f"{info.workflow_id}/{info.activity_id}"
    )
"""
REVOKE_CHECK_FIRST = """
    if world.points_moves(order["id"]):  # already taken back by an earlier attempt
        return "already revoked"
    return await world.revoke_points(order["customer"], order["points"], order_id=order["id"])
"""
REVOKE_NO_KEY = """
    return await world.revoke_points(order["customer"], order["points"], order_id=order["id"])
"""
REVOKE_UUID_KEY = """
    return await world.revoke_points(
        order["customer"], order["points"], order_id=order["id"], key=str(uuid.uuid4())
    )
"""
REVOKE_CUSTOMER_KEY = """
    return await world.revoke_points(
        order["customer"], order["points"], order_id=order["id"], key=f"revoke-{order['customer']}"
    )
"""


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "a retried revocation (its first answer lost) took the points once"),
        ("info-key", "passed", "took the points once"),
        ("check-first", "passed", "took the points once"),
        ("stub", "not_done", "take back the order's points with world.revoke_points(...), only once however often"),
        ("no-key", "failed", "took the points 2 times: the call carried no idempotency key"),
        ("uuid-key", "failed", "with a different key each attempt: a key made afresh (uuid4()"),
        ("customer-key", "failed", "the second order's points were never taken back: its key was one the service"),
    ],
)
def test_nb04_idempotent_revoke(variant, status, hint, make_course, scratch, capsys):
    shop = NB.module(scratch, "shop-module")
    bodies = {
        "info-key": REVOKE_INFO_KEY,
        "check-first": REVOKE_CHECK_FIRST,
        "no-key": REVOKE_NO_KEY,
        "uuid-key": REVOKE_UUID_KEY,
        "customer-key": REVOKE_CUSTOMER_KEY,
    }
    if variant in bodies:
        source = with_solution("ex2-code", bodies[variant], imports="import uuid" if variant == "uuid-key" else "")
        loyalty = kernel.write_module(scratch, "loyalty", source)
    else:
        loyalty = NB.module(scratch, "ex2-code", learner=variant == "stub")

    async def scenario():
        await make_course("04")
        started = time.monotonic()
        await nb04.check_idempotent_revoke(loyalty.revoke_points, shop.world)
        assert time.monotonic() - started < 9

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("04.2", status), verdict
    assert hint in verdict.message, verdict.message


# --------------------------------------------------------------------------- 04.3 a saga that survives its own failures

SAFE_ALT_HELPER = (
    """
    saga = Saga(trip)
    try:
        await saga.step(book_flight, cancel_flight)
        await saga.step(book_hotel, cancel_hotel)
        await saga.step(book_car, cancel_car)
    except BaseException:
        failures = await saga.compensate()
        if failures:
            raise ApplicationError("a human must undo: " + "; ".join(failures), type="NeedsHuman") from None
        raise
    """,
    """
    class Saga:
        def __init__(self, trip):
            self.trip = trip
            self.undo = []

        async def step(self, do, undo):
            self.undo.append(undo)
            await workflow.execute_activity(do, self.trip, **STEP)

        async def compensate(self):
            failures = []
            while self.undo:
                undo = self.undo.pop()
                try:
                    await workflow.execute_activity(undo, self.trip, **UNDO)
                except ActivityError as err:
                    failures.append(f"{undo.__name__}: {err.cause}")
            return failures
    """,
)

SAFE_ALT_FINALLY = """
    pending = []
    booked = False
    try:
        for book, cancel in [(book_flight, cancel_flight), (book_hotel, cancel_hotel), (book_car, cancel_car)]:
            pending.insert(0, cancel)
            await workflow.execute_activity(book, trip, **STEP)
        booked = True
    finally:
        if not booked:
            failed = []
            for cancel in pending:
                try:
                    await workflow.execute_activity(cancel, trip, **UNDO)
                except ActivityError:
                    failed.append(cancel.__name__)
            if failed:
                raise ApplicationError("compensation failed", {"failed": failed}, type="NeedsHuman")
"""

SAFE_STOPS = NB.solution_body("ex1-code").replace("except Exception as err:", "except BaseException as err:")
SAFE_BODY = NB.solution_body("ex3-code")
SAFE_NO_ESCALATION = SAFE_BODY.replace(
    "    if failed:\n        raise ApplicationError(", "    if False:\n        raise ApplicationError("
)
SAFE_UNNAMED = SAFE_BODY.replace("f\"trip {trip['id']}: could not undo {', '.join(failed)}\"", '"something went wrong"')
SAFE_IGNORES_CANCEL = SAFE_BODY.replace(
    "except BaseException as err:  # also asyncio.CancelledError: a cancelled trip is undone too\n",
    "except BaseException as err:\n    if is_cancelled_exception(err):\n        raise  # (wrong) nothing undone\n",
)
SAFE_COMPLETES_ON_CANCEL = SAFE_BODY.replace(
    "    if is_cancelled_exception(err):\n        raise\n",
    '    if is_cancelled_exception(err):\n        return "cancelled"\n',
)
SAFE_GIVES_UP = SAFE_BODY.replace(
    "await workflow.execute_activity(cancel, trip, **UNDO)", "await workflow.execute_activity(cancel, trip, **STEP)"
)
for _wrong in (SAFE_NO_ESCALATION, SAFE_UNNAMED, SAFE_IGNORES_CANCEL, SAFE_COMPLETES_ON_CANCEL, SAFE_GIVES_UP):
    assert _wrong != SAFE_BODY  # the solution changed: update the edit


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "a compensation that fails for good is reported to a human (NeedsHuman)"),
        ("helper-class", "passed", "a cancelled trip is undone"),
        ("finally", "passed", "a cancelled trip is undone"),
        ("stub", "not_done", "a compensation that fails for good is recorded, the rest still run, then NeedsHuman"),
        ("stops", "failed", "and then cancel_flight never ran: one failed compensation stopped the others"),
        ("no-escalation", "failed", 'raise ApplicationError(..., type="NeedsHuman") naming each compensation'),
        ("unnamed", "failed", "the workflow failed with NeedsHuman, but does not say which compensation failed"),
        ("ignores-cancel", "failed", "the trip was cancelled while the car was being booked, and afterwards"),
        ("completes-on-cancel", "failed", "the trip was cancelled while the car was being booked, yet the workflow"),
        ("gives-up", "failed", "Compensations must retry until they succeed: run them with UNDO"),
    ],
)
def test_nb04_safe_trip_saga(variant, status, hint, make_course, scratch, capsys):
    NB.module(scratch, "shop-module")
    travel = NB.module(scratch, "travel-module")
    bodies = {
        "helper-class": SAFE_ALT_HELPER,
        "finally": (SAFE_ALT_FINALLY, ""),
        "stops": (SAFE_STOPS, ""),
        "no-escalation": (SAFE_NO_ESCALATION, ""),
        "unnamed": (SAFE_UNNAMED, ""),
        "ignores-cancel": (SAFE_IGNORES_CANCEL, ""),
        "completes-on-cancel": (SAFE_COMPLETES_ON_CANCEL, ""),
        "gives-up": (SAFE_GIVES_UP, ""),
    }
    if variant in bodies:
        body, prelude = bodies[variant]
        saga = kernel.write_module(scratch, "trip_saga_safe", with_solution("ex3-code", body, prelude=prelude))
    else:
        saga = NB.module(scratch, "ex3-code", learner=variant == "stub")

    async def scenario():
        await make_course("04")
        started = time.monotonic()
        await nb04.check_safe_trip_saga(saga.SafeTripSaga, travel)
        assert time.monotonic() - started < 9

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("04.3", status), verdict
    assert hint in verdict.message, verdict.message
