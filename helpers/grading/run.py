"""A grading run over a class, on Temporal: plan it, start it (or resume the one this gradebook folder was being
graded by), grade with local workers (and any ``make grade-worker`` of the same course files on the server), show
the progress, and write the gradebook from the grades the run recorded.

The run lives on the Temporal server, not in this process: killed (even ``kill -9``), the same command finds it
through ``OUT/.grading-run.json`` and goes on; the notebooks graded meanwhile are read from the learners' workflow
histories, never graded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from helpers import contract, server
from helpers.grading.course_files import Course
from helpers.grading.follow import Follower, Stop
from helpers.grading.gradebook import Gradebook, UsageError, merge, prepare_out, previous_gradebook, write_gradebook
from helpers.grading.notebook import INTERRUPTED, NotebookResult, Settings, rows_for
from helpers.grading.plan import RUN_TIMEOUT, Limits
from helpers.grading.plan import run_id as new_run_id
from helpers.grading.planning import Key, Planner, learner_folders
from helpers.grading.progress import Progress
from helpers.grading.watch import RepoWatch
from helpers.grading.worker import GradingWorker, cores, default_jobs
from helpers.grading.workflows import GradeLearner, GradingRun

__all__ = ["GradingInterrupted", "UsageError", "cores", "default_jobs", "grade"]

RESUME_FILE = ".grading-run.json"  # in OUT: the run this gradebook folder is being graded by, until it is written
CACHE_DIR = ".grading-run"  # in OUT: the learners of that run collected so far


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during grading, after the gradebook of what finished was written."""

    def __init__(self, book: Gradebook, unfinished: int, reason: str | None = None) -> None:
        super().__init__(f"{unfinished} notebook(s) not graded")
        self.book = book
        self.unfinished = unfinished
        self.reason = reason  # None: Ctrl-C or SIGTERM


def grade(
    submissions: Path,
    out: Path,
    *,
    jobs: int | None = None,
    only_learners: Sequence[str] = (),
    only_notebooks: Sequence[str] = (),
    settings: Settings | None = None,
    solutions: Path = contract.SOLUTIONS,
    quiet: bool = False,
    fresh: bool = False,
    handle_signals: bool = False,
    learners: Sequence[tuple[str, Path]] | None = None,
    stream: TextIO | None = None,
) -> Gradebook:
    """Grade every learner folder in ``submissions`` (or the ``learners`` given as (name, folder)) into ``out``.

    ``jobs``: grading slots in this process (0: none, only other workers grade). ``fresh``: do not resume an
    unfinished run of this gradebook folder, start over. Raises :class:`UsageError` before any work for a bad
    ``out``, an unreadable gradebook to merge into or a solution that cannot be the reference, and
    :class:`GradingInterrupted` on Ctrl-C/SIGTERM, after writing the gradebook (unfinished notebooks as errors)."""
    settings = settings or Settings()
    jobs = default_jobs() if jobs is None else max(0, jobs)
    submissions = submissions.resolve()
    out = out.resolve()
    if learners is None:
        if not submissions.is_dir():
            raise SystemExit(f"error: {submissions} is not a folder of learner folders")
        if out == submissions or submissions in out.parents:
            raise SystemExit("error: --out must not be inside the submissions folder (it is never written to)")
    prepare_out(out)
    selection = [*only_learners, *only_notebooks]
    old = previous_gradebook(out) if selection else None
    templates = solutions.parent / "notebooks"  # the learner copies beside the solutions (another checkout's too)
    # Before any notebook runs; kernels get copies of it.
    course = Course.snapshot(settings.source, solutions, templates if templates.is_dir() else contract.NOTEBOOKS)
    refs = [r for r in course.references if not only_notebooks or any(r.name.startswith(n) for n in only_notebooks)]
    if not refs:
        raise SystemExit(f"error: no solution notebooks matched in {solutions}")
    if problems := [r.problem for r in refs if r.problem]:
        raise UsageError("error: " + "\nerror: ".join(problems))
    people = list(learners) if learners is not None else learner_folders(submissions, only_learners)
    if only_learners and learners is None and (missing := set(only_learners) - {name for name, _ in people}):
        raise SystemExit(f"error: no learner folder named {', '.join(sorted(missing))} in {submissions}")
    where = server.target()
    status, started = server.ensure(where)
    progress = Progress(stream, quiet)
    progress.line(status.describe() + (" (started now)" if started else ""))
    limits = Limits(settings.cell_timeout, settings.notebook_timeout, settings.max_runs, settings.skip_demos)
    planner = Planner(people, refs, course.fingerprint, limits, submissions, out, selection)
    session = Session(planner, course, settings, where, jobs, out, old, progress, fresh, selection)
    return asyncio.run(session.run(handle_signals))


