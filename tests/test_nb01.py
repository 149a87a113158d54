"""Notebook 01: real crashes (worker process, script, dev server), the ledger, the quiz widget, and the checks.

The exercise tests take their code from the solution notebook itself (and its generated stub), so they test
what a learner actually gets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from support import run_check, solution

from helpers import history, runtime, server, widgets, worker
from helpers.checks import nb01
from helpers.ledger import Ledger

STEPS = ["reserve_stock", "charge", "ship", "notify"]


NB01 = solution("01")
cell_source = NB01.source
run_cell = NB01.run_cell


def module_from_cell(scratch: Path, cell_id: str, *, learner: bool = False, edit=None):
    return NB01.module(scratch, cell_id, learner=learner, edit=edit)


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a container's pid 1 may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state != "Z"


ORDER_WORKER = {
    "workflows": ["order_workflow:OrderWorkflow"],
    "activities": [f"shop:{s}" for s in STEPS],
}


# --------------------------------------------------------------------------- crashes for real


def test_worker_process_killed_mid_step_resumes_from_the_last_completed_step(make_course, scratch):
    shop = module_from_cell(scratch, "shop-module")
    wf = module_from_cell(scratch, "workflow-module")

    async def scenario():
        course = await make_course("01")
        queue = course.new_task_queue("orders")
        proc = await worker.start_process(course, **ORDER_WORKER, task_queue=queue)
        assert proc.alive and "running" in repr(proc)
        order = course.new_id("order")
        handle = await course.start_workflow(wf.OrderWorkflow.run, order, id=order, task_queue=queue, show=False)
        await worker.wait_until(lambda: shop.ledger.has(order, "ship", "started"), 5)
        proc.kill()
        assert not proc.alive and "killed (SIGKILL)" in repr(proc)
        view = await worker.server_view(handle)
        assert view.status == "RUNNING" and view.pending == [("ship", 1, "started")]
        started = time.monotonic()
        await worker.start_process(course, **ORDER_WORKER, task_queue=queue)
        assert await course.result(handle, 10) == [f"{s} ✓" for s in STEPS]
        assert time.monotonic() - started < 9  # the notebook cell's budget is 10 s
        counts = shop.ledger.counts(order)
        assert [counts[(s, "started")] for s in STEPS] == [1, 1, 2, 1]
        assert [counts[(s, "done")] for s in STEPS] == [1, 1, 1, 1]
        table = history.table(await handle.fetch_history())
        assert table.counts()["ActivityTaskScheduled"] == 4
        assert any(r.event == "ActivityTaskStarted" and r.details == "ship attempt 2" for r in table.rows)
        await worker.stop_all()

    asyncio.run(scenario())


def test_the_worker_crash_cell_can_be_run_again(make_course, scratch, capsys):
    """Re-running the cell that killed the worker starts a fresh worker process first (a common learner action)."""
    shop = module_from_cell(scratch, "shop-module")
    order_workflow = module_from_cell(scratch, "workflow-module")

    async def scenario():
        course = await make_course("01")
        ns = {"course": course, "worker": worker, "shop": shop, "order_workflow": order_workflow}
        await run_cell("worker-start", ns)
        handles = []
        for _ in range(2):
            await run_cell("worker-crash", ns)
            assert not ns["proc"].alive and ns["proc"].killed
            handles.append(ns["handle"])
        await run_cell("worker-restart", ns)
        for handle in handles:  # the first crashed order finishes on the new worker too
            assert await course.result(handle, 10) == [f"{s} ✓" for s in STEPS]
        await worker.stop_all()

    asyncio.run(scenario())
    assert capsys.readouterr().out.count("killed (SIGKILL)") == 2


def test_plain_script_killed_and_rerun_repeats_completed_steps(make_course, scratch):
    shop = module_from_cell(scratch, "shop-module")
    module_from_cell(scratch, "script-module")

    async def scenario():
        course = await make_course("01")
        order = course.new_id("order")
        script = await worker.start_script(course, "order_script:place_order", order)
        await worker.wait_until(lambda: shop.ledger.has(order, "ship", "started"), 5)
        script.kill()
        script = await worker.start_script(course, "order_script:place_order", order)
        assert await script.wait(5) == 0 and repr(script).endswith("finished")
        counts = shop.ledger.counts(order)
        assert [counts[(s, "done")] for s in STEPS] == [2, 2, 1, 1]
        assert "returned" in script.log_path.read_text()

    asyncio.run(scenario())


def test_dev_server_killed_and_restarted_loses_nothing(make_course, scratch):
    shop = module_from_cell(scratch, "shop-module")
    wf = module_from_cell(scratch, "workflow-module")

    async def scenario():
        course = await make_course("01")
        demo = await worker.start_server(course, scratch / "demo.db")
        client = await server.connect(demo.target)
        queue = course.new_task_queue("demo")
        proc = await worker.start_process(course, **ORDER_WORKER, task_queue=queue, target=demo.target)
        order = course.new_id("order")
        handle = await client.start_workflow(wf.OrderWorkflow.run, order, id=order, task_queue=queue)
        await worker.wait_until(lambda: shop.ledger.has(order, "charge", "started"), 5)
        demo.kill()
        assert await server.probe(demo.target, 1) == "closed"
        demo2 = await worker.start_server(course, demo.db_path, port=demo.port)
        assert demo2.port == demo.port
        assert await runtime.wait_result(client, handle, 10) == [f"{s} ✓" for s in STEPS]
        assert proc.alive, "the worker process reconnects by itself"
        counts = shop.ledger.counts(order)
        assert [counts[(s, "done")] for s in STEPS] == [1, 1, 1, 1]
        await worker.stop_all()
        assert not proc.alive and not demo2.alive()

    asyncio.run(scenario())


def test_a_bad_name_is_one_error_with_the_worker_log(make_course, scratch):
    async def scenario():
        course = await make_course("01")
        with pytest.raises(runtime.CourseError, match="ModuleNotFoundError"):
            await worker.start_process(course, activities=["no_such_module:thing"], timeout=10)
        with pytest.raises(runtime.CourseError, match="module:attr"):
            await worker.start_process(course, activities=["no_colon"])

    asyncio.run(scenario())


ORPHAN_PARENT = """
import asyncio, sys
from pathlib import Path
from helpers import runtime, server, worker

