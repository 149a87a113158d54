"""A grading worker: grades the notebooks grading runs hand it, on the task queue of its course files' fingerprint.

``make grade`` runs one in its own process (``JOBS`` slots); ``make grade-worker`` (``python -m
helpers.grading.worker``) runs one on any other machine pointed at the same server (``TEMPORAL_ADDRESS``): it joins
every grading run of the same course files there, and no other. Grading a notebook is idempotent, so a notebook
whose worker dies is simply graded again by another one.

Per process: the course snapshot (taken once, at start), the child subreaper and process sweep, and the watch on
the course and grading packages (a change noted on every grade made after it).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from helpers import server
from helpers.grading import isolation
from helpers.grading.course_files import Course
from helpers.grading.notebook import NotebookResult, Settings, grade_submission, rows_for
from helpers.grading.plan import Submission, task_queue
from helpers.grading.watch import RepoWatch
from helpers.grading.workflows import GRADE, GradeLearner, GradingRun

MAX_LOG_CHARS = 60_000  # of one notebook's log in its grade (a payload): the end is kept, where the failures are
STOPPED = "GraderStopped"
SERVER_DOWN = "ServerUnavailable"


def kernel_base_env(where: server.Target) -> dict[str, str]:
    """The environment the kernels start from: this process's, pointed at the grading server."""
    env = dict(os.environ)
    env["TEMPORAL_ADDRESS"] = where.address
    env["TEMPORAL_NAMESPACE"] = where.namespace
    if profile := profile_file():
        env.setdefault("TEMPORAL_CONFIG_FILE", str(profile))
    return env


def profile_file() -> Path | None:
    """Temporal's profile file as the instructor's own HOME sees it (kernels get a private HOME)."""
    candidates = []
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        candidates.append(Path(xdg) / "temporalio" / "temporal.toml")
    home = Path.home()
    candidates += [
        home / ".config" / "temporalio" / "temporal.toml",
        home / "Library" / "Application Support" / "temporalio" / "temporal.toml",
    ]
    return next((p for p in candidates if p.is_file()), None)


def cores() -> int:
    """CPUs this process may use (what ``nproc`` says)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_jobs() -> int:
    """Notebooks graded at once by default: twice the cores. A graded notebook keeps about half a core busy (its
    kernel starting, its checks waiting on timers, the server, killed workers being noticed), so two per core keep
    the machine busy without piling up (docs/instructor-guide.md, "Speed", has the measurements)."""
    return 2 * cores()


class GradingWorker:
    """Grades notebooks with one course snapshot, ``jobs`` at a time, in this process."""

    def __init__(
        self,
        course: Course,
        settings: Settings,
        where: server.Target,
        jobs: int,
        busy: Sequence[Path] = (),
        on_warning: Callable[[str], None] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.course = course
        self.settings = settings
        self.jobs = max(1, jobs)
        self.refs = {r.name: r for r in course.references}
        self.identity = f"grader {socket.gethostname()} pid {os.getpid()}"
        self.base_env = kernel_base_env(where)
        self.on_warning = on_warning
        self.announce = announce or (lambda _: None)  # a line per notebook started and graded (standalone workers)
        self.warnings: list[str] = []
        self.lock = threading.Lock()
        self.tmp_root = Path(tempfile.mkdtemp(prefix="course-grade-"))
        exclude = [*busy, self.tmp_root, server.data_dir()]  # written while grading, by us and the server
        self.watch = RepoWatch(settings.watch, exclude=exclude, flat=settings.watch_flat, on_alarm=self._alarm)
        self.stale = isolation.sweep_dead_owners()  # what a killed grader of this machine left running
        # An attempt this worker gives up on purpose (stopped, the server gone) is retried: no traceback for it.
        logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
        isolation.STOPPING.clear()
        self.reaper = isolation.Reaper()

    @property
    def task_queue(self) -> str:
        return task_queue(self.course.fingerprint)

    def _alarm(self, text: str) -> None:
        warning = (
            f"Files of the course or its Python environment changed while notebooks ran: {text}. Every notebook "
            "graded from then on has a note. The kernels got the grader's copy of helpers/ and tests/nbval.cfg "
            "taken before any notebook ran, and the solutions were read then too; a change elsewhere (installed "
            "packages) can still change grades: check the files (git status), restore them, and regrade the "
            "noted notebooks."
        )
        with self.lock:
            self.warnings.append(warning)
        if self.on_warning:
            self.on_warning(warning)

    def grade(self, sub: Submission, progress: Callable[[int, int, int], None] | None = None) -> NotebookResult:
        """Grade one handed-over notebook (in a thread of its own); never raises for the learner's faults."""
        ref = self.refs[sub.notebook]
        self.announce(f"grading {sub.learner}/{ref.name} (run {sub.run_id})")
        if sub.error is not None or sub.cells is None:
            result = NotebookResult(sub.learner, ref.name, rows_for(sub.learner, ref, "error", sub.error or "?"))
            result.notes = list(sub.notes)
            return result
        limits = sub.limits
        settings = dataclasses.replace(
            self.settings,
            cell_timeout=limits.cell_timeout,
            notebook_timeout=limits.notebook_timeout,
            max_runs=limits.max_runs,
            skip_demos=limits.skip_demos,
        )
        with self.watch.running_as(f"{sub.learner}/{ref.name}") as watch_notes:
            result = grade_submission(
                sub.learner, ref, sub.cells, settings, self.tmp_root, self.base_env, self.course.files, progress
            )
        result.notes = [*sub.notes, *result.notes, *watch_notes]
        if gone := self.reaper.sweep():
            who = "it" if self.jobs == 1 else "it, or by a notebook graded at the same time"
            result.notes.append(f"the grader stopped {len(gone)} process(es) left running after the notebook ended "
                                f"(started by {who}): {', '.join(gone[:3])}")  # fmt: skip
        if len(result.log) > MAX_LOG_CHARS:
            result.log = "[… the start of this log was cut by the grader …]\n" + result.log[-MAX_LOG_CHARS:]
        with self.lock:
            result.warnings = list(self.warnings)
        result.worker = self.identity
        got, most = sum(r.points for r in result.rows), sum(r.max_points for r in result.rows)
        self.announce(f"graded {sub.learner}/{ref.name}: {got}/{most} in {result.seconds:.1f} s")
        return result

    def activity(self) -> Callable[[Submission], NotebookResult]:
        """The grading activity, bound to this worker."""

        @activity.defn(name=GRADE)
        def grade_notebook(sub: Submission) -> NotebookResult:
            if sub.fingerprint != self.course.fingerprint:  # cannot happen through the task queue: never grade it
                raise ApplicationError(f"{self.identity} has other course files than grading run {sub.run_id}")
            info = activity.info()
            activity.heartbeat({"run": 0, "cells": 0, "of": 0})

            def progress(run: int, done: int, cells: int) -> None:
                activity.heartbeat({"run": run, "cells": done, "of": cells})

            result = self.grade(sub, progress)
            if isolation.STOPPING.is_set() or result.interrupted:  # not a grade: let another attempt make it
                raise ApplicationError(f"grading was stopped on {self.identity} before it finished", type=STOPPED)
            if result.unavailable:  # the server's fault, not the learner's: grade it again (after a backoff)
                raise ApplicationError(
                    "the Temporal server did not answer while the notebook ran (not the learner's doing)",
                    type=SERVER_DOWN,
                )
            result.attempt = info.attempt
            if info.attempt > 1:
                result.notes.append(
                    f"graded on attempt {info.attempt}: the grading before was cut off (its worker was stopped or "
                    "lost); grading is repeatable, so this grade stands"
                )
            return result

        return grade_notebook

    def temporal_worker(self, client: Any) -> Any:
        """A Temporal worker on the fingerprint's queue: the run workflows, and grading with ``jobs`` slots."""
        from temporalio.worker import Worker

        from helpers.worker import STICKY_TIMEOUT

        executor = concurrent.futures.ThreadPoolExecutor(self.jobs, thread_name_prefix="grade")
        return Worker(
            client,
            task_queue=self.task_queue,
            workflows=[GradingRun, GradeLearner],
            activities=[self.activity()],
            activity_executor=executor,
            max_concurrent_activities=self.jobs,
            identity=self.identity,
            sticky_queue_schedule_to_start_timeout=STICKY_TIMEOUT,
        )

    def stop(self) -> None:
        """Stop every notebook running here (their attempts fail, and are retried elsewhere or later)."""
        isolation.kill_all_running()

    def close(self) -> list[str]:
        """Sweep what notebooks left running; returns their command lines."""
        leftovers = self.reaper.close()
        if not self.settings.keep_temp:
            shutil.rmtree(self.tmp_root, ignore_errors=True)
        return leftovers