class Session(Follower):
    """One command's part in a grading run (the run itself lives on the server): start or resume it, grade with this
    machine's slots, follow it (:class:`Follower`), and write the gradebook."""

    def __init__(
        self,
        planner: Planner,
        course: Course,
        settings: Settings,
        where: server.Target,
        jobs: int,
        out: Path,
        old: Gradebook | None,
        progress: Progress,
        fresh: bool,
        selection: Sequence[str],
    ) -> None:
        super().__init__(planner.planned, progress, where, jobs)
        self.planner = planner
        self.course = course
        self.settings = settings
        self.out = out
        self.old = old
        self.fresh = fresh
        self.selection = selection
        self.worker: GradingWorker | None = None
        self.stand_ins: set[Key] = set()  # interrupted: rows that stand for a grade not made
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ the run

    async def run(self, handle_signals: bool) -> Gradebook:
        plan = self.planned.plan
        total = len(self.planned.order)
        jobs_total = sum(len(lp.jobs) for lp in plan.learners)
        self.progress.line(
            f"Grading {len(self.planned.learners)} learner(s) × {len(self.planned.refs)} notebook(s): {jobs_total} "
            f"to run, {total - jobs_total} decided without running; {self.jobs} job(s) here"
            + (", and any grading worker of these course files on the server" if plan.learners else "")
            + "…"
        )
        for key in self.planned.order:
            if key in self.results:
                self._report(key, self.results[key])
        env_watch = None
        if self.settings.watch_environment and sys.prefix != sys.base_prefix:  # a venv: compared as a whole at the end
            env_watch = RepoWatch([Path(sys.prefix)], exclude=[self.out, contract.ROOT], skip={"__pycache__"})
        interrupted = False
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        try:
            if plan.learners:
                interrupted = await self._grade_on_temporal(stop)
        except asyncio.CancelledError:  # Ctrl-C through asyncio.run (the API without signal handling)
            interrupted = True
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        if env_watch is not None and (changed := env_watch.check()):
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            self._warn(f"Files of the Python environment {sys.prefix} changed during this run: {shown}.")
            for res in self.results.values():
                res.notes.append(f"files of the Python environment changed during this run ({shown}); this grade may "
                                 "not be trustworthy")  # fmt: skip
        book = self._gradebook(interrupted)
        if interrupted:
            unfinished = sum(1 for key in self.planned.order if key not in self.results or key in self.stand_ins)
            raise GradingInterrupted(book, unfinished, self.stop_reason)
        (self.out / RESUME_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.out / CACHE_DIR, ignore_errors=True)
        self.progress.line(f"Graded in {time.monotonic() - self.started:.1f} s. Gradebook: {self.out / 'report.html'}")
        return book

    async def _grade_on_temporal(self, stop: asyncio.Event) -> bool:
        from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
        from temporalio.worker import Worker

        client = await _connect(self.where)
        run_id, finished = await self._run_id(client)
        plan = dataclasses.replace(self.planned.plan, run_id=run_id, files_queue=f"{run_id}-files")
        self.planned.plan = plan
        self.cache = self.out / CACHE_DIR / run_id
        if recalled := self.recall():
            self.progress.line(f"{recalled} learner(s) of this run were collected by an earlier command: kept.")
        tasks: list[asyncio.Task[Any]] = []
        files = Worker(
            client,
            task_queue=plan.files_queue,
            activities=[self.planner.activity()],
            activity_executor=_executor(4),
            max_concurrent_activities=4,
        )
        tasks.append(asyncio.ensure_future(files.run()))
        grading = None
        if self.jobs:
            self.worker = GradingWorker(
                self.course, self.settings, self.where, self.jobs, busy=[self.out], on_warning=self._warn
            )
            if self.worker.stale:
                self.progress.line(f"Stopped {len(self.worker.stale)} process(es) a killed grader left running.")
            grading = self.worker.temporal_worker(client)
        else:  # the run's workflows still need a worker here; the grading is left to other workers
            grading = Worker(client, task_queue=plan.task_queue, workflows=[GradingRun, GradeLearner])
        tasks.append(asyncio.ensure_future(grading.run()))
        # Written first: killed right after the start, the next command still finds the run.
        (self.out / RESUME_FILE).write_text(
            json.dumps({"run_id": run_id, "inputs": self.planned.inputs, "started": time.strftime("%F %T")}) + "\n"
        )
        if finished:  # it completed after the command that started it was killed: only its grades are missing here
            handle = client.get_workflow_handle(run_id)
        else:  # a new run, or the running one of this id (a resumed command attaches to it)
            handle = await client.start_workflow(
                GradingRun.run,
                plan,
                id=run_id,
                task_queue=plan.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                execution_timeout=RUN_TIMEOUT,
            )
        link = f"{self.where.ui_url}/namespaces/{self.where.namespace}/workflows/{run_id}" if self.where.ui_url else ""
        self.progress.line(f"Grading run {run_id}" + (f": {link}" if link else ""))
        interrupted = False
        try:
            await self._monitor(client, handle, stop, tasks)
        except Stop as err:
            interrupted = True
            self.stop_reason = str(err) or None
        finally:
            if self.worker is not None and interrupted:
                self.worker.stop()  # the notebooks running here: their attempts fail and are graded again later
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 15)
            if interrupted:  # what finished before the interrupt (here or on other workers) still counts
                collect = asyncio.gather(*(self._collect(client, key, final=False) for key in list(self.pending)))
                with contextlib.suppress(asyncio.TimeoutError):  # a server that is gone: the grades stay there
                    await asyncio.wait_for(collect, 30)
            if self.worker is not None and (leftovers := self.worker.close()):
                self._warn(f"The grader stopped {len(leftovers)} process(es) left running at the end: "
                           f"{', '.join(leftovers[:5])}")  # fmt: skip
            self.progress.close()
        return interrupted

    async def _run_id(self, client: Any) -> tuple[str, bool]:
        """This gradebook folder's unfinished run (the same inputs) to resume, else a new run's id; and whether the
        run to resume has completed already."""
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError

        marker = self.out / RESUME_FILE
        try:
            earlier = json.loads(marker.read_text())
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict) and isinstance(earlier.get("run_id"), str):
            same = earlier.get("inputs") == self.planned.inputs
            status = None
            with contextlib.suppress(RPCError):  # gone (another server, or its retention passed): start anew
                status = (await client.get_workflow_handle(earlier["run_id"]).describe()).status
            running = status == WorkflowExecutionStatus.RUNNING
            if same and not self.fresh and (running or status == WorkflowExecutionStatus.COMPLETED):
                self.progress.line(f"Resuming grading run {earlier['run_id']} (started {earlier.get('started')}).")
                return str(earlier["run_id"]), not running
            if status is not None and not running:
                self.progress.line(f"Not resuming grading run {earlier['run_id']}: it ended ({status.name.lower()}).")
            elif status is not None:
                why = "--fresh was given" if same else "the submissions, the course files or the options changed"
                with contextlib.suppress(RPCError):  # already closed
                    await client.get_workflow_handle(earlier["run_id"]).terminate(f"superseded: {why}")
                self.progress.line(f"Not resuming the unfinished grading run {earlier['run_id']}: {why}.")
        return new_run_id(self.planned.inputs, secrets.token_hex(4)), False

    # ------------------------------------------------------------------ the gradebook

    def _gradebook(self, interrupted: bool) -> Gradebook:
        if interrupted:
            unfinished = [key for key in self.planned.order if key not in self.results]
            for learner, nb in unfinished:
                if self.old is not None and any(r.learner == learner and r.notebook == nb for r in self.old.rows):
                    continue  # a regrade that did not happen: the earlier grades stay
                ref = self.planned.refs[nb]
                note = f"{INTERRUPTED} before this notebook was graded; the same command resumes the run"
                self.results[(learner, nb)] = NotebookResult(learner, nb, rows_for(learner, ref, "error", INTERRUPTED),
                                                             [note])  # fmt: skip
                self.stand_ins.add((learner, nb))
            if unfinished:
                self.warnings.append(
                    f"Grading was interrupted: {len(unfinished)} notebook(s) were not graded yet (status error, "
                    f"'{INTERRUPTED}'; in a regrade their earlier grades stay). Run the same command again: it resumes "
                    "the grading run, and what finished is not graded again."
                )
        ordered = [self.results[key] for key in self.planned.order if key in self.results]
        workers = Counter(res.worker for res in ordered if res.worker)
        book = Gradebook(
            rows=[row for res in ordered for row in res.rows],
            notes={f"{res.learner}/{res.notebook}": res.notes for res in ordered if res.notes},
            notebooks=[(r.name, r.max_points) for r in self.planned.refs.values()],
            meta={
                "graded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": round(self._elapsed(), 1),
                "jobs": self.jobs,
                "learners": len(self.planned.learners),
                "cell_timeout": self.settings.cell_timeout,
                "notebook_timeout": self.settings.notebook_timeout,
                "server": self.where.address,
                "run_id": self.planned.plan.run_id,
                "run_inputs": self.planned.inputs,  # digest of the submissions, course files and options graded
                "course_fingerprint": self.course.fingerprint[:16],
                "graded_by": dict(workers),
                "graded_before_this_command": self.already,
                "timings": {f"{res.learner}/{res.notebook}": [res.seconds, res.runs] for res in ordered if res.runs},
                "warnings": self.warnings,
            },
        )
        if self.selection:
            book = merge(self.old, book)
        write_gradebook(self.out, book, logs={(res.learner, res.notebook): res.log for res in ordered if res.log})
        return book


_RUNTIME: Any = None


async def _connect(where: server.Target) -> Any:
    """A client whose SDK core logs nothing to the terminal: what goes wrong reaches the gradebook as an error row
    (a payload too large for the server, say), and the progress bar stays readable."""
    from temporalio.client import Client
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    global _RUNTIME
    if _RUNTIME is None:  # one per process: each holds threads of its own
        silent = LoggingConfig(filter=TelemetryFilter(core_level="OFF", other_level="OFF"))
        _RUNTIME = Runtime(telemetry=TelemetryConfig(logging=silent))
    connect = Client.connect(where.address, namespace=where.namespace, runtime=_RUNTIME, **where.connect_kwargs)
    return await asyncio.wait_for(connect, server.PROBE_TIMEOUT_S * 5)


def _executor(n: int) -> Any:
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="grade-files")
