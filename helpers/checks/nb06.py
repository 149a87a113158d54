"""Checks for notebook 06 (entities and humans): a ticket counter entity, carts created by update-with-start, a
leave request that escalates, tested over simulated days.

Each check talks to the learner's workflows as a client would (signals, queries, updates, starts that race) and
judges what it can observe: the answers, the refusals, the histories (a refused update must leave no event), what
the outside world received (tickets issued, messages sent, on which day), and how each run ended. 06.1 runs on a
worker that keeps no workflow in its cache, so every step is a replay: state changed where it must not be (in a
validator) shows up as a wrong answer. 06.3 runs in a time-skipping test server of its own, with real days.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from helpers import errors, runtime, time_skipping
from helpers.checks import NotDone, Wrong, exercise, worker_for
from helpers.history import payload_values
from helpers.kernel import BrokenModule
from helpers.waits import FATAL_TASK_CAUSES, pending_activities

T = TypeVar("T")
CALL_TIMEOUT_S = 6.0  # one signal, query or update of a check: they take well under a second


def _and(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


async def _task_failure(handle: WorkflowHandle[Any, Any]) -> errors.WorkflowTaskFailed | None:
    """The run's first fatal workflow task failure (the workflow's code raised), if any."""
    with contextlib.suppress(Exception):
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs = event.workflow_task_failed_event_attributes
                if attrs.cause in FATAL_TASK_CAUSES:
                    failure = errors.failure_text(attrs.failure)
                    return errors.WorkflowTaskFailed(failure, failure=failure, workflow_id=handle.id)
    return None


async def _no_answer(handle: WorkflowHandle[Any, Any], what: str, timeout: float) -> Exception:
    """Why ``what`` got no answer in time: the workflow's code failing, an activity failing, or nothing."""
    if (failed := await _task_failure(handle)) is not None:
        return failed
    with contextlib.suppress(Exception):
        for act in pending_activities(await asyncio.wait_for(handle.describe(), 3)):
            if act.last_failure:
                return errors.ActivityKeepsFailing(
                    act.last_failure, activity=act.name, failure=act.last_failure, workflow_id=handle.id
                )
    return Wrong(f"{what} got no answer within {timeout:g} s: does your workflow wait for something that never comes?")


async def _answer(handle: WorkflowHandle[Any, Any], call: Awaitable[T], what: str) -> T:
    """``await call`` (a signal, query, update or result), bounded; a run that cannot answer says why."""
    try:
        return await asyncio.wait_for(call, CALL_TIMEOUT_S)
    except (asyncio.TimeoutError, TimeoutError):
        raise await _no_answer(handle, what, CALL_TIMEOUT_S) from None


async def _refusal(handle: WorkflowHandle[Any, Any], call: Awaitable[Any], what: str) -> tuple[bool, Any]:
    """(True, error) if the update was refused or failed, (False, result) if it answered."""
    try:
        return False, await _answer(handle, call, what)
    except WorkflowUpdateFailedError as err:
        return True, err


async def _accepted_updates(handle: WorkflowHandle[Any, Any], name: str) -> list[Any]:
    """The first argument of every ``name`` update the history accepted, in order."""
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            if request.input.name == name:
                args = payload_values(request.input.args)
                out.append(args[0] if args else None)
    return out


async def _end(handles: Sequence[WorkflowHandle[Any, Any]]) -> None:
    """Terminate what a check started and left running (bounded; ended runs are left alone)."""

    async def one(handle: WorkflowHandle[Any, Any]) -> None:
        with contextlib.suppress(Exception):
            await handle.terminate(reason="course: the check ended")

    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(one(h) for h in handles)), 5)


def _workflow_class(module: Any, name: str, todo: str) -> tuple[type, Any]:
    if isinstance(module, BrokenModule):
        raise Wrong(f"the exercise cell did not import ({module._problem}): fix it and run it again.")
    if not isinstance(module, ModuleType):
        raise Wrong(f"pass the module of the exercise cell (the name after %%module), not {type(module).__name__}.")
    cls = getattr(module, name, None)
    if cls is None:
        raise NotDone(todo)
    defn = workflow._Definition.from_class(cls) if isinstance(cls, type) else None
    if defn is None:
        raise Wrong(f"{name} is not a workflow: put @workflow.defn above the class.")
    return cls, defn


