"""Notebook 05 (scaling): the demos' helpers against real servers and worker processes, and the three checks.

The exercise tests take their code from the solution notebook (and its generated stub), so they test what a learner
gets: the solution passes, the stub is "not done yet", two correct answers written differently pass, and plausible
wrong answers each get their own hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from support import run_check, solution
from temporalio.client import WorkflowFailureError
from temporalio.common import Priority

from helpers import history, history_sizes, plots, runtime, server, task_queues, throughput, worker, worklog
from helpers.checks import nb05

NB = solution("05")


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _edit(*pairs: str):
    """A source edit (``old, new, old, new, …``) that fails loudly if the notebook no longer contains an ``old``."""

    def edit(source: str) -> str:
        for old, new in zip(pairs[::2], pairs[1::2], strict=True):
            assert old in source, f"the solution no longer contains {old!r}"
            source = source.replace(old, new)
        return source

    return edit


def _module(scratch: Path, cell_id: str, variant):
    """The exercise cell as a module: the solution (``variant`` None or an edit of it), or the learner's stub
    (``"stub"``, or ``("stub", edit)``: the stub, edited)."""
    if variant == "stub" or isinstance(variant, tuple):
        return NB.module(scratch, cell_id, learner=True, edit=None if variant == "stub" else variant[1])
    return NB.module(scratch, cell_id, edit=variant)


async def _cells(ns: dict, *cell_ids: str) -> str:
    """Run notebook cells in ``ns``; return what they printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for cell_id in cell_ids:
            await NB.run_cell(cell_id, ns)
    return out.getvalue()


# --------------------------------------------------------------------------- worker processes, throwaway servers


def test_worker_processes_share_a_queue_and_each_keeps_its_slot_limit(make_course, scratch):
    thumbnails = NB.module(scratch, "thumbnails-module")

    async def scenario():
        course = await make_course("05")
        queue = course.new_task_queue("share")
        spec = {"workflows": ["thumbnails:Thumbnail"], "activities": ["thumbnails:make_thumbnail"]}
        procs = await asyncio.gather(
            *(
                worker.start_process(course, **spec, task_queue=queue, max_concurrent_activities=1, replace=False)
                for _ in range(2)
            )
        )
        assert all(p.alive for p in procs), "replace=False keeps both worker processes on the queue"
        images = [f"share/img-{i}" for i in range(4)]
        runs = [await course.start_workflow(thumbnails.Thumbnail.run, i, task_queue=queue, show=False) for i in images]
        assert [await course.result(r, 15) for r in runs] == [f"{i}.thumb.jpg" for i in images]
        attempts = thumbnails.log.attempts(images)
        assert {a.pid for a in attempts} == {p.pid for p in procs}, "both processes took tasks"
        for p in procs:  # one slot each: a process never ran two thumbnails at once
            mine = sorted((a.start, a.end) for a in attempts if a.pid == p.pid)
            assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(mine))
        again = await worker.start_process(course, **spec, task_queue=queue)  # default: replace
        assert again.alive
        await worker.stop_all()
        assert not any(p.alive for p in [*procs, again])

    asyncio.run(scenario())


def test_in_memory_throwaway_servers_are_separate_and_stopped_with_the_rest(make_course):
    async def scenario():
        course = await make_course("05")
        one = await worker.start_server(course, None)
        two = await worker.start_server(course, None)
        assert one.port != two.port and one.alive() and two.alive() and one.db_path is None
        await worker.stop_all()
        assert not one.alive() and not two.alive()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- throughput


def test_rate_between_is_exact_for_one_by_one_and_for_batched_completions():
    serial = [0.5 * k for k in range(1, 10)]  # one run every 0.5 s
    assert throughput.rate_between(serial, 1.2, 3.2) == (4, pytest.approx(2.0))
    batched = [t for k in range(1, 8) for t in [0.5 * k] * 5]  # 5 slots: 5 runs end together every 0.5 s
    assert throughput.rate_between(batched, 0.7, 2.7) == (20, pytest.approx(10.0))
    assert throughput.rate_between([], 0, 1) == (0, 0.0)
    assert throughput.rate_between([0.5], 0, 1) == (1, 0.0)  # one completion and nothing before: no rate


