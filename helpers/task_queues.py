"""What a task queue holds and who polls it, and waiting (bounded) for either.

Priority only matters when tasks wait: :func:`wait_until_queued` waits until every run of a batch has scheduled its
activity and no worker has started it, so a demo can build a real backlog before a worker arrives.
:func:`wait_for_pollers` waits until a number of workers poll a queue (worker processes start in the background).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle

from helpers.errors import CourseError

POLL_S = 0.1


async def _queued(handle: WorkflowHandle[Any, Any]) -> bool:
    desc = await asyncio.wait_for(handle.describe(), 5)
    return any(
        act.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
        for act in desc.raw_description.pending_activities
    )


async def wait_until_queued(handles: Sequence[WorkflowHandle[Any, Any]], *, timeout: float = 10.0) -> None:
    """Return once every run has an activity scheduled and not started (waiting for a worker)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting = list(handles)
    while waiting:
        queued = await asyncio.gather(*(_queued(h) for h in waiting))
        waiting = [h for h, q in zip(waiting, queued, strict=True) if not q]
        if waiting and loop.time() >= deadline:
            raise CourseError(
                f"{len(waiting)} of {len(handles)} runs had not queued an activity after {timeout:g} s: "
                "is a worker running their workflow code?"
            )
        if waiting:
            await asyncio.sleep(POLL_S)


async def pollers(client: Client, queue: str, *, activities: bool = True) -> int:
    """How many workers poll ``queue`` for activity tasks (``activities=False``: for workflow tasks)."""
    kind = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY if activities else TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
    )
    response = await asyncio.wait_for(client.workflow_service.describe_task_queue(request), 5)
    return len({p.identity for p in response.pollers})


async def wait_for_pollers(
    client: Client, queue: str, count: int, *, activities: bool = True, timeout: float = 15.0
) -> None:
    """Return once at least ``count`` workers poll ``queue``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await pollers(client, queue, activities=activities)) < count:
        if loop.time() >= deadline:
            raise CourseError(f"Only {seen} of {count} workers poll task queue {queue!r} after {timeout:g} s.")
        await asyncio.sleep(POLL_S)