# --------------------------------------------------------------------------- 06.1 a ticket counter

TICKETS_TODO = (
    "write the TicketCounter workflow in the cell above: run(concert, seats), the signals add_seats(n) and "
    "close_sales(), the query seats_left() and the update reserve(n) with its validator."
)
ISSUE_S = 0.3  # how long issuing tickets takes in the check: long enough for a request to arrive meanwhile
REPLAY = (
    "(One of this check's workers replays your workflow from its history at every step, as a worker restarted "
    "after a crash would; a validator runs once, when the request arrives, and never again on replay.)"
)


@dataclass
class TicketLog:
    """What the check's ticketing system was asked to issue, per concert."""

    issued: dict[str, list[int]] = field(default_factory=dict)

    def activity(self) -> Callable[..., Any]:
        @activity.defn(name="issue_tickets")
        async def issue_tickets(concert: str, n: int) -> str:
            self.issued.setdefault(concert, []).append(n)
            await asyncio.sleep(ISSUE_S)
            return f"{n} tickets issued"

        return issue_tickets


def _interface(defn: Any) -> None:
    missing = []
    for kind, names in (("signal", ("add_seats", "close_sales")), ("query", ("seats_left",)), ("update", ("reserve",))):
        have = {"signal": defn.signals, "query": defn.queries, "update": defn.updates}[kind]
        missing += [f"@workflow.{kind} {n}" for n in names if n not in have]
    if missing:
        raise Wrong(f"TicketCounter has no {_and(missing)}: name them as the task says (the check calls them by name).")
    if defn.updates["reserve"].validator is None:
        raise Wrong(
            "reserve has no validator: add one with @reserve.validator that raises for n < 1 and for more seats than "
            "are left, so a refused request is never recorded."
        )


async def _start_counter(cls: type, queue: str, concert: str, seats: int) -> WorkflowHandle[Any, Any]:
    course = runtime.current()
    return await course.start_workflow(cls.run, concert, seats, id=concert, task_queue=queue, show=False)  # type: ignore[attr-defined]


async def _first_reservation(handle: WorkflowHandle[Any, Any], log: TicketLog, *, replaying: bool) -> None:
    """A new counter of 10 seats: seats_left(), reserve(4), seats_left(), and the tickets issued."""
    left = await _answer(handle, handle.query("seats_left"), "seats_left()")
    if left != 10:
        raise Wrong(f"a new counter started with 10 seats says seats_left() = {left!r}; it should say 10.")
    refused, answer = await _refusal(handle, handle.execute_update("reserve", 4), "reserve(4)")
    if refused and replaying:
        raise Wrong(
            f"reserve(4) was refused ({_cause(answer)}) although seats_left() had just said 10: the validator saw "
            "the counter before `run` had set it up. Handlers and validators can run before `run` starts, e.g. when "
            f"a worker replays the workflow after a restart. {REPLAY} Set the state up in __init__, decorated with "
            "@workflow.init to receive run's arguments."
        )
    if refused:
        raise Wrong(f"reserve(4) with 10 seats left was refused ({_cause(answer)}); it should succeed.")
    left = await _answer(handle, handle.query("seats_left"), "seats_left()")
    if answer == 2 or left == 2:
        raise Wrong(
            "reserve(4) on 10 seats left only 2: the seats were taken twice, in the validator and in the handler? "
            "A validator only looks: it raises to refuse, and changes nothing."
        )
    if left == 10 and replaying:
        raise Wrong(
            "after reserve(4) answered, seats_left() said 10 again: the seats were taken in the validator, and that "
            f"change was lost when the workflow was replayed. {REPLAY} Change the state in the update's handler."
        )
    if answer != 6 or left != 6:
        raise Wrong(
            f"reserve(4) on 10 seats answered {answer!r} and seats_left() then said {left!r}; both should be 6."
        )
    if log.issued.get(handle.id) != [4]:
        raise Wrong(
            f"reserve(4) answered, but the ticketing system was asked for {log.issued.get(handle.id, [])}: issue the "
            "tickets in the update's handler, with workflow.execute_activity(issue_tickets, args=[concert, n], ...)."
        )