def test_bench_gains_from_runs_in_flight_slots_cap_it_and_the_cpu_is_accounted_for(make_course, scratch):
    _agg()
    io_bound = NB.module(scratch, "io-bound-module")

    async def scenario():
        course = await make_course("05")
        bench = await throughput.Bench.start(
            course,
            io_bound.OneCall.run,
            workflows=["io_bound:OneCall"],
            activities=["io_bound:call_api"],
            activity_seconds=io_bound.API_SECONDS,
        )
        try:
            serial = await bench.measure(in_flight=1, slots=50, show=False)
            wide = await bench.measure(in_flight=20, slots=50, show=False)
            await bench.prepare([(2, 1), (2, 1)])  # started once, used by the next measurement
            assert list(bench._sets) == [(50, 1), (2, 1)]
            capped = await bench.measure(in_flight=20, slots=2, show=False)
            bench.plot()
        finally:
            await bench.stop()
        assert not bench.dev.alive()
        return serial, wide, capped, bench.summary()

    serial, wide, capped, summary = asyncio.run(scenario())
    # Generous bounds: the machine is shared. Serial is about 1 / 0.55 s; 20 in flight overlap their waits.
    assert 1.0 < serial.rate < 2.2
    assert wide.rate > 4 * serial.rate, (serial, wide)
    assert capped.rate < 2 / 0.5 * 1.3, "2 slots cap a worker at 2 ÷ 0.5 s = 4 runs per second"
    for point in (serial, wide, capped):
        assert set(point.cpu) == set(throughput.CPU_PARTS)
        assert all(0 <= share <= 1 for share in point.cpu.values()) and point.busy <= 1.05
        assert point.cpu["server"] > 0, "the server's CPU time is read"
    assert wide.cpu["server"] > serial.cpu["server"], "more runs per second cost the server more CPU"
    text = repr(summary)
    assert summary.best is wide and "gain" in text and "the limit" in text


# --------------------------------------------------------------------------- several workers, one killed


def test_worklog_pairs_attempts_per_process_and_finds_what_a_crash_cut_off(tmp_path):
    _agg()
    log = worklog.WorkLog(tmp_path / "w.log")
    lines = [
        (1.0, 11, "a", "started"),
        (1.1, 22, "b", "started"),
        (1.5, 11, "a", "done"),
        (1.6, 11, "c", "started"),
        (2.0, 11, "c", "done"),
        (4.0, 11, "b", "started"),  # b again, after 22 died
        (4.4, 11, "b", "done"),
    ]
    log.path.write_text("".join(f"{t}\t{pid}\t{item}\t{ev}\n" for t, pid, item, ev in lines))
    assert [(a.item, a.pid, a.end is None) for a in log.attempts()] == [
        ("a", 11, False),
        ("b", 22, True),
        ("c", 11, False),
        ("b", 11, False),
    ]
    assert log.running(22) == 1 and log.finished() == {"a", "b", "c"}
    table = log.table({"worker 1": 11, "worker 2": 22}, ["a", "b", "c"])
    assert "3 of 3 items finished; 1 attempt(s) cut off by the crash; nothing lost" in repr(table)
    assert "never finished: d" in repr(log.table({"worker 1": 11}, ["a", "d"]))
    table.plot(marks={"worker 2 killed": 2.5})
    log.started("x")  # real records carry this process's pid
    assert log.attempts(["x"])[0].pid == os.getpid()


def test_fleet_demo_a_killed_worker_loses_nothing(make_course, scratch):
    _agg()
    thumbnails = NB.module(scratch, "thumbnails-module")

    async def scenario():
        course = await make_course("05")
        ns = {"course": course, "worker": worker, "asyncio": asyncio, "time": time, "thumbnails": thumbnails}
        ns["timedelta"] = timedelta
        printed = await _cells(ns, "fleet-start", "fleet-run")
        pids = {label: p.pid for label, p in ns["fleet"].items()}
        table = thumbnails.log.table(pids, ns["images"])
        await worker.stop_all()
        return printed, table

    printed, table = asyncio.run(scenario())
    assert "18 of 18 workflows completed" in printed and "worker 2: killed (SIGKILL)" in printed
    assert "nothing lost" in repr(table)
    assert any(a.end is None for a in table.attempts), "the kill cut off an attempt in the middle"
    assert {a.item for a in table.attempts if a.end is not None} == set(table.items)