IDLE = '''
import asyncio
from temporalio import activity

@activity.defn
async def idle() -> None:
    await asyncio.sleep(60)

async def sleep_long() -> None:
    await asyncio.sleep(60)
'''

async def main():
    scratch = Path(sys.argv[1])
    sys.path.insert(0, str(scratch))
    where = server.target()
    course = runtime.Course(notebook="t", client=await runtime.connect(where), target=where, scratch=scratch)
    runtime.write_module(scratch, "idle_mod", IDLE)
    p = await worker.start_process(course, activities=["idle_mod:idle"], task_queue=course.new_task_queue("orphan"))
    s = await worker.start_script(course, "idle_mod:sleep_long")
    d = await worker.start_server(course, scratch / "demo.db")
    print(p.pid, s.pid, d.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_children_and_the_throwaway_server_die_with_the_kernel(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ORPHAN_PARENT), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()  # bounded: the parent exits (EOF) if anything fails
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3, line
        assert all(_alive(p) for p in pids)
        time.sleep(0.6)  # let the server's guard start watching
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
    deadline = time.monotonic() + 8
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "orphans left behind"


# --------------------------------------------------------------------------- ledger and quiz


def test_ledger_counts_tables_and_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ledger = Ledger(tmp_path / "l.txt")
    for step, events in [("a", ["started", "done", "started", "done"]), ("b", ["started"])]:
        for e in events:
            ledger.record("k1", step, e)
    ledger.record("k2", "a", "started")
    ledger.record("k2", "a", "done")
    for _ in range(3):  # issue 7.12: a step run three times read "ran 3× ⚠ twice!"
        ledger.record("k3", "a", "started")
        ledger.record("k3", "a", "done")
    assert ledger.has("k1", "a") and not ledger.has("k1", "b") and ledger.has("k1", "b", "started")
    table = ledger.table({"one": "k1", "two": "k2"})
    text = repr(table)
    assert "ran 2×  ⚠ twice!" in text and "ran 1×, cut off" in text and "never ran" in text
    assert repr(ledger.table({"three": "k3"})).endswith("ran 3×  ⚠ 3 times!")
    assert "<table" in table._repr_html_()
    ledger.plot({"one": "k1", "two": "k2"}, title="t")


def test_quiz_writes_the_code_and_needs_no_clicks():
    quiz = widgets.ClassificationQuiz(nb01.SCENARIOS, nb01.CHOICES, answers={"checkout": "workflow", "x": "y"})
    bundle = quiz._repr_mimebundle_()
    assert bundle["text/plain"] == quiz.summary() and "application/vnd.jupyter.widget-view+json" in bundle
    assert "10 scenarios" in quiz.summary()
    # issue 7.12: without widgets (nbval, a graded copy, a terminal) the scenarios must still be readable
    for key, text in nb01.SCENARIOS.items():
        assert f"{key}  " in quiz.summary() and text in quiz.summary()
    assert quiz.answers["checkout"] == "workflow" and quiz.answered() == 1
    quiz.choose("clickstream", "plain code")
    code = quiz.code()
    assert code.startswith("ANSWERS = {") and '"clickstream":' in code and '"plain code",' in code
    assert "...,  # choose" in code
    for key in nb01.SCENARIOS:
        quiz.choose(key, nb01.KEY[key][0])
    namespace: dict = {}
    exec(quiz.code(), namespace)  # the pasted code is valid Python and passes the check's key
    assert namespace["ANSWERS"] == {k: v for k, (v, _) in nb01.KEY.items()}
    assert quiz._buttons["checkout"].value == "workflow"  # the buttons follow choose()
    quiz._buttons["checkout"].value = "plain code"  # ... and a click updates the code
    assert '"checkout":' in quiz.code() and quiz.answers["checkout"] == "plain code"
    with pytest.raises(ValueError):
        quiz.choose("checkout", "maybe")
    assert widgets.ClassificationQuiz(nb01.SCENARIOS, nb01.CHOICES, answers=...).answered() == 0  # type: ignore[arg-type]


# --------------------------------------------------------------------------- checks


def _solution_answers() -> dict:
    namespace: dict = {}
    exec(cell_source("ex1-code"), namespace)
    return namespace["ANSWERS"]


@pytest.mark.parametrize(
    ("answers", "status", "hint"),
    [
        ("solution", "passed", "all 10 right"),
        (..., "not_done", "fill in ANSWERS"),
        ({"checkout": "workflow"}, "not_done", "9 scenario(s) still need an answer"),
        ("clickstream-wrong", "failed", "'clickstream' is not 'workflow': millions of events"),
        ("all-workflow", "failed", "4 of 10 need another look"),
        ("typo", "failed", "use 'workflow' or 'plain code'"),
        ([("checkout", "workflow")], "failed", "should be a dict"),
        ("misspelled", "failed", "unknown scenario 'subscriptions' (did you mean 'subscription'?)"),
        ("made-up", "failed", "unknown scenario 'blockchain'; use the keys the quiz shows."),
    ],
)
def test_nb01_classification(answers, status, hint, capsys):
    solution = _solution_answers()
    answers = (
        {
            "solution": solution,
            "clickstream-wrong": {**solution, "clickstream": "workflow"},
            "all-workflow": dict.fromkeys(solution, "workflow"),
            "typo": {**solution, "checkout": "Workflow"},
            "misspelled": {**{k: v for k, v in solution.items() if k != "subscription"}, "subscriptions": "workflow"},
            "made-up": {**solution, "blockchain": "workflow"},
        }.get(answers, answers)
        if isinstance(answers, str)
        else answers
    )
    verdict = run_check(lambda: nb01.check_classification(answers), capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("01.1", status)
    assert hint in verdict.message


def _direct_call(source: str) -> str:
    """The plausible mistake: call the script's step inside the workflow instead of as an activity."""
    return source.replace(
        'await workflow.execute_activity(cancel_shipment, order["id"], start_to_close_timeout=STEP_TIMEOUT)',
        'await refund_script.cancel_shipment(order["id"])',
    )


def _swap_order(source: str) -> str:
    first = 'await workflow.execute_activity(cancel_shipment, order["id"], start_to_close_timeout=STEP_TIMEOUT)\n'
    assert first in source
    source = source.replace("        " + first, "")
    return source.replace("        text = f", "        " + first + "        text = f")


def _other_email(source: str) -> str:
    """The email text changed: the task says to keep the script's steps."""
    old = "text = f\"We refunded {amount:.2f} for order {order['id']}.\""
    assert old in source
    return source.replace(old, 'text = "Your refund is on its way"')


def _no_decimals(source: str) -> str:
    """Issue 7.9: passed while the only order's total (29.75) reads the same either way."""
    old = "text = f\"We refunded {amount:.2f} for order {order['id']}.\""
    return source.replace(old, "text = f\"We refunded {amount} for order {order['id']}.\"")


def _format_method(source: str) -> str:
    """Right, in another style: str.format builds the same text."""
    old = "text = f\"We refunded {amount:.2f} for order {order['id']}.\""
    return source.replace(old, 'text = "We refunded {:.2f} for order {}.".format(amount, order["id"])')


def _steps_in_a_loop(source: str) -> str:
    """Right, in another style: the three steps as data, one execute_activity call in a loop."""
    head, _ = source.split('        amount = refund_script.refund_amount(order["items"])\n')
    return (
        head
        + """        amount = sum(i["price"] * i["qty"] for i in order["items"])
        amount = round(amount, 2)
        steps = [
            (cancel_shipment, [order["id"]]),
            (refund_payment, [order["id"], amount]),
            (email_customer, [order["id"], f"We refunded {amount:.2f} for order {order['id']}."]),
        ]
        for step, args in steps:
            await workflow.execute_activity(step, args=args, start_to_close_timeout=STEP_TIMEOUT)
        return "refunded %.2f" % amount
"""
    )


def _one_activity(source: str) -> str:
    """The whole script wrapped in one activity: durable, but one step, not three."""
    body = source.split("    async def run(self, order: dict) -> str:\n")[0]
    return (
        body
        + """    async def run(self, order: dict) -> str:
        return await workflow.execute_activity(do_refund, order, start_to_close_timeout=STEP_TIMEOUT)


@activity.defn
async def do_refund(order: dict) -> str:
    return await refund_script.refund(order)
"""
    )


def _learner_activities_solved_workflow(scratch: Path):
    """The learner filled in the workflow but not the activities yet."""
    solution = cell_source("ex2-code")
    stub = cell_source("ex2-code", learner=True)
    head = stub.split("@workflow.defn")[0]
    return head + "@workflow.defn" + solution.split("@workflow.defn")[1]


@pytest.mark.parametrize(
    ("variant", "status", "hint"),
    [
        ("solution", "passed", "3 activities each in the script's order"),
        ("format-method", "passed", "3 activities each in the script's order"),
        ("steps-in-a-loop", "passed", "3 activities each in the script's order"),
        ("no-decimals", "failed", "for a refund of 30.00, email_customer got the text 'We refunded 30.0 for order"),
        ("stub", "not_done", "compute the amount in the workflow, then run the three activities"),
        ("activities-missing", "not_done", "make each outside-world step an activity"),
        ("direct-call", "failed", "cancel_shipment ran, but inside the workflow code"),
        ("wrong-order", "failed", "in this order"),
        ("other-email", "failed", "email_customer got the text 'Your refund is on its way'; keep the script's steps"),
        (
            "one-activity",
            "failed",
            "your workflow calls an activity do_refund, but the check runs only cancel_shipment, refund_payment and "
            "email_customer: call those three as activities",
        ),
    ],
)
def test_nb01_refund_workflow(variant, status, hint, make_course, scratch, capsys):
    module_from_cell(scratch, "refund-script")
    if variant == "activities-missing":
        source = _learner_activities_solved_workflow(scratch)
        module = runtime.write_module(scratch, "refund_workflow", source)
    else:
        edits = {
            "direct-call": _direct_call,
            "wrong-order": _swap_order,
            "other-email": _other_email,
            "no-decimals": _no_decimals,
            "format-method": _format_method,
            "steps-in-a-loop": _steps_in_a_loop,
        }
        edit = edits.get(variant) or {"one-activity": _one_activity}.get(variant)
        module = module_from_cell(scratch, "ex2-code", learner=variant == "stub", edit=edit)

    async def scenario():
        await make_course("01")
        started = time.monotonic()
        await nb01.check_refund_workflow(module)
        assert time.monotonic() - started < 9

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("01.2", status), verdict
    assert hint in verdict.message, verdict.message
    assert " here" not in verdict.message


def _solution_timeouts() -> dict:
    namespace: dict = {}
    exec(cell_source("ex3-code"), namespace)
    return namespace["TIMEOUTS"]


@pytest.mark.parametrize(
    ("change", "status", "hint"),
    [
        ({}, "passed", "every step gets longer"),
        (..., "not_done", "fill in TIMEOUTS"),
        ({"charge": timedelta(seconds=5)}, "failed", "charge: 5 s is not longer than its slowest healthy call (8 s)"),
        ({"ship": timedelta(hours=1)}, "failed", "ship: 1 h is far longer"),
        # walkthrough finding: the bound read "stay within 10× (1.33333 min)"
        ({"charge": timedelta(minutes=10)}, "failed", "stay within 10× (80 s)"),
        ({"notify": 5}, "failed", "write it as a timedelta"),
        ({"notify": ...}, "not_done", "needs a timeout for 'notify'"),
        ({"ship": timedelta(seconds=2)}, "failed", "ship: 2 s is not longer than its slowest healthy call (3 s)"),
        (
            {"reserve_stock": None, "reserve": timedelta(seconds=2)},  # None: the key is left out
            "failed",
            "unknown step 'reserve' (did you mean 'reserve_stock'?); the steps are: reserve_stock, charge, ship, "
            "notify.",
        ),
    ],
)
def test_nb01_timeouts(change, status, hint, capsys):
    timeouts = ... if change is ... else {k: v for k, v in {**_solution_timeouts(), **change}.items() if v is not None}
    verdict = run_check(lambda: nb01.check_timeouts(timeouts), capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("01.3", status)
    assert hint in verdict.message, verdict.message
    # charging twice is a risk of charge only, and of a charge cut off too early
    too_short = isinstance(change, dict) and "charge" in change and change["charge"] <= timedelta(seconds=8)
    assert ("charging twice" in verdict.message) == too_short


def test_learner_stubs_are_not_done(capsys):
    """The generated learner cells for 01.1 and 01.3 leave ``...``, which the checks call not done."""
    for cell_id, check in (("ex1-code", nb01.check_classification), ("ex3-code", nb01.check_timeouts)):
        namespace: dict = {"timedelta": timedelta}
        exec(cell_source(cell_id, learner=True), namespace)
        value = namespace.get("ANSWERS", namespace.get("TIMEOUTS"))
        assert value is Ellipsis
        verdict = run_check(lambda check=check, value=value: check(value), capsys=capsys)
        assert verdict.status == "not_done"
