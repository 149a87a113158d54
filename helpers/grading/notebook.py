"""Grading one learner's notebook: its graded copy run with nbval (again, around a cell that hung, so the other
exercises are still graded), then a verdict per exercise.

A check cell passes when nbval's strict comparison (sanitized by ``tests/nbval.cfg``) with the solution's output
passes. Otherwise the verdict line the check printed (``helpers.checks.parse``) gives the status (``not_done`` /
``failed``) and the hint.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import checks, contract
from helpers.grading import isolation
from helpers.grading.course_files import CourseFiles
from helpers.grading.gradebook import Row
from helpers.grading.graded_copy import GradedCopy, graded_copy
from helpers.grading.nbval_run import RunResult, culprit, run_nbval
from helpers.grading.references import Exercise, Reference
from helpers.grading.submissions import slug
from helpers.grading.watch import environment_dirs, package_dirs

CELL_TIMEOUT_S = 60.0
NOTEBOOK_TIMEOUT_S = 600.0
MAX_RUNS = 3
KERNEL_RESTARTS = 2  # runs again when a kernel dies before any cell ran (a busy machine; not the notebook's doing)
INTERRUPTED = "grading was interrupted"
TAMPERED = "the grading records were tampered with"


@dataclass
class Settings:
    cell_timeout: float = CELL_TIMEOUT_S
    notebook_timeout: float = NOTEBOOK_TIMEOUT_S
    max_runs: int = MAX_RUNS
    skip_demos: bool = True  # leave out the learner's untouched `demo` cells (no check depends on them)
    keep_temp: bool = False
    source: Path = contract.ROOT  # the course whose helpers/ and tests/nbval.cfg the kernels get (copied once)
    watch: tuple[Path, ...] = field(default_factory=lambda: (contract.ROOT, *package_dirs()))  # recursively
    watch_flat: tuple[Path, ...] = field(default_factory=environment_dirs)  # only the files directly inside
    watch_environment: bool = True  # also compare all of sys.prefix (a venv) before and after the whole run


@dataclass
class NotebookResult:
    learner: str
    notebook: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runs: int = 0
    log: str = ""
    interrupted: bool = False  # grading was stopping while this notebook ran: its rows are not trustworthy
    warnings: list[str] = field(default_factory=list)  # what the worker noticed that affects every grade after it
    worker: str = ""  # who graded it
    attempt: int = 1  # the grading activity's attempt that made this grade
    unavailable: bool = False  # the Temporal server did not answer while it ran: not a grade (grade it again)


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rows_for(learner: str, ref: Reference, status: str, message: str) -> list[Row]:
    """The same row for every exercise of a notebook (missing, unreadable, not graded)."""
    return [Row(learner, ref.name, ex.id, 0, ex.points, status, message) for ex in ref.exercises]


def exercise_row(
    learner: str,
    ref: Reference,
    ex: Exercise,
    graded: GradedCopy,
    run: RunResult | None,
    timed_out: Mapping[str, str],
    settings: Settings,
    tainted: Iterable[str] = (),
) -> Row:
    """The verdict for one exercise from the last run's records (see the module docstring)."""

    def row(status: str, message: str, points: int = 0) -> Row:
        return Row(learner, ref.name, ex.id, points, ex.points, status, one_line(message))

    check_id = next(cid for cid, role in graded.roles.items() if role.kind == "check" and role.exercise == ex.id)
    rec = run.records.get(check_id) if run else None
    stdout = (rec or {}).get("stdout", "")
    verdicts = [v for line in stdout.splitlines() if (v := checks.parse(line)) is not None and v.exercise == ex.id]
    verdict = verdicts[-1] if verdicts else None
    if rec and rec.get("ok") and not rec.get("skipped") and rec.get("when") == "call":
        return row("passed", verdict.message if verdict else "the check's output matches the solution's.", ex.points)
    if check_id in timed_out:
        return row("timeout", f"the check did not finish within {settings.cell_timeout:g} s ({timed_out[check_id]})")
    work_late = [cid for cid, role in graded.roles.items() if role.exercise == ex.id and cid in timed_out]
    if work_late:
        label = graded.roles[work_late[0]].label
        return row(
            "timeout",
            f"your exercise {label} did not finish within {settings.cell_timeout:g} s "
            f"({timed_out[work_late[0]]}); the grader skipped it and graded the rest",
        )
    if check_id in set(tainted):
        return row("timeout", "not graded: an earlier cell hung and the grader had no re-runs left")
    if rec is None:
        if run is not None and run.killed:
            return row("timeout", f"the notebook used up its {settings.notebook_timeout:g} s before this check ran")
        return row("error", "the check cell did not run (the notebook run stopped early; see the log)")
    if rec.get("when") == "setup":
        return row("error", f"the notebook could not be run: {rec.get('error') or 'kernel did not start'}")
    if verdict is not None:
        if verdict.status == "unavailable":  # the server did not answer: the grader's problem, not the learner's
            return row("error", f"not graded: {verdict.message}")
        if verdict.status != "passed":
            return row(verdict.status, verdict.message)
        extra = [ln for ln in stdout.splitlines() if ln.strip() and checks.parse(ln) is None]
        detail = f" (extra output: {extra[0][:120]!r})" if extra else ""
        return row(
            "failed",
            "the check printed a pass, but the cell's output differs from the solution's"
            f"{detail}; code that runs during the check should not print.",
        )
    if rec.get("exception"):
        hint = ""
        if rec["exception"].startswith("NameError"):
            hint = "; is the exercise cell (or the setup cell) missing, or did it fail?"
        return row("failed", f"the check cell raised {rec['exception']}{hint}")
    return row("failed", "the check cell's output differs from the solution's (no verdict line printed)")


