"""What a task queue holds: activities that wait for a worker, and waiting (bounded) until a backlog is complete.

Priority only matters when tasks wait: :func:`wait_until_queued` waits until every run of a batch has scheduled its
activity and no worker has started it, so a demo can build a real backlog before a worker arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle

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