async def _replayed(cls: type, queue: str, concert: str, log: TicketLog) -> list[WorkflowHandle[Any, Any]]:
    handle = await _start_counter(cls, queue, concert, 10)
    await _first_reservation(handle, log, replaying=True)
    return [handle]


async def _basics(cls: type, queue: str, concert: str, log: TicketLog) -> list[WorkflowHandle[Any, Any]]:
    handle = await _start_counter(cls, queue, concert, 10)
    await _first_reservation(handle, log, replaying=False)
    await _answer(handle, handle.signal("add_seats", 5), "add_seats(5)")
    left = await _answer(handle, handle.query("seats_left"), "seats_left()")
    if left != 11:
        raise Wrong(f"with 6 seats left, add_seats(5) left seats_left() at {left!r}; it should be 11.")
    for n in (12, 0, -2):
        refused, answer = await _refusal(handle, handle.execute_update("reserve", n), f"reserve({n})")
        if not refused:
            reason = "more than the 11 seats left" if n > 0 else "not even one seat"
            raise Wrong(f"reserve({n}) ({reason}) was accepted and answered {answer!r}: the validator must refuse it.")
    late = [n for n in await _accepted_updates(handle, "reserve") if n in (12, 0, -2)]
    if late:
        raise Wrong(
            f"reserve({late[0]}) was refused, but only after it had been accepted: it is in the history "
            "(WorkflowExecutionUpdateAccepted, then a failure). Refuse it in a validator (@reserve.validator): a "
            "refused request then leaves no trace in the history."
        )
    left = await _answer(handle, handle.query("seats_left"), "seats_left()")
    if left != 11:
        raise Wrong(
            f"three refused reservations changed seats_left() from 11 to {left!r}: a validator (or a handler that "
            "refuses) must not change the state before it raises."
        )
    refused, answer = await _refusal(handle, handle.execute_update("reserve", 11), "reserve(11)")
    if refused:
        raise Wrong(
            f"reserve(11) with exactly 11 seats left was refused ({_cause(answer)}): selling the last seats is "
            "allowed; refuse only more than are left."
        )
    if answer != 0:
        raise Wrong(f"reserve(11) with 11 seats left answered {answer!r}; it should answer 0 (the seats left).")
    await _answer(handle, handle.signal("close_sales"), "close_sales()")
    sold = await _answer(handle, handle.result(), "the run's result after close_sales()")
    if sold != 15:
        raise Wrong(f"after selling 4 and 11 seats, close_sales() ended the run with {sold!r}; return the seats sold.")
    return [handle]


async def _race(cls: type, queue: str, concert: str, log: TicketLog) -> list[WorkflowHandle[Any, Any]]:
    handle = await _start_counter(cls, queue, concert, 3)
    await _answer(handle, handle.query("seats_left"), "seats_left()")  # the counter is running
    outcomes = await asyncio.gather(
        _refusal(handle, handle.execute_update("reserve", 2), "reserve(2)"),
        _refusal(handle, handle.execute_update("reserve", 2), "reserve(2)"),
    )
    accepted = [o for refused, o in outcomes if not refused]
    if len(accepted) == 2:
        issued = sum(log.issued.get(concert, []))
        raise Wrong(
            f"two reserve(2) for the last 3 seats arrived at the same moment, and both were accepted: {issued} "
            "tickets issued for 3 seats. The second validator ran while the first reservation was issuing its "
            "tickets, and the seats were not taken yet: change the state before the handler's first await."
        )
    if not accepted:
        raise Wrong("two reserve(2) for the last 3 seats arrived at the same moment, and both were refused; one fits.")
    return [handle]


async def _close_while_issuing(cls: type, queue: str, concert: str) -> list[WorkflowHandle[Any, Any]]:
    handle = await _start_counter(cls, queue, concert, 5)
    await _answer(handle, handle.query("seats_left"), "seats_left()")  # the counter is running
    update = await _answer(
        handle,
        handle.start_update("reserve", 2, wait_for_stage=WorkflowUpdateStage.ACCEPTED),
        "reserve(2)",
    )
    await _answer(handle, handle.signal("close_sales"), "close_sales()")
    refused, answer = await _refusal(handle, update.result(), "reserve(2)")
    sold = await _answer(handle, handle.result(), "the run's result after close_sales()")
    if refused and "completed before the Update completed" in _cause(answer):
        raise Wrong(
            "close_sales() arrived while reserve(2) was issuing its tickets, and the workflow finished first: the "
            "reservation failed although its tickets were being issued. Before the run returns, wait for the "
            "handlers: await workflow.wait_condition(workflow.all_handlers_finished)."
        )
    if refused:
        raise Wrong(f"reserve(2) on 5 seats was refused ({_cause(answer)}); it should succeed.")
    if answer != 3 or sold != 2:
        raise Wrong(f"reserve(2) on 5 seats, then close_sales(): reserve answered {answer!r} and the run {sold!r}.")
    return [handle]