# --------------------------------------------------------------------------- routing, priority, fan-out


def test_work_pinned_to_the_host_that_downloaded_its_file(make_course, scratch):
    files = NB.module(scratch, "files-module")
    file_workflow = NB.module(scratch, "file-workflow-module")

    async def scenario():
        course = await make_course("05")
        ns = {"course": course, "worker": worker, "asyncio": asyncio, "files": files, "file_workflow": file_workflow}
        printed = await _cells(ns, "hosts-run")
        await course.stop_all()
        await worker.stop_all()
        return printed

    lines = asyncio.run(scenario()).splitlines()
    assert len(lines) == 8
    for line in lines:  # "clip-3.mp4: downloaded on host-b, processed on host-b (53 bytes)"
        downloaded, processed = line.split("downloaded on ")[1].split(", processed on ")
        assert processed.split()[0] == downloaded, line
    assert not list((scratch / "hosts").glob("*/*.mp4")), "each host deleted its files"


def test_priority_is_strict_with_one_partition(make_course, scratch):
    reports = NB.module(scratch, "reports-module")

    async def scenario():
        course = await make_course("05")
        ns = {"course": course, "worker": worker, "asyncio": asyncio, "reports": reports, "runtime": runtime}
        ns.update(server=server, task_queues=task_queues, Priority=Priority)
        printed = await _cells(ns, "priority-server", "priority-run")
        await worker.stop_all()
        return printed

    assert asyncio.run(scenario()).splitlines()[-1] == "U U U U n n n n n n n n n n n n"


def test_fan_out_with_partial_failure_and_side_by_side_timeline(make_course, scratch):
    prices = NB.module(scratch, "prices-module")

    async def scenario():
        course = await make_course("05")
        await course.start_worker(workflows=[prices.BestPrice], activities=[prices.fetch_price])
        handle = await course.start_workflow(prices.BestPrice.run, "sku-1", show=False)
        result = await course.result(handle)
        hist = await handle.fetch_history()
        await course.stop_all()  # a worker left running would hang asyncio.run's cleanup
        return result, hist

    result, hist = asyncio.run(scenario())
    assert result == {
        "best": "online",
        "price": 18.75,
        "answered": 5,
        "failed": {"outlet": "outlet's API is down for maintenance"},
    }
    rows = {s.row for s in plots.spans(hist) if s.row.startswith("activity")}
    assert rows == {"activity fetch_price"} | {f"activity fetch_price #{k}" for k in range(2, 7)}


def test_children_keep_the_parent_small_and_parent_close_policies(make_course, scratch):
    notify = NB.module(scratch, "notify-module")
    policies = NB.module(scratch, "policies-module")

    async def scenario():
        course = await make_course("05")
        await course.start_worker(
            workflows=[
                notify.NotifyAll,
                notify.NotifyBatch,
                notify.NotifyAllInOne,
                policies.LeavesEarly,
                policies.LongJob,
            ],
            activities=[notify.send_notification],
        )
        parent = await course.start_workflow(notify.NotifyAll.run, 40, 10, show=False)
        in_one = await course.start_workflow(notify.NotifyAllInOne.run, 40, show=False)
        assert await course.result(parent) == 40 and await course.result(in_one) == 40
        sizes = await history_sizes.event_counts({"parent": parent, "one": in_one})
        ns = {"course": course, "policies": policies, "asyncio": asyncio}
        printed = await _cells(ns, "policies-run")
        await course.stop_all()
        return sizes, printed

    sizes, printed = asyncio.run(scenario())
    assert sizes["parent"] < sizes["one"] / 2, sizes
    assert "TERMINATE       → child TERMINATED" in printed
    assert "REQUEST_CANCEL  → child CANCELED" in printed
    assert "ABANDON         → child RUNNING" in printed


