"""The grading run as Temporal workflows: one per run, a child per learner, an activity per (learner, notebook).

``GradingRun`` starts one ``GradeLearner`` child per learner (at most ``CHILDREN_PER_RUN`` per run of itself,
then it continues as new), so no history grows with the class. Each child asks the grading command for the
learner's notebooks one at a time (``course_grade_fetch`` on the command's own queue: the files never need to be
on a worker's disk) and hands each to a grading activity (``course_grade_notebook``) on the queue of the course's
fingerprint, as soon as it arrives. The notebook payload is passed through untouched (``RawValue``): the workflow
never decodes it, and one workflow task never schedules more than one of them.

Grading a notebook is idempotent, so it may be retried: a worker that dies is noticed by its missing heartbeat
and the notebook is graded again elsewhere. A learner's fault is never an activity failure (it is a grade row);
what does fail (a payload too large for this server, a notebook that kept killing its workers) is reported in the
child's result, and the gradebook shows it as an ``error`` row.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from helpers.grading.plan import (
        FETCH_TIMEOUT,
        GRADE_ATTEMPTS,
        HEARTBEAT_TIMEOUT,
        FetchRequest,
        LearnerOutcome,
        LearnerRun,
        NotebookJob,
        RunPlan,
        learner_workflow_id,
    )

FETCH = "course_grade_fetch"
GRADE = "course_grade_notebook"
TOO_LARGE = "PayloadsTooLarge"  # the SDK's error type for a payload over the server's limit


@workflow.defn(name="CourseGradingRun")
class GradingRun:
    @workflow.run
    async def run(self, plan: RunPlan) -> int:
        batch, rest = plan.learners[: plan.children_per_run], plan.learners[plan.children_per_run :]
        children = [
            await workflow.start_child_workflow(
                GradeLearner.run,
                LearnerRun(plan.run_id, plan.task_queue, plan.files_queue, plan.limits, learner),
                id=learner_workflow_id(plan.run_id, learner.key),
                task_queue=plan.task_queue,
            )
            for learner in batch
        ]
        await asyncio.gather(*children)
        if rest:
            workflow.continue_as_new(dataclasses.replace(plan, learners=rest))
        return len(batch)


@workflow.defn(name="CourseGradeLearner")
class GradeLearner:
    def __init__(self) -> None:
        self.outcome = LearnerOutcome()

    @workflow.run
    async def run(self, job: LearnerRun) -> LearnerOutcome:
        grading = []
        for nb in job.learner.jobs:  # one at a time: each notebook arrives in a workflow task of its own
            submission = await self._fetch(job, nb)
            if submission is not None:
                grading.append(asyncio.ensure_future(self._grade(job, nb, submission)))
        await asyncio.gather(*grading)
        return self.outcome

    async def _fetch(self, job: LearnerRun, nb: NotebookJob) -> RawValue | None:
        try:
            return await workflow.execute_activity(
                FETCH,
                FetchRequest(job.run_id, job.learner.learner, nb.notebook, nb.digest),
                task_queue=job.files_queue,
                activity_id=f"fetch-{nb.notebook}",
                start_to_close_timeout=FETCH_TIMEOUT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10), non_retryable_error_types=[TOO_LARGE]),
                result_type=RawValue,
            )
        except ActivityError as err:
            self._failed(nb, err, f"the notebook ({nb.size / 1000:.0f} kB without its outputs)")
            return None

    async def _grade(self, job: LearnerRun, nb: NotebookJob, submission: RawValue) -> None:
        try:
            result = await workflow.execute_activity(
                GRADE,
                submission,
                task_queue=job.task_queue,
                activity_id=f"grade-{nb.notebook}",
                start_to_close_timeout=job.limits.grade_timeout,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=10),
                    maximum_attempts=GRADE_ATTEMPTS,
                    non_retryable_error_types=[TOO_LARGE],
                ),
            )
        except ActivityError as err:
            self._failed(nb, err, "its grade (what grading it reported)")
            return
        rows = result.get("rows", []) if isinstance(result, dict) else []
        workflow.upsert_memo(
            {
                nb.notebook: {
                    "points": sum(r.get("points", 0) for r in rows),
                    "max": sum(r.get("max_points", 0) for r in rows),
                    "statuses": sorted(r.get("status", "") for r in rows),
                    "seconds": result.get("seconds", 0),
                }
            }
        )

    def _failed(self, nb: NotebookJob, err: ActivityError, what: str) -> None:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == TOO_LARGE:
            why = (
                f"{what} is larger than this Temporal server accepts in one payload (its limit.blobSize.error); "
                "grade it on a server with the default limit (2 MB)"
            )
        elif isinstance(cause, ActivityTimeout):
            why = (
                f"grading it was cut off {GRADE_ATTEMPTS} times: the worker running it stopped heartbeating (killed, "
                "or its machine stopped). If that keeps happening for this notebook only, its code may be killing "
                "the grader: look at it"
            )
        else:
            why = f"grading it failed {GRADE_ATTEMPTS} times; the last time: {cause or err}"
        self.outcome.failed[nb.notebook] = why
        workflow.upsert_memo({nb.notebook: {"failed": why}})