Progress = Callable[[int, int, int], None]  # (run number, cells reported, cells in the graded copy)


def grade_submission(
    learner: str,
    ref: Reference,
    submission: Mapping[str, Any],
    settings: Settings,
    tmp_root: Path,
    base_env: Mapping[str, str],
    course: CourseFiles,
    progress: Progress | None = None,
) -> NotebookResult:
    """Grade one learner's notebook JSON; never raises (problems become rows with status ``error``)."""
    started = time.monotonic()
    result = NotebookResult(learner, ref.name, [])
    if not ref.exercises:
        return result
    work_root = Path(tempfile.mkdtemp(prefix=f"{slug(learner)[:20]}-{ref.prefix}-", dir=tmp_root))
    try:
        workdir = work_root / "work"
        workdir.mkdir()
        deadline = started + settings.notebook_timeout
        skip: dict[str, str] = {}  # graded cell id -> what happened to it
        tainted: set[str] = set()  # cells that ran after a hang nobody could re-run around
        run: RunResult | None = None
        restarts = 0  # runs whose kernel never came up
        first = graded_copy(submission, ref, skip_demos=settings.skip_demos)
        result.notes += first.notes
        logs = [f"left out {len(first.demos)} untouched demo cell(s): {', '.join(first.demos)}"] if first.demos else []
        while not isolation.STOPPING.is_set():
            graded = graded_copy(submission, ref, skip, settings.skip_demos)
            lib = work_root / f"lib-{result.runs + 1}"  # a fresh copy for every run
            written = course.write(lib)
            cells = sum(1 for c in graded.notebook["cells"] if c["cell_type"] == "code")
            n = result.runs + 1
            report = (lambda done, n=n, cells=cells: progress(n, done, cells)) if progress else None
            run = run_nbval(graded.notebook, workdir, lib, settings.cell_timeout, deadline, base_env, report)
            result.runs += 1
            logs.append(run_log(result.runs, graded, run))
            if changed := course.changes(lib, written):
                shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
                run.tampered = run.tampered or f"the grader's private copy of the course files changed: {shown}"
            if run.tampered:
                break
            if kernel_did_not_start(run) and restarts < KERNEL_RESTARTS and time.monotonic() < deadline - 30:
                restarts += 1  # no learner code ran yet: the machine's doing (a busy one), not a grade
                logs.append(f"the kernel died or did not answer before any cell ran: a fresh one (try {restarts + 1})")
                continue
            hung = culprit(run)
            if hung is None:
                break
            alive = run.records[hung].get("kernel_alive", True)
            skip[hung] = "interrupted" if alive else "the kernel had to be stopped"
            role = graded.roles.get(hung)
            result.notes.append(
                f"{role.label if role else hung} did not finish within {settings.cell_timeout:g} s; "
                "the grader skipped it and ran the notebook again"
            )
            if result.runs >= settings.max_runs or time.monotonic() > deadline - 5:
                tainted = set(run.order[run.order.index(hung) + 1 :])
                result.notes.append("no time or re-runs left: cells after it were not graded")
                break
        if run is None:
            raise RuntimeError("grading was stopped")
        if run.tampered:
            result.rows = rows_for(learner, ref, "error", f"{TAMPERED} ({run.tampered}); look at this notebook")
            result.notes.append(f"{TAMPERED}: {run.tampered}. Not graded; look at this notebook's code.")
            result.log = "\n".join(logs)
            return result
        if run.killed:
            result.notes.append(f"the notebook hit its {settings.notebook_timeout:g} s budget and was stopped")
        result.unavailable = server_was_down(run)
        if not run.records and not run.killed:
            result.rows = rows_for(learner, ref, "error", f"nbval did not run (exit {run.returncode}); see the log")
        else:
            result.rows = [exercise_row(learner, ref, ex, graded, run, skip, settings, tainted) for ex in ref.exercises]
        result.log = "\n".join(logs)
    except Exception as err:  # the grader's own failure for this notebook: one error row each, the run goes on
        message = f"the grader failed on this notebook: {type(err).__name__}: {err}"
        result.rows = rows_for(learner, ref, "error", message)
    finally:
        result.seconds = round(time.monotonic() - started, 2)
        if not settings.keep_temp:
            shutil.rmtree(work_root, ignore_errors=True)
    return result


