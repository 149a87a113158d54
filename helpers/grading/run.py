"""A grading run over a class: every learner × notebook, graded in parallel, into a gradebook."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from helpers import contract, server
from helpers.grading import isolation
from helpers.grading.course_files import CourseFiles
from helpers.grading.gradebook import Gradebook, UsageError, merge, prepare_out, previous_gradebook, write_gradebook
from helpers.grading.notebook import INTERRUPTED, TAMPERED, NotebookResult, Settings, grade_submission, rows_for
from helpers.grading.references import Reference, load_references
from helpers.grading.submissions import SubmissionError, find_submission, learners, outside, read_submission
from helpers.grading.watch import RepoWatch

__all__ = ["GradingInterrupted", "UsageError", "cores", "grade"]


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during grading, after the gradebook of what finished was written."""

    def __init__(self, book: Gradebook, unfinished: int) -> None:
        super().__init__(f"{unfinished} notebook(s) not graded")
        self.book = book
        self.unfinished = unfinished


def cores() -> int:
    """CPUs this process may use (what ``nproc`` says), the default number of jobs."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


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


def grade_file(
    learner: str,
    ref: Reference,
    path: Path | None,
    settings: Settings,
    tmp_root: Path,
    base_env: Mapping[str, str],
    path_note: str | None = None,
    course: CourseFiles | None = None,
) -> NotebookResult:
    """Grade one learner's file (None: handed in nothing); never raises."""
    result = NotebookResult(learner, ref.name, [])
    if path_note:
        result.notes.append(path_note)
    if path is None:
        result.rows = rows_for(learner, ref, "missing", f"no {ref.name}.ipynb handed in")
        return result
    if not ref.exercises:
        return result
    try:
        submission = read_submission(path)
    except SubmissionError as err:
        result.rows = rows_for(learner, ref, "error", f"{path.name}: {err}")
        return result
    graded = grade_submission(
        learner, ref, submission, settings, tmp_root, base_env, course or CourseFiles(settings.source)
    )
    graded.notes = result.notes + graded.notes
    return graded


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
) -> Gradebook:
    """Grade every learner folder in ``submissions`` into ``out``.

    Raises :class:`UsageError` before any work for a bad ``out`` or an unreadable gradebook to merge into, and
    :class:`GradingInterrupted` on Ctrl-C/SIGTERM, after writing the gradebook (unfinished notebooks as errors)."""
    settings = settings or Settings()
    jobs = max(1, jobs or cores())
    submissions = submissions.resolve()
    out = out.resolve()
    if not submissions.is_dir():
        raise SystemExit(f"error: {submissions} is not a folder of learner folders")
    if out == submissions or submissions in out.parents:
        raise SystemExit("error: --out must not be inside the submissions folder (it is never written to)")
    prepare_out(out)
    old = previous_gradebook(out) if (only_learners or only_notebooks) else None
    refs = load_references(solutions)
    if only_notebooks:
        refs = [r for r in refs if any(r.name.startswith(n) or r.prefix == n for n in only_notebooks)]
    if not refs:
        raise SystemExit(f"error: no solution notebooks matched in {solutions}")
    if problems := [r.problem for r in refs if r.problem]:
        raise UsageError("error: " + "\nerror: ".join(problems))
    people = learners(submissions)
    if only_learners:
        people = [p for p in people if p.name in only_learners]
        if missing := set(only_learners) - {p.name for p in people}:
            raise SystemExit(f"error: no learner folder named {', '.join(sorted(missing))} in {submissions}")
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    warnings: list[str] = []

    def alarm(text: str) -> None:
        warnings.append(
            f"Files of the course or its Python environment changed while notebooks ran: {text}. Every notebook "
            "graded from then on has a note. The kernels got the grader's copy of helpers/ and tests/nbval.cfg "
            "taken before any notebook ran, and the solutions were read then too; a change elsewhere (installed "
            "packages) can still change grades: check the files (git status), restore them, and regrade the "
            "noted notebooks."
        )
        print(f"WARNING: {warnings[-1]}", file=sys.stderr, flush=True)

    course = CourseFiles(settings.source)  # before any notebook runs; kernels get copies of this snapshot
    where = server.target()
    status, started = server.ensure(where)
    say(status.describe() + (" (started now)" if started else ""))
    base_env = dict(os.environ)
    base_env["TEMPORAL_ADDRESS"] = where.address
    base_env["TEMPORAL_NAMESPACE"] = where.namespace
    if profile := profile_file():
        base_env.setdefault("TEMPORAL_CONFIG_FILE", str(profile))

    tasks = [(person, ref) for person in people for ref in refs]
    say(f"Grading {len(people)} learner(s) × {len(refs)} notebook(s) with {jobs} job(s)…")
    t0 = time.monotonic()
    tmp_root = Path(tempfile.mkdtemp(prefix="course-grade-"))
    busy = [out, tmp_root, server.data_dir()]  # written during grading by the grader and the Temporal server
    watch = RepoWatch(settings.watch, exclude=busy, flat=settings.watch_flat, on_alarm=alarm)
    env_watch = None
    if settings.watch_environment and sys.prefix != sys.base_prefix:  # a venv: compared as a whole at the end
        env_watch = RepoWatch([Path(sys.prefix)], exclude=busy, skip={"__pycache__"})
    results: dict[int, NotebookResult] = {}
    leftovers: list[str] = []

    def work(person: Path, ref: Reference) -> NotebookResult:
        if isolation.STOPPING.is_set():
            return NotebookResult(person.name, ref.name, [], interrupted=True)
        notes = []
        if outside(person, submissions):
            notes.append(f"the learner folder is a symbolic link to {person.resolve()}, outside the submissions "
                         "folder; graded anyway")  # fmt: skip
        try:
            path, note = find_submission(person, ref.name)
        except OSError as err:
            res = NotebookResult(
                person.name, ref.name, rows_for(person.name, ref, "error", f"unreadable folder: {err}")
            )
            res.notes = notes
            return res
        if path is not None and outside(path, submissions, person):
            notes.append(f"{path.name} is a symbolic link to {path.resolve()}, outside the submissions folder; "
                         "graded anyway")  # fmt: skip
        watch_notes: list[str] = []
        with (
            watch.running_as(f"{person.name}/{ref.name}")
            if path
            else contextlib.nullcontext(watch_notes) as watch_notes
        ):
            res = grade_file(person.name, ref, path, settings, tmp_root, base_env, note, course)
        res.notes = notes + res.notes + watch_notes
        res.interrupted = isolation.STOPPING.is_set()
        if path is not None and (gone := reaper.sweep()):
            who = "it" if jobs == 1 else "it, or by a notebook graded at the same time"
            res.notes.append(f"the grader stopped {len(gone)} process(es) left running after the notebook ended "
                             f"(started by {who}): {', '.join(gone[:3])}")  # fmt: skip
        return res

    isolation.STOPPING.clear()
    reaper = isolation.Reaper()
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures: dict[Any, int] = {}
    try:
        for i, (person, ref) in enumerate(tasks):
            futures[pool.submit(work, person, ref)] = i
        for n, fut in enumerate(as_completed(futures), 1):
            res = fut.result()
            results[futures[fut]] = res
            got = sum(r.points for r in res.rows)
            most = sum(r.max_points for r in res.rows)
            tally = Counter(r.status for r in res.rows)
            say(
                f"[{n}/{len(tasks)}] {res.learner} {res.notebook}: {got}/{most} "
                f"({', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}) {res.seconds:.1f} s"
            )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop what runs, keep what finished
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        isolation.kill_all_running()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        isolation.kill_all_running()
        raise
    finally:
        pool.shutdown(wait=True)
        leftovers = reaper.close()
        if not settings.keep_temp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = round(time.monotonic() - t0, 1)

    if interrupted:
        for fut, i in futures.items():
            finished = i not in results and fut.done() and not fut.cancelled() and fut.exception() is None
            if finished and not fut.result().interrupted:
                results[i] = fut.result()  # finished just before the interrupt, not yet reported
    unfinished = [i for i in range(len(tasks)) if i not in results]
    for i in unfinished:
        person, ref = tasks[i]
        if old is not None and any(r.learner == person.name and r.notebook == ref.name for r in old.rows):
            continue  # a regrade that did not happen: the earlier grades stay
        rows = rows_for(person.name, ref, "error", INTERRUPTED)
        results[i] = NotebookResult(person.name, ref.name, rows, [f"{INTERRUPTED} before this notebook was graded"])
    if unfinished:
        warnings.append(
            f"Grading was interrupted: {len(unfinished)} notebook(s) were not graded (status error, "
            f"'{INTERRUPTED}'; in a regrade their earlier grades stay). Run the grader again for them."
        )
    if leftovers:
        warnings.append(f"The grader stopped {len(leftovers)} process(es) left running at the end: "
                        f"{', '.join(leftovers[:5])}")  # fmt: skip
    if env_watch is not None and (changed := env_watch.check()):
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        alarm(f"in the Python environment {sys.prefix}: {shown}")
        for res in results.values():
            res.notes.append(f"files of the Python environment changed during this run ({shown}); this grade may "
                             "not be trustworthy")  # fmt: skip
    for res in results.values():  # a tampering notebook: say so loudly, once per notebook
        if any(r.message.startswith(TAMPERED) for r in res.rows):
            print(f"WARNING: {res.learner}/{res.notebook}: {res.rows[0].message}", file=sys.stderr, flush=True)

    ordered = [results[i] for i in sorted(results)]
    book = Gradebook(
        rows=[row for res in ordered for row in res.rows],
        notes={f"{res.learner}/{res.notebook}": res.notes for res in ordered if res.notes},
        notebooks=[(r.name, r.max_points) for r in refs],
        meta={
            "graded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": elapsed,
            "jobs": jobs,
            "learners": len(people),
            "cell_timeout": settings.cell_timeout,
            "notebook_timeout": settings.notebook_timeout,
            "server": where.address,
            "timings": {f"{res.learner}/{res.notebook}": [res.seconds, res.runs] for res in ordered if res.runs},
            "warnings": warnings,
        },
    )
    if only_learners or only_notebooks:
        book = merge(old, book)
    write_gradebook(out, book, logs={(res.learner, res.notebook): res.log for res in ordered if res.log})
    if interrupted:
        raise GradingInterrupted(book, len(unfinished))
    say(f"Graded in {elapsed:.1f} s. Gradebook: {out / 'report.html'}")
    return book
