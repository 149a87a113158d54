"""Following a grading run from the grading command: the learners' workflows described about once a second (what
is graded, running, retrying; the server gone for a while), a line per graded notebook, and the grades collected
from each learner's workflow history as it completes. Nothing here grades: it watches and reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from helpers import errors, server
from helpers.grading.gradebook import Row, atomic_write
from helpers.grading.notebook import TAMPERED, NotebookResult, rows_for
from helpers.grading.plan import LearnerOutcome, LearnerPlan, learner_workflow_id
from helpers.grading.planning import Key, Planned
from helpers.grading.progress import Progress, Running, State
from helpers.grading.workflows import GRADE

POLL_S = 1.0
DESCRIBES_PER_POLL = 12  # learners' workflows described per poll (the server and this process stay light)
IDLE_S = 15.0  # with JOBS=0 and nothing running after this long, check that some worker is there at all
EXPIRED = (
    "its grades are no longer on the Temporal server (a finished workflow is kept for the namespace's retention "
    "period, one day on the dev server): grade this learner again"
)
SERVER_WAIT_S = 120.0  # a server that does not answer for this long: stop here (the same command resumes later)


class Stop(Exception):
    """Ctrl-C, SIGTERM or a server gone for good: stop grading here, keep what finished."""


class Follower:
    """The grades of a run as they come in, and the watch that brings them."""

    def __init__(self, planned: Planned, progress: Progress, where: server.Target, jobs: int) -> None:
        self.planned = planned
        self.progress = progress
        self.where = where
        self.jobs = jobs
        self.results: dict[Key, NotebookResult] = dict(planned.local)
        self.reported: set[Key] = set()
        self.failed: set[Key] = set()  # notebooks the run could not grade (error rows made by the command)
        self.warnings: list[str] = []
        self.started = time.monotonic()
        self.already = 0  # notebooks graded before this command attached to the run
        self.pending: dict[str, LearnerPlan] = {lp.key: lp for lp in planned.plan.learners}  # not collected yet
        self.cache: Path | None = None  # where collected learners are kept until the gradebook is written
        self.requests = asyncio.Semaphore(32)

    def _remember(self, lp: LearnerPlan) -> None:
        """Keep a collected learner's grades on disk: a command killed later need not read them again (and the
        server may have dropped them by then, after its retention period)."""
        if self.cache is None:
            return
        results = [
            asdict(self.results[(lp.learner, j.notebook)]) for j in lp.jobs if (lp.learner, j.notebook) in self.results
        ]
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write(self.cache / f"{lp.key}.json", json.dumps(results, ensure_ascii=False))

    def recall(self) -> int:
        """The learners an earlier command of this run collected already; returns how many."""
        if self.cache is None or not self.cache.is_dir():
            return 0
        found = 0
        for key in list(self.pending):
            try:
                data = json.loads((self.cache / f"{key}.json").read_text(encoding="utf-8"))
                results = [NotebookResult(**{**d, "rows": [Row(**r) for r in d["rows"]]}) for d in data]
            except (OSError, ValueError, TypeError, KeyError):
                continue
            for result in results:
                self._add((result.learner, result.notebook), result)
            self.pending.pop(key)
            found += 1
        return found

    async def _monitor(self, client: Any, handle: Any, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError, RPCStatusCode

        first = True
        offset = 0
        told_idle = False
        down_since: float | None = None
        while self.pending:
            if stop.is_set():
                raise Stop
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            pending = list(self.pending)  # round robin: each learner's workflow looked at every few seconds
            offset = offset % len(pending)
            keys = (pending[offset:] + pending[:offset])[: len(pending) if first else DESCRIBES_PER_POLL]
            offset += len(keys)
            try:
                states = await asyncio.gather(*(self._look_bounded(client, key) for key in keys))
                parent = await handle.describe()
            except Exception as err:
                # A server just restarted can say "not found" for a moment, before its state is loaded.
                lost = isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND
                if not (errors.is_unavailable(err) or lost):
                    raise
                if down_since is None:
                    down_since = time.monotonic()
                    self.progress.line(
                        f"The Temporal server at {self.where.address} does not answer; waiting for it (up to "
                        f"{SERVER_WAIT_S:.0f} s: the run and its grades are kept there)…"
                    )
                elif time.monotonic() - down_since > SERVER_WAIT_S:
                    raise Stop(f"the Temporal server at {self.where.address} stopped answering") from None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
                continue
            if down_since is not None:
                self.progress.line("The Temporal server answers again; grading goes on.")
                down_since = None
            if first:
                self.already = sum(1 for key in self.reported if key not in self.planned.local)
                if self.already:
                    self.progress.line(f"{self.already} notebook(s) of this run were graded already: not again.")
                first = False
            running = [r for rs, _, _ in states for r in rs]
            retrying = sum(n for _, n, _ in states)
            if not self.jobs and not running and not told_idle and self._elapsed() > IDLE_S:
                told_idle = await self._tell_if_nobody_grades(client)
            if parent.status not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
                name = parent.status.name.lower() if parent.status else "closed"
                for key in list(self.pending):
                    await self._collect(client, key, final=True, why=f"the grading run was {name}")
                break
            if parent.status == WorkflowExecutionStatus.COMPLETED:  # all its learners were graded: a missing one
                for key, (_, _, found) in zip(keys, states, strict=True):  # was kept for the retention period only
                    if not found:
                        await self._collect(client, key, final=True, why=EXPIRED)
            self.progress.update(
                State(len(self.planned.order), len(self.reported), len(self.failed), running, retrying, self._elapsed())
            )
            if self.pending:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)

    async def _tell_if_nobody_grades(self, client: Any) -> bool:
        """With no grading slots here: say so if no worker polls the run's queue (else the run just waits)."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        queue = self.planned.plan.task_queue
        request = DescribeTaskQueueRequest(
            namespace=self.where.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
        if (await client.workflow_service.describe_task_queue(request)).pollers:
            return False
        self.progress.line(
            f"No grading worker polls task queue {queue}: the run waits for one. Start `make grade-worker` (this "
            f"commit, TEMPORAL_ADDRESS={self.where.address}) on some machine, or grade here with JOBS=2."
        )
        return True

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    async def _look_bounded(self, client: Any, key: str) -> tuple[list[Running], int, bool]:
        async with self.requests:  # a first look at a class of hundreds: a few dozen requests at a time
            return await self._look(client, key)

    async def _look(self, client: Any, key: str) -> tuple[list[Running], int, bool]:
        """One learner's workflow: report its newly graded notebooks, collect it when it is done; returns what
        runs now, how many wait for another attempt, and whether the workflow was found."""
        from temporalio.api.enums.v1 import PendingActivityState
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError, RPCStatusCode

        lp = self.pending[key]
        handle = client.get_workflow_handle(learner_workflow_id(self.planned.plan.run_id, key))
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return [], 0, False  # not started yet (or long gone)
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            why = None if desc.status == WorkflowExecutionStatus.COMPLETED else f"its workflow ended ({desc.status})"
            await self._collect(client, key, final=True, why=why)
            return [], 0, True
        memo = await desc.memo()
        for nb, summary in memo.items():
            if (lp.learner, nb) not in self.reported and isinstance(summary, dict):
                self._report_summary((lp.learner, nb), summary)
        running, retrying = [], 0
        for pa in desc.raw_description.pending_activities:
            if pa.activity_type.name != GRADE:
                continue
            label = f"{lp.learner}/{pa.activity_id.removeprefix('grade-')}"
            if pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                details: dict[str, Any] = {}
                with contextlib.suppress(Exception):
                    decoded = await client.data_converter.decode(pa.heartbeat_details.payloads)
                    details = decoded[0] if decoded and isinstance(decoded[0], dict) else {}
                running.append(Running(label, details.get("cells", 0), details.get("of", 0), pa.attempt))
            elif pa.attempt > 1:
                retrying += 1
        return running, retrying, True

    async def _collect(self, client: Any, key: str, final: bool, why: str | None = None) -> None:
        """The grades a learner's workflow recorded (its grading activities' results), and error rows for what it
        could not grade. ``final``: the workflow is over (else: an interrupt, take what finished)."""
        from temporalio.api.enums.v1 import EventType
        from temporalio.client import WorkflowFailureError
        from temporalio.service import RPCError

        lp = self.pending.get(key)
        if lp is None:
            return
        handle = client.get_workflow_handle(learner_workflow_id(self.planned.plan.run_id, key))
        scheduled: dict[int, str] = {}
        with contextlib.suppress(RPCError):  # no history (yet): nothing finished
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    attrs = event.activity_task_completed_event_attributes
                    if scheduled.get(attrs.scheduled_event_id) != GRADE:
                        continue
                    (result,) = await client.data_converter.decode(attrs.result.payloads, [NotebookResult])
                    self._add((result.learner, result.notebook), result)
        if not final:
            return
        outcome = LearnerOutcome()
        if why is None:
            done = client.get_workflow_handle(handle.id, result_type=LearnerOutcome)
            try:
                outcome = await done.result()
            except (RPCError, WorkflowFailureError) as err:
                why = f"its workflow did not complete ({err})"
        for job in lp.jobs:
            k = (lp.learner, job.notebook)
            if k in self.results:
                continue
            message = outcome.failed.get(job.notebook) or why or "its workflow ended without grading it"
            ref = self.planned.refs[job.notebook]
            self.failed.add(k)
            self._add(k, NotebookResult(lp.learner, job.notebook, rows_for(lp.learner, ref, "error", f"not graded: "
                                                                                 f"{message}")))  # fmt: skip
        self.pending.pop(key, None)
        self._remember(lp)

    def _add(self, key: Key, result: NotebookResult) -> None:
        if key in self.results:
            return
        self.results[key] = result
        for w in result.warnings:
            self._warn(w, echo=False)
        if any(r.message.startswith(TAMPERED) for r in result.rows):
            print(f"WARNING: {result.learner}/{result.notebook}: {result.rows[0].message}", file=sys.stderr, flush=True)
        if key not in self.reported:
            self._report(key, result)

    def _report(self, key: Key, result: NotebookResult) -> None:
        tally = Counter(r.status for r in result.rows)
        got, most = sum(r.points for r in result.rows), sum(r.max_points for r in result.rows)
        self._line(key, got, most, tally, result.seconds)

    def _report_summary(self, key: Key, summary: dict[str, Any]) -> None:
        if "failed" in summary:
            self.reported.add(key)
            self.failed.add(key)
            self.progress.line(f"[{len(self.reported)}/{len(self.planned.order)}] {key[0]} {key[1]}: not graded "
                               f"({summary['failed']})")  # fmt: skip
            return
        tally = Counter(summary.get("statuses", []))
        self._line(key, summary.get("points", 0), summary.get("max", 0), tally, summary.get("seconds", 0.0))

    def _line(self, key: Key, got: int, most: int, tally: Counter[str], seconds: float) -> None:
        self.reported.add(key)
        statuses = ", ".join(f"{v} {k}" for k, v in sorted(tally.items()))
        self.progress.line(
            f"[{len(self.reported)}/{len(self.planned.order)}] {key[0]} {key[1]}: {got}/{most} ({statuses}) "
            f"{seconds:.1f} s"
        )

    def _warn(self, text: str, echo: bool = True) -> None:
        if text in self.warnings:
            return
        self.warnings.append(text)
        if echo:
            print(f"WARNING: {text}", file=sys.stderr, flush=True)
