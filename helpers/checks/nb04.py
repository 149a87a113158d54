"""Checks for notebook 04 (sagas): a trip saga, an idempotent compensation, a saga that survives its own failures.

Every check runs the learner's code for real, on trips (or orders) of its own, with failures injected into the
world (the SQLite database of :mod:`helpers.shop_world`), and judges the world the code leaves behind: what is
still booked, how many points were taken, and the order in which the services received the calls, so "last in,
first out" is read from the world, not from the shape of the code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from helpers import errors, runtime, saga_lab
from helpers.activity_probe import ActivityProbe
from helpers.checks import NotDone, Wrong, exercise, worker_for
from helpers.shop_world import COMPENSATION_OF, PERMANENT, TIMEOUT, TRANSIENT, TRIP_KINDS, ShopWorld

RUN_TIMEOUT_S = 15.0  # a run takes 1-3 s; the margin is for a busy machine
# An activity failing this often ends a check's wait with its error (the checks' own faults fail at most twice).
ACTIVITY_RETRIES = 4
STEP_OF = {undo: step for step, undo in COMPENSATION_OF.items()}
BOOKINGS = [f"book_{kind}" for kind in TRIP_KINDS]


def _and(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


# --------------------------------------------------------------------------- running trips


@dataclass(frozen=True)
class TripScenario:
    """One trip: the faults injected into the world, and (optionally) a cancel once a booking took effect."""

    name: str
    faults: tuple[tuple[str, str, int | None], ...] = ()
    cancel_when_done: str | None = None


def _travel_parts(travel: ModuleType) -> tuple[ShopWorld, list[Callable[..., Any]]]:
    world = getattr(travel, "world", None)
    names = [f"{verb}_{kind}" for kind in TRIP_KINDS for verb in ("book", "cancel")]
    missing = [n for n in names if getattr(travel, n, None) is None]
    if not isinstance(world, ShopWorld) or missing:
        raise Wrong("the travel module is not as the notebook gives it: run its cell again, unchanged.")
    return world, [getattr(travel, n) for n in names]


async def run_trips(saga: type, travel: ModuleType, scenarios: Sequence[TripScenario]) -> dict[str, saga_lab.SagaRun]:
    """Run ``saga`` once per scenario, all at once, on a worker of the check's own; every run ends before this
    returns (a broken one is reported once all have ended)."""
    course = runtime.current()
    world, activities = _travel_parts(travel)

    async def one(scenario: TripScenario, queue: str) -> saga_lab.SagaRun:
        trip = {"id": course.new_id("check-trip"), "traveller": "Ada Lovelace"}
        for action, kind, times in scenario.faults:
            world.inject(trip["id"], action, kind, times=times)
        handle = await course.start_workflow(saga.run, trip, id=trip["id"], task_queue=queue, show=False)  # type: ignore[attr-defined]
        done = asyncio.ensure_future(
            saga_lab.finish(
                course,
                handle,
                world=world,
                timeout=RUN_TIMEOUT_S,
                state=world.trip_state,
                activity_retries=ACTIVITY_RETRIES,
            )
        )
        if scenario.cancel_when_done is not None:
            action = scenario.cancel_when_done
            while not done.done() and world.effects(trip["id"]).count(action) == 0:
                await asyncio.sleep(0.02)
            if not done.done():
                await handle.cancel()
        return await done

    async with worker_for([saga], activities, purpose="trips") as queue:
        outcomes = await asyncio.gather(*(one(s, queue) for s in scenarios), return_exceptions=True)
    if failures := [o for o in outcomes if isinstance(o, BaseException)]:
        raise _plain_exception(failures[0])
    return {s.name: o for s, o in zip(scenarios, outcomes, strict=True)}  # type: ignore[misc]


# Exceptions that are slips in the code, not a deliberate way of failing the trip.
SLIPS = ("NotImplementedError", "NameError", "AttributeError", "TypeError", "SyntaxError", "KeyError", "ImportError")


def _plain_exception(err: BaseException) -> BaseException:
    """A saga that fails the trip by raising a plain Python exception gets told how a workflow fails."""
    if isinstance(err, errors.WorkflowTaskFailed) and not err.failure.startswith(SLIPS):
        return Wrong(
            f"your workflow raised {err.failure}. A plain Python exception does not fail a workflow: it fails the "
            "workflow *task*, which Temporal retries forever. To end the trip as failed, raise "
            "ApplicationError(..., non_retryable=True), or re-raise the ActivityError you caught."
        )
    return err


def undo_order(run: saga_lab.SagaRun) -> list[str]:
    """The steps whose compensation the world received, in the order it received them (first call of each)."""
    return [STEP_OF[a] for a in dict.fromkeys(run.effects.actions(compensations=True)) if a in STEP_OF]


def _booked(run: saga_lab.SagaRun) -> list[str]:
    state = run.state
    return state.booked if hasattr(state, "booked") else []  # type: ignore[union-attr]


def _still_booked(run: saga_lab.SagaRun) -> str:
    return _and([f"the {kind}" for kind in _booked(run)]) + (" is" if len(_booked(run)) == 1 else " are")


def _ended(run: saga_lab.SagaRun) -> str:
    return run.outcome.ending


# --------------------------------------------------------------------------- 04.1 the trip saga

TRIP_SCENARIOS = (
    TripScenario("no failure"),
    TripScenario("car rejected", (("book_car", PERMANENT, None),)),
    TripScenario("flight rejected", (("book_flight", PERMANENT, None),)),
    TripScenario("hotel booked, then timed out", (("book_hotel", TIMEOUT, None),)),
    TripScenario("hotel briefly unavailable", (("book_hotel", TRANSIENT, 1),)),
)


def _judge_order_of_undo(run: saga_lab.SagaRun) -> None:
    """Compensations must reach the world newest first."""
    undone = undo_order(run)
    forward = [a for a in dict.fromkeys(run.effects.actions(compensations=False)) if a in BOOKINGS]
    lifo = [s for s in reversed(forward) if s in undone]
    if undone == lifo:
        return
    cancels = [COMPENSATION_OF[s] for s in undone]
    if len(undone) > 1 and undone == [s for s in forward if s in undone]:
        raise Wrong(
            f"when book_car failed, the cancellations reached the world oldest first ({' then '.join(cancels)}): "
            "first in, first out. Undo newest first (LIFO), e.g. `for undo in reversed(compensations)`: a later "
            "step may rely on an earlier one, so it is undone before it."
        )
    raise Wrong(
        f"when book_car failed, the cancellations reached the world in the order {' then '.join(cancels)}; "
        "undo newest first (LIFO), one after the other: cancel_car, cancel_hotel, cancel_flight."
    )


@exercise("04.1")
async def check_trip_saga(saga: Any, travel: ModuleType) -> str:
    if getattr(saga, "run", None) is None:
        raise Wrong("pass the workflow class, e.g. check_trip_saga(trip_saga.TripSaga, travel).")
    runs = await run_trips(saga, travel, TRIP_SCENARIOS)
    ok, car, flight, hotel, transient = (runs[s.name] for s in TRIP_SCENARIOS)

    if ok.outcome.status != "COMPLETED" or not ok.consistent:
        raise Wrong(f"with no failure at all, the trip {_ended(ok)} ({ok.state}); it should book all three.")
    if ok.effects.actions(compensations=True):
        raise Wrong(f"nothing failed, yet {ok.effects.actions(compensations=True)[0]} ran: compensate only on failure.")

    if car.effects.actions(compensations=True) == [] and _booked(car):
        raise Wrong(
            f"book_car failed for good, but nothing was undone: {_still_booked(car)} still booked. When a step "
            "fails, run the compensations of the steps before it (cancel_hotel, cancel_flight)."
        )
    if car.outcome.status == "COMPLETED":
        raise Wrong(
            "book_car failed for good, yet the workflow completed, as if the trip were booked. After undoing, "
            "fail the workflow: raise (e.g. ApplicationError(..., non_retryable=True), or the error you caught)."
        )
    _judge_order_of_undo(car)
    if not car.consistent:
        raise Wrong(f"book_car failed for good, and afterwards {_still_booked(car)} still booked: undo every step.")

    if not hotel.consistent and _booked(hotel) == ["hotel"]:
        raise Wrong(
            "book_hotel booked the room and then timed out (its answer was lost, as in notebook 03): your saga "
            "cancelled the flight but never the hotel, so the hotel's cancellation was registered only after "
            "book_hotel returned. Register each compensation BEFORE its step runs: a step can take effect and "
            "still fail."
        )
    if not hotel.consistent:
        raise Wrong(
            f"book_hotel took effect and then timed out; afterwards {_still_booked(hotel)} still booked. A step "
            "that may have happened must be undone: register each compensation before its step runs."
        )

    calls = flight.effects.actions(compensations=True)
    never = [a for a in dict.fromkeys(calls) if STEP_OF.get(a) not in ("book_flight", None)]
    if never:
        raise Wrong(
            f"book_flight failed first, yet {_and(never)} ran, although {_and([STEP_OF[a] for a in never])} never "
            "started. Register each compensation just before its own step, so that only steps that may have "
            "happened are undone."
        )
    if not flight.consistent or flight.outcome.status == "COMPLETED":
        raise Wrong(f"book_flight failed for good; the trip {_ended(flight)} with {flight.state}.")

    if transient.outcome.status != "COMPLETED":
        raise Wrong(
            "book_hotel failed once because the service was briefly unavailable, and the trip was given up: a "
            "transient failure is Temporal's to retry. Run the bookings with STEP's retry policy."
        )
    return (
        "a failure at each step leaves nothing booked, cancellations run newest first, a booking that timed out "
        "after taking effect is cancelled, and steps that never ran are not compensated."
    )


# --------------------------------------------------------------------------- 04.2 an idempotent compensation

POINTS = {"first": 120, "second": 45}
START_BALANCE = 1000
PROBE_START_TO_CLOSE_S = 1.0  # the lost answer (a TIMEOUT fault) holds for HANG_S = 3 s: the attempt times out


@exercise("04.2")
async def check_idempotent_revoke(revoke_points: Any, world: ShopWorld) -> str:
    if not isinstance(world, ShopWorld):
        raise Wrong("pass the shop's world: check_idempotent_revoke(loyalty.revoke_points, shop.world).")
    from temporalio import activity

    defn = activity._Definition.from_callable(revoke_points)
    if defn is None:
        raise Wrong("revoke_points is not an activity: keep @activity.defn above it.")
    course = runtime.current()
    customer = course.new_id("check-customer")
    world.set_points(customer, START_BALANCE)
    orders = {
        label: {"id": course.new_id(f"check-{label}-order"), "customer": customer, "points": points}
        for label, points in POINTS.items()
    }
    # The first revocation takes effect, then its answer is lost: Temporal retries it, as after a crash.
    world.inject(orders["first"]["id"], "revoke_points", TIMEOUT, times=1)
    async with worker_for([ActivityProbe], [revoke_points], purpose="points") as queue:

        async def one(order: dict[str, Any]) -> Any:
            handle = await course.start_workflow(
                ActivityProbe.run,
                defn.name,
                [order],
                PROBE_START_TO_CLOSE_S,
                id=order["id"],
                task_queue=queue,
                show=False,
            )
            return await course.result(handle, RUN_TIMEOUT_S, activity_retries=ACTIVITY_RETRIES)

        for order in orders.values():  # one after the other: the second must not be mistaken for the first
            await one(order)

    first, second = (world.points_moves(o["id"]) for o in orders.values())
    if not first and not second:
        raise NotDone("revoke_points took no points: call world.revoke_points(...) for the order.")
    if len(first) > 1:
        keys = [key for _, key in first]
        if all(key is None for key in keys):
            raise Wrong(
                f"its first answer was lost, Temporal retried it, and revoke_points took the points {len(first)} "
                "times: the call carried no idempotency key. Pass key=... that is the same on every attempt."
            )
        raise Wrong(
            f"its first answer was lost, Temporal retried it, and revoke_points took the points {len(first)} times, "
            "with a different key each attempt: a key made afresh (uuid4(), the time, the attempt number) is new to "
            "the service every time. Derive it from what stays the same, such as the order id."
        )
    for label, moves in (("first", first), ("second", second)):
        expected = POINTS[label]
        if not moves:
            raise Wrong(
                f"the {label} order's points were never taken back: its key was one the service had already seen, "
                "from the other order of the same customer. A key must name this one revocation (e.g. by the order "
                "id), not something two orders share."
            )
        if moves[0][0] != -expected:
            raise Wrong(f"revoke_points changed the balance by {moves[0][0]} for an order that earned {expected}.")
    balance = world.points(customer)
    if balance != START_BALANCE - sum(POINTS.values()):
        raise Wrong(f"the customer ends with {balance} points, not {START_BALANCE - sum(POINTS.values())}.")
    return "a retried revocation (its first answer lost) took the points once, and two orders took back theirs each."


# --------------------------------------------------------------------------- 04.3 a saga that survives its own failures

SAFE_SCENARIOS = (
    TripScenario("cancel_hotel rejected", (("book_car", PERMANENT, None), ("cancel_hotel", PERMANENT, None))),
    # The car is booked and its answer lost (on every attempt): the cancel finds the saga awaiting book_car.
    TripScenario("cancelled while booking the car", (("book_car", TIMEOUT, None),), cancel_when_done="book_car"),
    TripScenario("cancel_hotel briefly unavailable", (("book_car", PERMANENT, None), ("cancel_hotel", TRANSIENT, 2))),
)


def _names(run: saga_lab.SagaRun, name: str) -> bool:
    return name in run.outcome.message or any(name in str(d) for d in run.outcome.details)


@exercise("04.3")
async def check_safe_trip_saga(saga: Any, travel: ModuleType) -> str:
    if getattr(saga, "run", None) is None:
        raise Wrong("pass the workflow class, e.g. check_safe_trip_saga(trip_saga_safe.SafeTripSaga, travel).")
    runs = await run_trips(saga, travel, SAFE_SCENARIOS)
    rejected, cancelled, flaky = (runs[s.name] for s in SAFE_SCENARIOS)

    if flaky.outcome.status == "COMPLETED" and not flaky.effects.actions(compensations=True):
        raise Wrong("book_car failed for good, yet nothing was undone and the workflow completed.")
    if not flaky.consistent or flaky.outcome.needs_human:
        raise Wrong(
            "cancel_hotel failed twice because the hotel's service was briefly unavailable, and it was given up "
            f"({flaky.state}; the workflow {_ended(flaky)}). Compensations must retry until they succeed: run them "
            "with UNDO (a retry policy without maximum_attempts)."
        )
    if flaky.outcome.status == "COMPLETED":
        raise Wrong("book_car failed for good and was undone, yet the workflow completed: fail it after undoing.")

    if rejected.state.bookings.get("flight") == "booked":  # type: ignore[union-attr]
        raise Wrong(
            "cancel_hotel failed for good (the hotel refused), and then cancel_flight never ran: one failed "
            "compensation stopped the others. Catch each compensation's failure, record it, and go on with the rest."
        )
    if rejected.outcome.status == "COMPLETED":
        raise Wrong("cancel_hotel failed for good, yet the workflow completed: nobody will know the hotel is booked.")
    if not rejected.outcome.needs_human:
        got = rejected.outcome.error_type or "an error without a type"
        raise Wrong(
            f"cancel_hotel failed for good, so the hotel is still booked, but the workflow failed with {got}. "
            'Tell a human what to fix: raise ApplicationError(..., type="NeedsHuman") naming each compensation '
            "that failed (here cancel_hotel)."
        )
    if not _names(rejected, "cancel_hotel"):
        raise Wrong(
            "the workflow failed with NeedsHuman, but does not say which compensation failed: name each one in "
            "the error's message (here cancel_hotel), so a human knows what to fix."
        )

    if cancelled.outcome.status == "COMPLETED":
        raise Wrong(
            "the trip was cancelled while the car was being booked, yet the workflow completed: after undoing, "
            "let the cancellation end it (re-raise it), so the caller sees the trip was cancelled."
        )
    if not cancelled.consistent:
        raise Wrong(
            f"the trip was cancelled while the car was being booked, and afterwards {_still_booked(cancelled)} "
            "still booked. Compensate on cancellation too: it arrives as ActivityError caused by CancelledError "
            "while an activity runs, and as asyncio.CancelledError (a BaseException) anywhere else."
        )
    return (
        "a compensation that fails for good is reported to a human (NeedsHuman) while the others still run, a "
        "briefly failing one is retried, and a cancelled trip is undone."
    )


__all__ = ["check_idempotent_revoke", "check_safe_trip_saga", "check_trip_saga", "run_trips", "undo_order"]
