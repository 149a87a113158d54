"""Reference workflows that drive a learner's activity (notebook 03's checks run these, not the learner's workflow).

Each calls the activity *by name*, so it works with whatever the learner called the function, and reports what
happened instead of failing: the check then reads the outcome, the history and the outside world (the provider's
database, the storage log). Only ``temporalio``, the standard library and :mod:`helpers.failures` are imported:
the workflow sandbox re-imports this module for every run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from helpers import failures

# Errors that no retry can fix: an unfinished exercise, a key the provider refuses.
NEVER_RETRY = ["NotImplementedError", "IdempotencyKeyReused"]


def outcome_of(err: ActivityError) -> dict[str, Any]:
    """What the workflow received, as plain data the check can read."""
    cause = err.cause or err  # what the activity raised (its own cause, if any, is one level deeper)
    return {
        "error": failures.describe(err),
        "retry_state": failures.retry_state(err),
        "type": cause.type if isinstance(cause, ApplicationError) else type(cause).__name__,
        "message": getattr(cause, "message", str(cause)),
    }


@workflow.defn
class ChargeHarness:
    """Charge each ``(order_id, amount_cents)`` in turn with the learner's charge activity (03.1)."""

    @workflow.run
    async def run(self, activity_name: str, charges: list[list[Any]]) -> list[dict[str, Any]]:
        outcomes = []
        for order_id, amount in charges:
            try:
                charge_id = await workflow.execute_activity(
                    activity_name,
                    args=[order_id, amount],
                    start_to_close_timeout=timedelta(seconds=5),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(milliseconds=100),
                        maximum_attempts=4,
                        non_retryable_error_types=NEVER_RETRY,
                    ),
                )
                outcomes.append({"order_id": order_id, "result": charge_id})
            except ActivityError as err:
                outcomes.append({"order_id": order_id, **outcome_of(err)})
        return outcomes


def policy_to_data(policy: RetryPolicy) -> dict[str, Any]:
    """A RetryPolicy as JSON-friendly data (a workflow argument)."""
    return {
        "initial_interval": policy.initial_interval.total_seconds(),
        "backoff_coefficient": policy.backoff_coefficient,
        "maximum_interval": policy.maximum_interval.total_seconds() if policy.maximum_interval else None,
        "maximum_attempts": policy.maximum_attempts,
        "non_retryable_error_types": list(policy.non_retryable_error_types or []),
    }


def policy_from_data(data: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=data["initial_interval"]),
        backoff_coefficient=data["backoff_coefficient"],
        maximum_interval=timedelta(seconds=data["maximum_interval"]) if data["maximum_interval"] else None,
        maximum_attempts=data["maximum_attempts"],
        non_retryable_error_types=[*data["non_retryable_error_types"], "NotImplementedError"],
    )


@workflow.defn
class AuthorizeHarness:
    """Authorize one card with the learner's activity and retry policy (03.3); report success or the error."""

    @workflow.run
    async def run(self, activity_name: str, card: str, amount_cents: int, policy: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await workflow.execute_activity(
                activity_name,
                args=[card, amount_cents],
                start_to_close_timeout=timedelta(seconds=5),
                retry_policy=policy_from_data(policy),
            )
            return {"result": result}
        except ActivityError as err:
            return outcome_of(err)


@workflow.defn
class ChecksumHarness:
    """Run the learner's long checksum activity on ``activity_queue`` (03.4), where a worker can be killed."""

    @workflow.run
    async def run(self, activity_name: str, activity_queue: str, file: str, chunks: int) -> dict[str, Any]:
        try:
            result = await workflow.execute_activity(
                activity_name,
                args=[file, chunks],
                task_queue=activity_queue,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=1),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=100),
                    maximum_attempts=3,
                    non_retryable_error_types=["NotImplementedError"],
                ),
            )
            return {"result": result}
        except ActivityError as err:
            return outcome_of(err)