def _cause(err: Any) -> str:
    cause = getattr(err, "cause", None) or err
    return errors.short_failure(cause).splitlines()[-1].replace("caused by ", "").strip()


@exercise("06.1")
async def check_ticket_counter(module: Any) -> str:
    cls, defn = _workflow_class(module, "TicketCounter", TICKETS_TODO)
    _interface(defn)
    course = runtime.current()
    log = TicketLog()
    started: list[WorkflowHandle[Any, Any]] = []
    concerts = [course.new_id("check-concert") for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run that finishes with a reservation in flight: the verdict says it
        async with (
            worker_for([cls], [log.activity()], purpose="tickets") as queue,
            _replaying_worker([cls], [log.activity()]) as replay_queue,
        ):
            outcomes = await asyncio.gather(  # the first failure in this order is the verdict
                _replayed(cls, replay_queue, concerts[3], log),
                _basics(cls, queue, concerts[0], log),
                _race(cls, queue, concerts[1], log),
                _close_while_issuing(cls, queue, concerts[2]),
                return_exceptions=True,
            )
            for handles in outcomes:
                if isinstance(handles, list):
                    started += handles
            await _end([course.client.get_workflow_handle(c) for c in concerts])
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return (
        "reservations answer with the seats left, refusals leave no trace in the history, seats are taken before "
        "the first await (no overbooking), and closing waits for the reservations in progress."
    )


@contextlib.asynccontextmanager
async def _replaying_worker(workflows: Sequence[type], activities: Sequence[Callable[..., Any]]) -> Any:
    """A worker on a queue of its own that keeps no workflow in memory: every workflow task is a full replay."""
    course = runtime.current()
    queue = course.new_task_queue(f"check-{next(course._ids)}")
    await course.start_worker(workflows=workflows, activities=activities, task_queue=queue, max_cached_workflows=0)
    try:
        yield queue
    finally:
        await course.stop_worker(queue)


# --------------------------------------------------------------------------- 06.2 carts, created by update-with-start

CART_TODO = "add the item to the customer's cart with update-with-start and return the update's result."


async def _add(add_to_cart: Callable[..., Any], customer: str, item: str, queue: str) -> Any:
    course = runtime.current()
    result = add_to_cart(course.client, customer, item, queue)
    if not asyncio.iscoroutine(result):
        raise Wrong("add_to_cart must be an `async def` (it awaits the client).")
    return await asyncio.wait_for(result, CALL_TIMEOUT_S)


def _cart_error(err: BaseException, customer_state: str, item: str) -> Wrong:
    text = _cause(err)
    if isinstance(err, WorkflowAlreadyStartedError):
        return Wrong(
            f"adding {item!r} to {customer_state} failed with WorkflowAlreadyStartedError: the cart was running "
            "already and the start refused it. Use id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, so the "
            "update goes to the running cart."
        )
    if "not found" in text.lower():
        return Wrong(
            f"adding {item!r} to {customer_state} failed ({text}): there was no cart yet. Create it in the same call: "
            "client.execute_update_with_start_workflow(..., start_workflow_operation=WithStartWorkflowOperation(...))."
        )
    return Wrong(f"adding {item!r} to {customer_state} raised {text}")


async def _contents(customer_cart: str) -> list[str] | None:
    course = runtime.current()
    try:
        return await asyncio.wait_for(
            course.client.get_workflow_handle(customer_cart).query("contents"), CALL_TIMEOUT_S
        )
    except Exception:
        return None


@exercise("06.2")
async def check_add_to_cart(add_to_cart: Any, carts: ModuleType) -> str:
    if not callable(add_to_cart):
        raise Wrong("pass the function: check_add_to_cart(add_to_cart, carts).")
    cart_id = getattr(carts, "cart_id", None)
    cart = getattr(carts, "Cart", None)
    if cart_id is None or cart is None:
        raise Wrong("the carts module is not as the notebook gives it: run its cell again, unchanged.")
    course = runtime.current()
    one, two, three, four = (course.new_id("check-customer") for _ in range(4))
    try:
        async with worker_for([cart], purpose="carts") as queue:
            return await _judge_carts(add_to_cart, carts, queue, one, two, three, four)
    finally:
        await _end([course.client.get_workflow_handle(cart_id(c)) for c in (one, two, three, four)])
        _forget_lost_futures()


def _forget_lost_futures() -> None:
    """A refused update-with-start leaves the SDK's start future failed and unread; collected later, asyncio would
    log "Future exception was never retrieved" under some unrelated cell. Collect it now, quietly."""
    import gc

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: None)
    try:
        gc.collect()
    finally:
        loop.set_exception_handler(previous)