# --------------------------------------------------------------------------- make grade-worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.grading.worker",
        description="Join the grading runs of these course files on the Temporal server TEMPORAL_ADDRESS names.",
    )
    parser.add_argument("--jobs", type=int, default=0, help="notebooks graded at once (default: 2 × cores)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the graded copies (for debugging the grader)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_serve(args.jobs or default_jobs(), Settings(keep_temp=args.keep_temp)))
    except server.ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


async def _serve(jobs: int, settings: Settings) -> int:
    where = server.target()
    client = await server.connect(where)
    course = Course.snapshot(settings.source)
    worker = GradingWorker(
        course,
        settings,
        where,
        jobs,
        on_warning=lambda w: print(f"WARNING: {w}", flush=True),
        announce=lambda line: print(line, flush=True),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"Grading worker for course files {course.fingerprint[:16]} on {where.address} (namespace {where.namespace}): "
        f"{jobs} notebook(s) at a time, task queue {worker.task_queue}. It grades every grading run of the same "
        "course files on this server; a run started from other course files never reaches it. Ctrl-C stops it.",
        flush=True,
    )
    if worker.stale:
        print(f"Stopped {len(worker.stale)} process(es) a killed grader left running: {', '.join(worker.stale[:3])}")
    runner = asyncio.ensure_future(worker.temporal_worker(client).run())
    watcher = asyncio.ensure_future(_tell_about_runs(client, worker.task_queue, course.fingerprint))
    await asyncio.wait([runner, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    worker.stop()
    runner.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(runner, 10)
    if leftovers := worker.close():
        print(f"Stopped {len(leftovers)} process(es) left running: {', '.join(leftovers[:5])}")
    print("Grading worker stopped; a notebook it was grading will be graded again by another worker.")
    return 0 if stop.is_set() else 1


async def _tell_about_runs(client: Any, queue: str, fingerprint: str, every: float = 5.0) -> None:
    """Say which running grading runs this worker joins, and which it cannot (other course files)."""
    told: set[str] = set()
    while True:
        with contextlib.suppress(Exception):
            async for run in client.list_workflows('WorkflowType = "CourseGradingRun" AND ExecutionStatus = "Running"'):
                if run.id in told:
                    continue
                told.add(run.id)
                if run.task_queue == queue:
                    print(f"Joining grading run {run.id}.", flush=True)
                else:
                    print(
                        f"Not grading run {run.id}: it was started with other course files (task queue "
                        f"{run.task_queue}) than this worker's ({fingerprint[:16]}). To help with it, bring this "
                        "machine's course to the same commit (git pull) and start the worker again.",
                        flush=True,
                    )
        await asyncio.sleep(every)


if __name__ == "__main__":
    server.exit_now(main())
