"""Checks for notebook 05 (scaling): route the heavy activity to its own queue, fan out over children, continue as new.

Every check runs the learner's code for real and judges what happened, never the code's shape: which task queue each
activity was scheduled on and how many renders ran at once (05.1), the children the parent started, their inputs and
how they overlapped, and the parent's own history (05.2), the chain of runs on a server with lowered history limits
and the totals handed from run to run (05.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import TerminatedError
from temporalio.worker import Worker

from helpers import errors, history_sizes, runtime, server, worker
from helpers.checks import Wrong, exercise, require, worker_for
from helpers.history import payload_values

E = EventType

# --------------------------------------------------------------------------- 05.1 a queue for the GPU host

GPU_SLOTS = 2
VIDEOS = [f"video-{i}" for i in range(6)]


def _activity_name(fn: Any) -> str:
    defn = getattr(fn, "__temporal_activity_definition", None)
    return defn.name if defn is not None else getattr(fn, "__name__", str(fn))


def _scheduled_on(hist: Any) -> dict[str, set[str]]:
    """``{activity name: task queues it was scheduled on}`` in one history."""
    out: dict[str, set[str]] = {}
    for e in hist.events:
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            out.setdefault(a.activity_type.name, set()).add(a.task_queue.name)
    return out


@exercise("05.1")
async def check_gpu_routing(publishing: ModuleType, studio: ModuleType) -> str:
    course = runtime.current()
    options = require(
        getattr(publishing, "GPU_WORKER", ...),
        "fill in GPU_WORKER: the activities the GPU host's worker runs, and how many at a time.",
    )
    if not isinstance(options, Mapping):
        raise Wrong("GPU_WORKER should be a dict of worker options, e.g. {'activities': [...], ...}.")
    names = [_activity_name(a) for a in options.get("activities", ())]
    if "render" not in names:
        raise Wrong("the GPU host's worker must run render: list it in GPU_WORKER['activities'].")
    main = course.new_task_queue(f"studio-{next(course._ids)}")
    gpu = course.new_task_queue(f"gpu-{next(course._ids)}")
    studio.gpu.reset()
    await course.start_worker(
        workflows=[publishing.PublishVideo], activities=[studio.fetch_metadata, studio.publish], task_queue=main
    )
    try:
        await course.start_worker(task_queue=gpu, **options)
        handles = [
            await course.start_workflow(
                publishing.PublishVideo.run, video, gpu, task_queue=main, id_prefix="check-05-1", show=False
            )
            for video in VIDEOS
        ]
        outcomes = await asyncio.gather(
            *(course.result(h, 15, activity_retries=1) for h in handles), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, errors.ActivityKeepsFailing) and "not registered" in outcome.failure:
                raise Wrong(_unregistered(outcome.activity))
        if failed := [o for o in outcomes if isinstance(o, BaseException)]:
            raise failed[0]
        hists = [await h.fetch_history() for h in handles]
    finally:
        await course.stop_worker(gpu)
        await course.stop_worker(main)
    queues: dict[str, set[str]] = {}
    for hist in hists:
        for name, qs in _scheduled_on(hist).items():
            queues.setdefault(name, set()).update(qs)
    if queues.get("render") != {gpu}:
        raise Wrong("render was not scheduled on gpu_queue: pass task_queue=gpu_queue to its execute_activity.")
    if elsewhere := sorted(n for n, qs in queues.items() if n != "render" and gpu in qs):
        raise Wrong(
            f"{' and '.join(elsewhere)} went to the GPU host's queue too: only render needs the GPU; the other "
            "steps stay on the workflow's own queue (no task_queue=)."
        )
    if (expected := [f"published {v}.mp4" for v in VIDEOS]) != outcomes:
        raise Wrong(f"PublishVideo should return what publish returns, e.g. {expected[0]!r}; got {outcomes[0]!r}.")
    peak = studio.gpu.peak
    if peak > GPU_SLOTS:
        raise Wrong(
            f"{peak} renders ran at once on the GPU host, which has room for {GPU_SLOTS}: limit its worker with "
            f"max_concurrent_activities={GPU_SLOTS}."
        )
    if peak < GPU_SLOTS:
        raise Wrong(
            f"the renders ran one at a time, with {len(VIDEOS)} videos waiting: the GPU host has room for "
            f"{GPU_SLOTS} (max_concurrent_activities={GPU_SLOTS})."
        )
    return (
        f"{len(VIDEOS)} videos published; every render ran on the GPU host's queue, at most {GPU_SLOTS} at a time, "
        "and the other steps stayed on the workflow's queue."
    )


def _unregistered(activity: str) -> str:
    if activity == "render":
        return (
            "render was scheduled on the workflow's own task queue, where no worker runs it: send it to the GPU "
            "host with task_queue=gpu_queue in its workflow.execute_activity(...)."
        )
    return (
        f"{activity} was sent to a queue whose worker does not run it: only render goes to gpu_queue; the other "
        "steps stay on the workflow's own queue."
    )


# --------------------------------------------------------------------------- 05.2 fan out over children

CATALOG_RUNS = [(40, 10), (35, 15)]  # (items, chunk size): the second has a shorter last chunk


def _children(hist: Any) -> list[dict[str, Any]]:
    """The children a parent started, in order: input items, and when they were initiated and completed."""
    events = list(hist.events)
    t0 = events[0].event_time.ToDatetime()

    def t(e: Any) -> float:
        return (e.event_time.ToDatetime() - t0).total_seconds()

    children: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.event_type == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            a = e.start_child_workflow_execution_initiated_event_attributes
            items = payload_values(a.input)
            children[e.event_id] = {
                "type": a.workflow_type.name,
                "items": items[0] if items else None,
                "initiated": t(e),
                "initiated_id": e.event_id,
                "closed_id": None,
            }
        elif e.event_type in (
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
        ):
            a = (
                e.child_workflow_execution_completed_event_attributes
                if e.event_type == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED
                else e.child_workflow_execution_failed_event_attributes
            )
            if a.initiated_event_id in children:
                children[a.initiated_event_id]["closed_id"] = e.event_id
    return list(children.values())


def _overlapped(children: list[dict[str, Any]]) -> bool:
    """Did a child start before an earlier one had finished? (Never, when each is awaited before the next.)"""
    return any(
        later["initiated_id"] < (earlier["closed_id"] or math.inf)
        for i, earlier in enumerate(children)
        for later in children[i + 1 :]
    )


def _ranges(items: list[int]) -> str:
    runs: list[str] = []
    for i in sorted(items):
        if runs and runs[-1].split("…")[-1] == str(i - 1):
            runs[-1] = f"{runs[-1].split('…')[0]}…{i}"
        else:
            runs.append(str(i))
    return ", ".join(runs[:3]) + (" …" if len(runs) > 3 else "")


@exercise("05.2")
async def check_price_catalog(parent: type, catalog: ModuleType) -> str:
    course = runtime.current()
    async with worker_for([parent, catalog.PriceChunk], [catalog.price_item], purpose="catalog") as queue:
        for n, size in CATALOG_RUNS:
            handle = await course.start_workflow(  # result_type: take what it returns as it is, to judge it
                parent.run, n, size, task_queue=queue, id_prefix="check-05-2", show=False, result_type=Any
            )
            total = await course.result(handle, 15, activity_retries=2)
            _judge_catalog(list((await handle.fetch_history()).events), total, n, size, catalog)
    return (
        f"{' and '.join(f'{n} items in {math.ceil(n / size)} children of at most {size}' for n, size in CATALOG_RUNS)}"
        ": every item priced once, the children ran at the same time, the totals add up, and the parent ran no "
        "activity itself."
    )


def _judge_catalog(events: list[Any], total: Any, n: int, size: int, catalog: ModuleType) -> None:
    hist = type("H", (), {"events": events})
    own = sum(1 for e in events if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    children = _children(hist)
    if own:
        raise Wrong(
            f"the parent ran {own} activities itself, so its history grows with every item: let child PriceChunk "
            "workflows price the items (workflow.execute_child_workflow)."
        )
    if not children:
        raise Wrong("the parent started no child workflow: price each chunk in a child PriceChunk workflow.")
    if other := sorted({c["type"] for c in children} - {"PriceChunk"}):
        raise Wrong(f"the parent started {other[0]} children; the chunks are priced by PriceChunk.")
    priced: list[int] = []
    for c in children:
        if not isinstance(c["items"], list):
            raise Wrong(f"each PriceChunk child takes a list of items; one got {c['items']!r}.")
        priced += c["items"]
    if missing := sorted(set(range(n)) - set(priced)):
        raise Wrong(f"with {n} items in chunks of {size}, items {_ranges(missing)} were never priced.")
    if twice := sorted({i for i in priced if priced.count(i) > 1}):
        raise Wrong(f"items {_ranges(twice)} were priced more than once: every item goes into exactly one chunk.")
    if extra := sorted(set(priced) - set(range(n))):
        raise Wrong(f"items {_ranges(extra)} are not in the catalog (items 0 … {n - 1}).")
    if (big := max(len(c["items"]) for c in children)) > size:
        raise Wrong(f"a child got {big} items; a chunk holds at most chunk_size ({size}).")
    if len(children) > math.ceil(n / size):
        raise Wrong(
            f"{len(children)} children for {n} items in chunks of {size}: fill each chunk (at most {size} items), "
            f"which makes {math.ceil(n / size)} children."
        )
    if len(children) > 1 and not _overlapped(children):
        raise Wrong(
            "each child started only after the previous one had finished: start them all, then wait for all of "
            "them (asyncio.gather), so the chunks are priced at the same time."
        )
    expected = sum(catalog.price_of(i) for i in range(n))
    if isinstance(total, list):
        raise Wrong(f"PriceCatalog returned a list of {len(total)} chunk totals: return their sum, one number.")
    if total != expected:
        raise Wrong(f"PriceCatalog returned {total!r} for {n} items; their prices add up to {expected}.")


# --------------------------------------------------------------------------- 05.3 continue as new

STREAM_END = 100  # events in the clickstream: 20 pages, over the lowered limit without continue-as-new
MAX_RUNS = 12  # far more runs than STREAM_END needs: the chain is not getting anywhere
TALLY_TIMEOUT_S = 15.0
FATAL = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR,
}


class _Endless(Exception):
    pass


async def _watch_chain(client: Client, handle: WorkflowHandle[Any, Any]) -> None:
    """Raise as soon as the latest run's workflow task fails for good, or the chain grows without end."""
    first = handle.first_execution_run_id or ""
    while True:
        await asyncio.sleep(0.3)
        try:
            chain = await history_sizes.chain(client, handle.id, first, max_runs=MAX_RUNS + 1)
            last = await asyncio.wait_for(
                client.get_workflow_handle(handle.id, run_id=chain.last.run_id).fetch_history(), 3
            )
        except Exception:
            continue  # a run that is just being created; look again
        if len(chain) > MAX_RUNS:
            raise _Endless()
        for e in last.events:
            if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs = e.workflow_task_failed_event_attributes
                if attrs.cause in FATAL:
                    failure = errors.failure_text(attrs.failure)
                    raise errors.WorkflowTaskFailed(failure, failure=failure, workflow_id=handle.id)


