"""A reference workflow that runs one activity by name, the way a saga runs a compensation: its own timeout, and
retried (backoff capped at 1 s) until it succeeds. Checks use it to run a learner's activity for real, on a worker,
so that a lost answer or a crash makes Temporal retry it exactly as it would in production.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_interval=timedelta(seconds=1))


@workflow.defn
class ActivityProbe:
    """``run(activity name, its arguments, start_to_close seconds)`` → the activity's result."""

    @workflow.run
    async def run(self, activity: str, args: list[Any], start_to_close_s: float) -> Any:
        return await workflow.execute_activity(
            activity, args=args, start_to_close_timeout=timedelta(seconds=start_to_close_s), retry_policy=RETRY
        )


__all__ = ["RETRY", "ActivityProbe"]