def test_batches_make_a_smaller_history_and_retry_as_a_whole(make_course, scratch):
    batching = NB.module(scratch, "batching-module")

    async def scenario():
        course = await make_course("05")
        ns = {"course": course, "batching": batching, "time": time, "history": history, "history_sizes": history_sizes}
        printed = await _cells(ns, "batching-run")
        await course.stop_all()
        return printed

    header, per_item, per_batch = asyncio.run(scenario()).splitlines()
    assert header.startswith("the same 40 items as")
    item_events, batch_events = int(per_item.split()[2]), int(per_batch.split()[4])
    assert batch_events * 3 < item_events, (per_item, per_batch)
    assert per_item.endswith(" 41") and per_batch.endswith(" 48"), "one failure: 1 item again, or its whole batch"


def test_continue_as_new_chain_and_the_history_limit(make_course, scratch):
    meter = NB.module(scratch, "meter-module")

    async def scenario():
        course = await make_course("05")
        dev = await worker.start_server(course, None, dynamic_config=history_sizes.LOWERED_LIMITS)
        client = await runtime.connect(dev.target)
        queue = course.new_task_queue("meter")
        await worker.start_process(
            course,
            workflows=["meter:MeterForever", "meter:MeterReader"],
            activities=["meter:read_meter"],
            task_queue=queue,
            target=dev.target,
        )
        forever = await client.start_workflow(meter.MeterForever.run, id="forever", task_queue=queue)
        with pytest.raises(WorkflowFailureError):
            await runtime.wait_result(client, forever, 10)
        ended = await history_sizes.chain(client, "forever", forever.first_execution_run_id)
        reader = await client.start_workflow(meter.MeterReader.run, 35, id="reader", task_queue=queue)
        final = await runtime.wait_result(client, reader, 10)
        chain = await history_sizes.chain(client, "reader", reader.first_execution_run_id)
        await worker.stop_all()
        return ended, final, chain

    ended, final, chain = asyncio.run(scenario())
    limit = history_sizes.LOWERED_LIMITS["limit.historyCount.error"]
    assert len(ended) == 1 and ended.last.status == "terminated" and "exceeds limit" in ended.last.ended_with
    assert ended.last.events <= limit + 1
    assert (final.readings, final.total) == (35, sum(n % 7 for n in range(35)))
    assert len(chain) > 2 and [r.status for r in chain.runs[:-1]] == ["continued as new"] * (len(chain) - 1)
    assert chain.last.status == "completed" and all(r.events < limit for r in chain.runs)
    assert chain.runs[1].started_with == chain.runs[0].ended_with, "each run starts with what the last handed on"
    assert "continued as new" in repr(chain) and "<table" in chain._repr_html_()


# --------------------------------------------------------------------------- 05.1 a queue for the GPU host

ROUTED = "file = await workflow.execute_activity(render, video, task_queue=gpu_queue, start_to_close_timeout=STEP)"
OPTIONS = 'GPU_WORKER = {"activities": [render], "max_concurrent_activities": 2}'
TUNER = """from temporalio.worker import WorkerTuner

GPU_WORKER = dict(
    activities=[render],
    tuner=WorkerTuner.create_fixed(workflow_slots=10, activity_slots=2, local_activity_slots=10, nexus_slots=10),
)"""
BY_NAME = (
    'file = await workflow.execute_activity("render", args=[video], task_queue=gpu_queue, '
    "schedule_to_close_timeout=STEP)"
)
FETCH = "await workflow.execute_activity(fetch_metadata, video, start_to_close_timeout=STEP)"
PUBLISH = "return await workflow.execute_activity(publish, file, start_to_close_timeout=STEP)"