async def _run_tally(client: Client, tally: ModuleType, queue: str, workflow_id: str) -> tuple[Any, Any]:
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        tally.Tally.run,
        STREAM_END,
        id=workflow_id,
        task_queue=queue,
        execution_timeout=runtime.EXECUTION_TIMEOUT,
        result_type=Any,  # take what it returns as it is, to judge it
    )
    result = asyncio.ensure_future(handle.result())
    watch = asyncio.ensure_future(_watch_chain(client, handle))
    try:
        done, _ = await asyncio.wait({result, watch}, timeout=TALLY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if result in done:
            return handle, result.result()
        if watch in done:
            watch.result()  # raises what it found
        raise errors.WorkflowStuck(f"Tally did not finish within {TALLY_TIMEOUT_S:g} s.")
    except (errors.WorkflowTaskFailed, _Endless, errors.WorkflowStuck):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.get_workflow_handle(workflow_id).terminate(reason="course check"), 5)
        raise
    finally:
        result.cancel()
        watch.cancel()


def _counts(result: Any) -> tuple[int | None, dict[str, int] | None]:
    if isinstance(result, Mapping):
        return result.get("cursor"), result.get("counts")
    return getattr(result, "cursor", None), getattr(result, "counts", None)


@exercise("05.3")
async def check_tally(tally: ModuleType, clicks: ModuleType) -> str:
    course = runtime.current()
    limits = history_sizes.LOWERED_LIMITS
    limit = limits["limit.historyCount.error"]
    dev = await worker.start_server(course, None, dynamic_config=limits)
    try:
        client = await server.connect(dev.target, 10.0)
        queue = course.new_task_queue(f"tally-{next(course._ids)}")
        workflow_id = course.new_id("check-05-3")
        async with Worker(client, task_queue=queue, workflows=[tally.Tally], activities=[clicks.fetch_page]):
            try:
                handle, result = await _run_tally(client, tally, queue, workflow_id)
            except _Endless:
                raise Wrong(
                    f"your workflow kept continuing as new (over {MAX_RUNS} runs for {STREAM_END} events) without "
                    "getting to the end: each new run started from the first page again. Hand the totals (with "
                    "the cursor) to the next run: workflow.continue_as_new(args=[end, totals])."
                ) from None
            except WorkflowFailureError as err:
                if isinstance(err.cause, TerminatedError) and "exceeds limit" in str(err.cause):
                    raise Wrong(
                        f"the server terminated your workflow at its history limit ({limit} events on this check's "
                        "server) before it continued as new: check workflow.info().is_continue_as_new_suggested() "
                        "in the loop, and continue as new when it says so."
                    ) from None
                raise
            chain = await history_sizes.chain(client, workflow_id, handle.first_execution_run_id)
    finally:
        await asyncio.to_thread(dev.stop)
    cursor, counts = _counts(result)
    expected = clicks.expected_counts(STREAM_END)
    if len(chain) < 2:
        raise Wrong(
            f"Tally finished in one run of {chain.last.events} events: it never continued as new (the check's "
            f"server suggests it from {limits['limit.historyCount.suggestContinueAsNew']} events on)."
        )
    if counts == expected and cursor == STREAM_END:
        return (
            f"{STREAM_END} events counted over {len(chain)} runs, each below the history limit; every run handed "
            "its cursor and totals to the next, and the totals are exact."
        )
    got = sum(counts.values()) if isinstance(counts, Mapping) else None
    if got is not None and got < STREAM_END:
        raise Wrong(
            f"the final totals count {got} of {STREAM_END} events: the counts of earlier runs were lost when it "
            "continued as new. Hand the totals on: workflow.continue_as_new(args=[end, totals])."
        )
    raise Wrong(
        f"the final totals are {counts!r}, cursor {cursor!r}; counting all {STREAM_END} events gives {expected}."
    )
