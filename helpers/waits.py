"""Waiting for a run, bounded, and saying why it did not finish.

:func:`wait_result` is ``handle.result()`` with a bound and with watchers: a workflow task that keeps failing (the
workflow's code raised) or an activity that keeps failing ends the wait at once with the reason; a wait that
runs out says what the run still waits for (an activity still running, and for how long; no worker polling; a
timer); a server that stops answering says so (:class:`~helpers.errors.ServerNotAnswering`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowHandle

from helpers.errors import (
    ActivityKeepsFailing,
    CourseError,
    PendingActivity,
    WorkflowStuck,
    WorkflowTaskFailed,
    failure_text,
    hint_for,
    is_unavailable,
    server_not_answering,
)

# Causes that mean "the workflow code itself is broken": retrying cannot help, so say so at once.
# Others (e.g. UNHANDLED_COMMAND, RESET_STICKY_TASK_QUEUE) are routine and resolve themselves.
FATAL_TASK_CAUSES = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR,
}


WAIT_SCALE_VAR = "COURSE_WAIT_SCALE"


def wait_scale() -> float:
    """How much longer than stated every bounded wait of the course may take (1 for a learner). The grader sets
    it for the notebooks it runs several at a time on a busy machine: a right answer must not time out there."""
    try:
        return max(1.0, float(os.environ.get(WAIT_SCALE_VAR, "1")))
    except ValueError:
        return 1.0


async def wait_result(
    client: Client, handle: WorkflowHandle[Any, Any], timeout: float, *, activity_retries: int | None = None
) -> Any:
    """``handle.result()`` bounded by ``timeout``, failing fast on a broken workflow task.

    With ``activity_retries=n``, an activity that has failed ``n`` times also ends the wait (checks use this:
    Temporal retries a failing activity forever, and the learner wants the reason, not a timeout). A server that
    stops answering ends it with :class:`ServerNotAnswering`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * wait_scale()
    result_task = asyncio.ensure_future(handle.result())
    watchers = {asyncio.ensure_future(_first_fatal_task_failure(handle))}
    if activity_retries is not None:
        watchers.add(asyncio.ensure_future(_first_failing_activity(handle, activity_retries)))
    try:
        pending = {result_task, *watchers}
        while not result_task.done() and (remaining := deadline - loop.time()) > 0:
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for watcher in done & watchers:
                error = None if watcher.exception() else watcher.result()
                if error is not None and not result_task.done():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.terminate(reason=f"course: {error.failure}"), 5)
                    raise error
            if not pending - watchers:
                break
        described = None if result_task.done() else await _describe(handle)
        if isinstance(described, WorkflowExecutionDescription) and described.status != WorkflowExecutionStatus.RUNNING:
            # it ended just as the time ran out (a busy machine): its result, not "did not finish"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(result_task), 5)
        if result_task.done():
            if (err := result_task.exception()) is not None and is_unavailable(err):
                raise server_not_answering(_address(client))
            return result_task.result()
        raise await _stuck(client, handle, timeout, described)
    finally:
        for task in (result_task, *watchers):
            task.cancel()


async def _first_fatal_task_failure(handle: WorkflowHandle[Any, Any]) -> WorkflowTaskFailed | None:
    """Follow the history; the first fatal workflow task failure as an error to raise, or None."""
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause in FATAL_TASK_CAUSES:
                failure = failure_text(attrs.failure)
                hint = hint_for(failure)
                return WorkflowTaskFailed(
                    f"Workflow {handle.id} cannot make progress: its code raised {failure}\n"
                    + (f"Hint: {hint}\n" if hint else "")
                    + "Temporal retries a failing workflow task forever, so the course terminated this run. "
                    "Fix the code, re-run its cell, restart the worker and try again.",
                    failure=failure,
                    workflow_id=handle.id,
                )
    return None


async def _first_failing_activity(handle: WorkflowHandle[Any, Any], attempts: int) -> ActivityKeepsFailing:
    """Poll the run's pending activities until one has failed ``attempts`` times."""
    while True:
        await asyncio.sleep(0.3)
        with contextlib.suppress(Exception):
            desc = await asyncio.wait_for(handle.describe(), 3)
            for act in desc.raw_description.pending_activities:
                if act.attempt > attempts and act.HasField("last_failure") and act.last_failure.message:
                    failure = failure_text(act.last_failure)
                    hint = hint_for(failure)
                    return ActivityKeepsFailing(
                        f"Activity {act.activity_type.name} of workflow {handle.id} keeps failing: {failure}"
                        + (f"\nHint: {hint}" if hint else ""),
                        activity=act.activity_type.name,
                        failure=failure,
                        workflow_id=handle.id,
                    )


def pending_activities(description: Any) -> tuple[PendingActivity, ...]:
    """What a ``describe()`` says the run is waiting for, activity by activity."""
    out = []
    now = time.time()
    for act in description.raw_description.pending_activities:
        running = act.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        started = act.last_started_time.ToSeconds() if act.HasField("last_started_time") else None
        failure = failure_text(act.last_failure) if act.HasField("last_failure") and act.last_failure.message else None
        out.append(
            PendingActivity(
                name=act.activity_type.name,
                attempt=act.attempt,
                running=running,
                running_for=max(0.0, now - started) if running and started else None,
                last_failure=failure,
            )
        )
    return tuple(out)


async def _describe(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | Exception:
    """What the server says of the run within 3 s, or why it said nothing."""
    try:
        return await asyncio.wait_for(handle.describe(), 3)
    except Exception as err:
        return err


async def _stuck(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    timeout: float,
    described: WorkflowExecutionDescription | Exception | None,
) -> CourseError:
    """Why a run did not finish in time, as the error to raise: what it waits for, and whose move it is."""
    lines = [f"Workflow {handle.id} did not finish within {timeout:g} s."]
    if not isinstance(described, WorkflowExecutionDescription):
        if described is not None and is_unavailable(described):
            return server_not_answering(_address(client))
        return WorkflowStuck("\n".join([*lines, "Hint: open it in the Temporal UI to see what it is waiting for."]))
    desc = described
    if desc.status != WorkflowExecutionStatus.RUNNING:
        lines.append(f"Its status is {desc.status.name if desc.status else 'unknown'}.")
    pending = pending_activities(desc)
    lines += [p.describe() + "." for p in pending]
    no_worker = False
    with contextlib.suppress(Exception):
        no_worker = await asyncio.wait_for(_pollers(client, desc.task_queue), 3) == 0
    if no_worker:
        lines.append(
            f"Hint: no worker is polling task queue {desc.task_queue!r}: start one (course.start_worker(...))."
        )
    elif any(p.running and p.last_failure and "StartToClose timeout" in p.last_failure for p in pending):
        lines.append(
            "Hint: its attempts keep running out of time (start_to_close_timeout) and are retried: does the activity "
            "wait for something that never comes (an endless loop, an await that never finishes)?"
        )
    elif any(p.running for p in pending):
        lines.append(
            "Hint: an activity that never returns keeps its workflow waiting: an endless loop, or an await that "
            "never finishes? Give it a start_to_close_timeout so Temporal notices."
        )
    elif not pending:
        lines.append("Hint: it may be waiting on a timer, a signal or a child; check its history in the UI.")
    return WorkflowStuck("\n".join(lines), pending=pending, no_worker=no_worker)


async def _pollers(client: Client, task_queue: str) -> int:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(resp.pollers)


def _address(client: Client) -> str:
    return client.service_client.config.target_host


__all__ = ["FATAL_TASK_CAUSES", "WAIT_SCALE_VAR", "pending_activities", "wait_result", "wait_scale"]