GPU_VARIANTS = {
    "solution": (None, "passed", "every render ran on the GPU host's queue, at most 2 at a time"),
    "stub": ("stub", "not_done", "fill in GPU_WORKER: the activities the GPU host's worker runs"),
    "workflow-stub": (
        ("stub", _edit("GPU_WORKER = ...  # your answer (05.1)", OPTIONS)),
        "not_done",
        "render the video on the GPU host's task queue (gpu_queue)",
    ),
    "tuner": (_edit(OPTIONS, TUNER), "passed", "at most 2 at a time"),
    "by-name": (_edit(ROUTED, BY_NAME), "passed", "at most 2 at a time"),
    "no-queue": (
        _edit(ROUTED, ROUTED.replace("task_queue=gpu_queue, ", "")),
        "failed",
        "render was scheduled on the workflow's own task queue, where no worker runs it",
    ),
    "no-limit": (
        _edit(OPTIONS, 'GPU_WORKER = {"activities": [render]}'),
        "failed",
        "renders ran at once on the GPU host, which has room for 2: limit its worker with max_concurrent_activities=2",
    ),
    "one-slot": (
        _edit(OPTIONS, OPTIONS.replace(": 2}", ": 1}")),
        "failed",
        "the renders ran one at a time",
    ),
    "everything-on-gpu": (
        _edit(
            FETCH,
            FETCH.replace("video, ", "video, task_queue=gpu_queue, "),
            PUBLISH,
            PUBLISH.replace("file, ", "file, task_queue=gpu_queue, "),
            OPTIONS,
            OPTIONS.replace("[render]", "[fetch_metadata, render, publish]"),
        ),
        "failed",
        "fetch_metadata and publish went to the GPU host's queue too: only render needs the GPU",
    ),
}


@pytest.mark.parametrize("variant", list(GPU_VARIANTS))
def test_nb05_gpu_routing(variant, make_course, scratch, capsys):
    edit, status, hint = GPU_VARIANTS[variant]
    studio = NB.module(scratch, "studio-module")
    publishing = _module(scratch, "ex1-code", edit)

    async def scenario():
        await make_course("05")
        await nb05.check_gpu_routing(publishing, studio)

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("05.1", status), verdict
    assert hint in verdict.message, verdict.message


# --------------------------------------------------------------------------- 05.2 children


def _body(new: str):
    """Replace the solution region of ``PriceCatalog.run`` with ``new`` (indented like the region)."""

    def edit(source: str) -> str:
        head, rest = source.split("### BEGIN SOLUTION\n")
        _, tail = rest.split("        ### END SOLUTION")
        return head + "### BEGIN SOLUTION\n" + textwrap.indent(textwrap.dedent(new), " " * 8) + tail

    return edit


CATALOG_VARIANTS = {
    "solution": (None, "passed", "every item priced once, the children ran at the same time"),
    "stub": ("stub", "not_done", "price the items in child PriceChunk workflows (at most chunk_size items each"),
    "handles": (
        _body(
            """
            handles = []
            for start in range(0, n_items, chunk_size):
                items = list(range(start, min(start + chunk_size, n_items)))
                handles.append(await workflow.start_child_workflow(PriceChunk.run, items))
            total = 0
            for handle in handles:
                total += await handle
            return total
            """
        ),
        "passed",
        "the totals add up",
    ),
    "while-loop": (
        _body(
            """
            pending, start = [], 0
            while start < n_items:
                end = start + chunk_size if start + chunk_size < n_items else n_items
                child_id = f"{workflow.info().workflow_id}/{start}"
                pending.append(workflow.execute_child_workflow("PriceChunk", list(range(start, end)), id=child_id))
                start = end
            return sum(await asyncio.gather(*pending))
            """
        ),
        "passed",
        "the totals add up",
    ),
    "one-after-another": (
        _body(
            """
            total = 0
            for start in range(0, n_items, chunk_size):
                items = list(range(start, min(start + chunk_size, n_items)))
                total += await workflow.execute_child_workflow(PriceChunk.run, items)
            return total
            """
        ),
        "failed",
        "each child started only after the previous one had finished",
    ),
    "activities-in-parent": (
        lambda s: _body(
            """
            step = timedelta(seconds=5)
            prices = await asyncio.gather(
                *(workflow.execute_activity(price_item, i, start_to_close_timeout=step) for i in range(n_items))
            )
            return sum(prices)
            """
        )(s).replace(
            "    from catalog import PriceChunk",
            "    from datetime import timedelta\n\n    from catalog import PriceChunk, price_item",
        ),
        "failed",
        "the parent ran 40 activities itself",
    ),
    "remainder-dropped": (
        _body(
            """
            chunks = [list(range(k * chunk_size, (k + 1) * chunk_size)) for k in range(n_items // chunk_size)]
            return sum(await asyncio.gather(*(workflow.execute_child_workflow(PriceChunk.run, c) for c in chunks)))
            """
        ),
        "failed",
        "with 35 items in chunks of 15, items 30…34 were never priced",
    ),
    "child-per-item": (
        _body(
            """
            children = [workflow.execute_child_workflow(PriceChunk.run, [i]) for i in range(n_items)]
            return sum(await asyncio.gather(*children))
            """
        ),
        "failed",
        "40 children for 40 items in chunks of 10",
    ),
    "returns-list": (
        _edit("        return sum(totals)", "        return list(totals)"),
        "failed",
        "PriceCatalog returned a list of 4 chunk totals: return their sum",
    ),
}