async def _judge_carts(add_to_cart: Any, carts: ModuleType, queue: str, *customers: str) -> str:
    course = runtime.current()
    one, two, three, four = customers
    # One item after the other, for a customer without a cart.
    answers = []
    for item, state in (("apple", "a new customer's cart"), ("bread", "a cart that already holds an apple")):
        try:
            answers.append(await _add(add_to_cart, one, item, queue))
        except Wrong:
            raise
        except NotImplementedError:
            raise
        except Exception as err:
            raise _cart_error(err, state, item) from None
    if any(not isinstance(a, int) for a in answers):
        got = next(a for a in answers if not isinstance(a, int))
        raise Wrong(
            f"add_to_cart returned {type(got).__name__} {got!r}, not the number of items in the cart: return the "
            "`add` update's result (a signal has no result; send the update)."
        )
    contents = await _contents(carts.cart_id(one))
    if contents is None:
        raise Wrong(
            f"no cart workflow has the id carts.cart_id(customer) ({carts.cart_id('<customer>')}): use it as the "
            "workflow id, so that there is one cart per customer, found by its id."
        )
    if contents == ["bread"]:
        raise Wrong(
            "after adding apple, then bread, the cart holds only ['bread']: the second call replaced the running "
            "cart (TERMINATE_EXISTING ends it, and its items with it). Use WorkflowIDConflictPolicy.USE_EXISTING."
        )
    if contents != ["apple", "bread"] or answers != [1, 2]:
        raise Wrong(f"adding apple, then bread, to a new cart answered {answers} and left {contents} in it.")
    # Two clicks at the same moment, for a customer without a cart.
    outcomes = await asyncio.gather(
        _add(add_to_cart, two, "tea", queue), _add(add_to_cart, two, "cheese", queue), return_exceptions=True
    )
    if failed := [o for o in outcomes if isinstance(o, BaseException)]:
        if isinstance(failed[0], Wrong | NotImplementedError):
            raise failed[0]
        raise _cart_error(failed[0], "a new customer's cart, at the same moment as another item", "tea or cheese")
    contents = await _contents(carts.cart_id(two))
    if sorted(outcomes) != [1, 2] or sorted(contents or []) != ["cheese", "tea"]:
        raise Wrong(
            f"two items added at the same moment to a new customer's cart answered {outcomes} and left {contents} in "
            "it: both should be in one cart (answers 1 and 2)."
        )
    # A cart that runs already (started by someone else).
    existing = await course.client.start_workflow(
        carts.Cart.run, three, id=carts.cart_id(three), task_queue=queue, execution_timeout=timedelta(minutes=5)
    )
    await asyncio.wait_for(existing.execute_update(carts.Cart.add, "apple"), CALL_TIMEOUT_S)
    try:
        answer = await _add(add_to_cart, three, "tea", queue)
    except (Wrong, NotImplementedError):
        raise
    except Exception as err:
        raise _cart_error(err, "a cart that was already running", "tea") from None
    if answer != 2 or await _contents(carts.cart_id(three)) != ["apple", "tea"]:
        raise Wrong(f"adding tea to a running cart that held an apple answered {answer!r}; it should answer 2.")
    # An item the cart refuses.
    try:
        answer = await _add(add_to_cart, four, "unicorn", queue)
    except (Wrong, NotImplementedError):
        raise
    except Exception:
        pass  # refused, and the caller knows
    else:
        raise Wrong(
            f"the cart refused 'unicorn' (not in the catalog), yet add_to_cart returned {answer!r}: let the update's "
            "error (WorkflowUpdateFailedError) reach the caller."
        )
    return (
        "one cart per customer, created by the first item (also when two arrive at once), used when it runs already, "
        "and a refused item reaches the caller as an error."
    )