def kernel_did_not_start(run: RunResult) -> bool:
    """Whether the run's kernel never ran a cell: it died or timed out before answering (jupyter_client's "Kernel
    died before replying to kernel_info"). Nothing of the learner's ran yet, so it says nothing about the notebook."""
    if not run.order or run.killed:
        return False
    first = run.records[run.order[0]]
    return (
        first.get("when") == "setup"
        and not first.get("ok")
        and all(rec.get("when") != "call" for rec in run.records.values())
    )


def server_was_down(run: RunResult) -> bool:
    """Whether the course's Temporal server did not answer during the run (a check said it could not check, or a
    cell failed to reach the server): infrastructure, not the learner's doing."""
    for rec in run.records.values():
        if checks.SERVER_DOWN in rec.get("stdout", "") or (rec.get("exception") or "").startswith("ServerNotAnswering"):
            return True
    return False


def run_log(n: int, graded: GradedCopy, run: RunResult) -> str:
    lines = [f"=== run {n}: finished={run.finished} killed={run.killed} exit={run.returncode}"]
    for cell_id in run.order:
        rec = run.records[cell_id]
        role = graded.roles.get(cell_id)
        state = "skipped" if rec.get("skipped") else ("ok" if rec.get("ok") else "FAILED")
        lines.append(f"--- {role.label if role else cell_id} [{role.kind if role else '?'}] {state} {rec['duration']}s")
        if rec.get("error") and not rec.get("ok"):
            lines.append("    " + one_line(rec["error"], 600))
        for key in ("stdout", "stderr", "plain"):
            if rec.get(key):
                text = rec[key] if len(rec[key]) < 2000 else rec[key][:2000] + " …"
                lines.append(f"    [{key}] " + text.replace("\n", "\n    "))
    lines.append("--- pytest output (tail):")
    lines.append(run.log[-3000:])
    return "\n".join(lines)