@pytest.mark.parametrize("variant", list(CATALOG_VARIANTS))
def test_nb05_price_catalog(variant, make_course, scratch, capsys):
    edit, status, hint = CATALOG_VARIANTS[variant]
    catalog = NB.module(scratch, "catalog-module")
    pricing = _module(scratch, "ex2-code", edit)

    async def scenario():
        await make_course("05")
        await nb05.check_price_catalog(pricing.PriceCatalog, catalog)

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("05.2", status), verdict
    assert hint in verdict.message, verdict.message


# --------------------------------------------------------------------------- 05.3 continue as new

SUGGESTED = """            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(args=[end, totals])"""

TALLY_VARIANTS = {
    "solution": (None, "passed", "every run handed its cursor and totals to the next"),
    "stub": ("stub", "not_done", "when the server suggests it, continue as new"),
    "fixed-length": (
        _edit(
            SUGGESTED,
            """            if workflow.info().get_current_history_length() > 30:
                workflow.continue_as_new(args=[end, totals])""",
        ),
        "passed",
        "the totals are exact",
    ),
    "at-the-top": (
        lambda s: _edit(SUGGESTED, "")(s).replace(
            "        while totals.cursor < end:\n",
            """        while totals.cursor < end:
            if workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(args=[end, Totals(cursor=totals.cursor, counts=dict(totals.counts))])
""",
        ),
        "passed",
        "the totals are exact",
    ),
    "state-dropped": (
        _edit("continue_as_new(args=[end, totals])", "continue_as_new(args=[end])"),
        "failed",
        "each new run started from the first page again",
    ),
    "counts-dropped": (
        _edit("continue_as_new(args=[end, totals])", "continue_as_new(args=[end, Totals(cursor=totals.cursor)])"),
        "failed",
        "the counts of earlier runs were lost when it continued as new",
    ),
    "never": (
        _edit("is_continue_as_new_suggested()", "get_current_history_length() > 5000"),
        "failed",
        "the server terminated your workflow at its history limit (100 events",
    ),
}


@pytest.mark.parametrize("variant", list(TALLY_VARIANTS))
def test_nb05_tally(variant, make_course, scratch, capsys):
    edit, status, hint = TALLY_VARIANTS[variant]
    clicks = NB.module(scratch, "clicks-module")
    tally = _module(scratch, "ex3-code", edit)

    async def scenario():
        await make_course("05")
        started = time.monotonic()
        await nb05.check_tally(tally, clicks)
        assert time.monotonic() - started < 15

    verdict = run_check(scenario, capsys=capsys)
    assert (verdict.exercise, verdict.status) == ("05.3", status), verdict
    assert hint in verdict.message, verdict.message


def test_check_servers_are_gone_after_the_checks(make_course, scratch, capsys):
    """05.3 starts a server of its own; it must not outlive the check, passed or not."""
    clicks = NB.module(scratch, "clicks-module")
    tally = NB.module(scratch, "ex3-code", learner=True)
    before = set(worker._servers)

    async def scenario():
        await make_course("05")
        await nb05.check_tally(tally, clicks)

    run_check(scenario, capsys=capsys)
    assert all(not s.alive() for k, s in worker._servers.items() if k not in before)


def test_the_notebook_text_claims_no_measured_number():
    """Numbers the benchmark measures live only in its (nbval-ignored) output, never in the prose."""
    text = "\n".join(c.source for c in NB.cells.values() if c.cell_type == "markdown")
    for claim in ("wf/s", "× serial", "workflows per second:"):
        assert claim not in text
    for cell in NB.cells.values():
        tags = cell.metadata.get("tags", [])
        if "benchmark" in tags:
            assert "nbval-ignore-output" in tags and "demo" in tags, cell.id