# --------------------------------------------------------------------------- 06.3 a leave request, over simulated days

LEAVE_TODO = "complete LeaveRequest.run: wait, escalate, decide automatically, and set outcome."
REQUEST = {"employee": "sam", "lead": "lee", "head": "hana", "days": 3}
ESCALATE_DAY, DECIDE_DAY = 2.0, 5.0
EXECUTION_TIMEOUT = timedelta(days=30)
DAY_S = 86_400.0
SAME_DAY = 0.01  # days (about 15 minutes): "on day 2" means within this of day 2


@dataclass(frozen=True)
class LeavePath:
    name: str
    decider: str | None
    approved: bool
    on_day: float
    outcome: str
    escalated: bool
    ends_on: float


LEAVE_PATHS = (
    LeavePath("lee approves on day 1", "lee", True, 1.0, "approved by lee", False, 1.0),
    LeavePath("lee rejects on day 1.5", "lee", False, 1.5, "rejected by lee", False, 1.5),
    LeavePath("hana approves on day 3", "hana", True, 3.0, "approved by hana", True, 3.0),
    LeavePath("lee rejects on day 4", "lee", False, 4.0, "rejected by lee", True, 4.0),
    LeavePath("nobody answers", None, True, 0.0, "approved automatically", True, DECIDE_DAY),
)


@dataclass
class LeaveRun:
    path: LeavePath
    outcome: str | None = None
    timed_out: bool = False
    sent: list[tuple[str, float]] = field(default_factory=list)  # (to, day)

    def days_told(self, who: str) -> list[float]:
        return [day for to, day in self.sent if to == who]


@dataclass
class Mailbag:
    """What the check's ``notify`` was asked to send, per run: (to, the server's time)."""

    sent: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def activity(self) -> Callable[..., Any]:
        @activity.defn(name="notify")
        async def notify(ref: str, to: str, subject: str) -> None:
            info = activity.info()
            self.sent.setdefault(info.workflow_id, []).append((to, info.scheduled_time.timestamp()))

        return notify


async def _first_task(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait (bounded) for the run's first workflow task; raise at once if the workflow's code failed in it. (In the
    time-skipping server a failing workflow task also stops the clock: nothing else would say why.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CALL_TIMEOUT_S
    while loop.time() < deadline:
        kinds = {e.event_type for e in (await handle.fetch_history()).events}
        if EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED in kinds and (failed := await _task_failure(handle)) is not None:
            raise failed
        if EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds:
            return
        await asyncio.sleep(0.05)
    raise Wrong("your workflow did not start within a few seconds: is a worker able to run it?")


async def _leave_run(
    ts: time_skipping.TimeSkippingServer, cls: type, path: LeavePath, wid: str, bag: Mailbag
) -> LeaveRun:
    handle = await ts.client.start_workflow(
        cls.run,  # type: ignore[attr-defined]
        REQUEST,
        id=wid,
        task_queue=ts.task_queue,
        execution_timeout=EXECUTION_TIMEOUT,
    )
    await _first_task(handle)
    run = LeaveRun(path)
    if path.decider is not None:
        try:
            await asyncio.wait_for(ts.sleep(timedelta(days=path.on_day)), CALL_TIMEOUT_S)
        except (asyncio.TimeoutError, TimeoutError):  # the clock stands still while a workflow task keeps failing
            raise await _no_answer(handle, f"the leave request where {path.name}", CALL_TIMEOUT_S) from None
        with contextlib.suppress(RPCError):  # a run that has ended already cannot be signalled: judged below
            await asyncio.wait_for(
                handle.signal("decide", {"by": path.decider, "approved": path.approved}), CALL_TIMEOUT_S
            )
    try:
        run.outcome = await asyncio.wait_for(handle.result(), CALL_TIMEOUT_S)
    except WorkflowFailureError as err:
        if (failed := await _task_failure(handle)) is not None:
            raise failed from None
        if isinstance(err.cause, TemporalTimeoutError):
            run.timed_out = True
        else:
            raise Wrong(f"when {path.name}, your workflow failed: {_cause(err)}") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise await _no_answer(handle, f"the leave request where {path.name}", CALL_TIMEOUT_S) from None
    events = [e async for e in handle.fetch_history_events()]
    start = events[0].event_time.ToDatetime().timestamp()
    run.sent = [(to, (at - start) / DAY_S) for to, at in bag.sent.get(wid, [])]
    return run


def _day(d: float) -> str:
    return f"day {round(d, 2):g}"


def _judge_leave(runs: dict[str, LeaveRun]) -> None:
    nobody = runs["nobody answers"]
    if nobody.timed_out:
        raise Wrong(
            "nobody answered, and your workflow waited until its execution timeout (30 days) without escalating or "
            "deciding: a wait_condition without a timeout waits forever. Give each wait a timeout "
            "(wait_condition(..., timeout=ESCALATE_AFTER)) and act when it runs out (asyncio.TimeoutError)."
        )
    for run in runs.values():
        if run.timed_out:
            raise Wrong(f"when {run.path.name}, your workflow waited until its execution timeout (30 days).")
    for run in runs.values():
        told = run.days_told("hana")
        if run.path.escalated and not told:
            when = f"by {_day(run.path.on_day)}" if run.path.decider else "at all"
            raise Wrong(
                f"when {run.path.name}, nobody had decided after 2 days, yet hana (the head of department) was never "
                f"told {when}: after ESCALATE_AFTER without a decision, notify request['head']."
            )
        if run.path.escalated and abs(told[0] - ESCALATE_DAY) > SAME_DAY:
            raise Wrong(f"hana was told on {_day(told[0])}; escalate when ESCALATE_AFTER (2 days) has passed.")
        if not run.path.escalated and told:
            raise Wrong(
                f"{run.path.decider} decided on {_day(run.path.on_day)}, yet hana was told on {_day(told[0])}: "
                "escalate only when the wait for a decision ran out (asyncio.TimeoutError), not when a decision came."
            )
    for run in runs.values():
        if run.outcome != run.path.outcome:
            extra = (
                " A decision counts whoever sends it, also after the escalation."
                if run.path.escalated and run.path.decider
                else ""
            )
            raise Wrong(
                f"when {run.path.name}, the outcome was {run.outcome!r}; it should be {run.path.outcome!r}.{extra}"
            )
    for run in runs.values():
        told = run.days_told("sam")
        if not told:
            raise Wrong(f"when {run.path.name}, sam was never told the outcome: keep the given lines after the TODO.")
        if abs(told[-1] - run.path.ends_on) > SAME_DAY:
            if run.path.decider is None:
                raise Wrong(
                    f"nobody answered, and the leave was approved automatically on {_day(told[-1])}, not on day 5: "
                    "DECIDE_AFTER counts from the request, so after the escalation wait only what is left "
                    "(DECIDE_AFTER - ESCALATE_AFTER)."
                )
            raise Wrong(
                f"{run.path.decider} decided on {_day(run.path.on_day)}, but sam heard only on {_day(told[-1])}: the "
                "decision should end the wait at once (wait_condition returns when its condition turns true)."
            )


@exercise("06.3")
async def check_leave_request(module: Any) -> str:
    cls, defn = _workflow_class(module, "LeaveRequest", LEAVE_TODO)
    if "decide" not in defn.signals:
        raise Wrong("LeaveRequest has no decide signal: keep the given one.")
    course = runtime.current()
    bag = Mailbag()
    ts = await time_skipping.launch()
    try:
        await ts.start_worker(workflows=[cls], activities=[bag.activity()])
        runs = {}
        for path in LEAVE_PATHS:  # one after the other: the test server's clock is shared
            runs[path.name] = await _leave_run(ts, cls, path, course.new_id("check-leave"), bag)
    finally:
        await ts.stop()
    _judge_leave(runs)
    return (
        "on every path (a decision before or after the escalation, by either person, or none), the head is told "
        "after 2 days without a decision, and the leave is approved automatically after 5."
    )


__all__ = ["LEAVE_PATHS", "check_add_to_cart", "check_leave_request", "check_ticket_counter"]
