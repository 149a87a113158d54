"""The grader at class scale, on Temporal: a killed grader resumes without grading anything twice, workers on other
"machines" share a run (one killed mid-run changes no grade), a worker with other course files never grades it,
payloads that are too large become error rows, the progress bar, and ``make check``.

Each test grades on a Temporal server of its own (``private_server``); notebook 00 keeps them quick.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from grading_support import (
    counted,
    course_copy,
    grade_command,
    kill9,
    load,
    private_server,
    read_until,
    runs_of,
    with_cell,
    worker_command,
    write_class,
)

from helpers import contract
from helpers.grading import check, isolation, plan, planning, progress, run
from helpers.grading.course_files import Course
from helpers.grading.notebook import Settings

NB = "00_welcome"
SOLUTION = load(contract.SOLUTIONS / f"{NB}.ipynb")
LEARNER = load(contract.NOTEBOOKS / f"{NB}.ipynb")
REF = next(r for r in Course.snapshot().references if r.name == NB)


def _half() -> dict[str, Any]:
    nb = copy.deepcopy(LEARNER)
    solved = {c["id"]: c for c in SOLUTION["cells"]}
    for cell in nb["cells"]:
        if cell.get("id") in REF.exercises[0].work_ids:
            cell["source"] = solved[cell["id"]]["source"]
    return nb


KINDS = {"correct": SOLUTION, "untouched": LEARNER, "half": _half()}
EXPECTED = {"correct": "passed passed", "untouched": "not_done not_done", "half": "passed not_done"}


def _class(root: Path, n: int, counter: Path | None = None) -> dict[str, str]:
    """``n`` learners cycling through the kinds above; returns learner -> kind."""
    kinds = {}
    learners = {}
    for i in range(n):
        kind = list(KINDS)[i % len(KINDS)]
        name = f"l{i + 1}-{kind}"
        nb = KINDS[kind] if counter is None else counted(KINDS[kind], counter, name)
        learners[name] = {NB: nb}
        kinds[name] = kind
    write_class(root, learners)
    return kinds


def _statuses(out: Path) -> dict[str, str]:
    book = json.loads((out / "gradebook.json").read_text())
    found: dict[str, list[str]] = {}
    for r in book["rows"]:
        found.setdefault(r["learner"], []).append(r["status"])
    return {k: " ".join(v) for k, v in found.items()}


def _rows(out: Path) -> list[tuple[Any, ...]]:
    book = json.loads((out / "gradebook.json").read_text())
    return [
        tuple(r[f] for f in ("learner", "notebook", "exercise", "points", "status", "message")) for r in book["rows"]
    ]


def _identity(pid: int) -> str:
    return f"grader {socket.gethostname()} pid {pid}"


def _left_behind(pid: int) -> list[int]:
    """Processes of nbval runs that the grading process ``pid`` started (their environment says so)."""
    needle = f"{isolation.OWNER_VAR}={pid}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _wait_gone(pid: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _left_behind(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --------------------------------------------------------------------------- kill -9 of the grader, then resume


def test_kill_9_of_the_grader_then_the_same_command_resumes_without_grading_anything_twice(tmp_path):
    """Proof that nothing finished is graded again: every notebook appends its learner's name to a file outside the
    grader each time it runs. The notebooks the run had graded before the kill (read from the learners' workflow
    histories) appear there once; only the one running at the kill may appear twice."""
    counter = tmp_path / "runs.txt"
    kinds = _class(tmp_path / "subs", 5, counter)
    out = tmp_path / "out"
    args = ("--jobs", "1", "--notebook", "00")
    checkout = course_copy(tmp_path / "course")  # the same course files for both commands
    with private_server(tmp_path / "server"):
        first = grade_command(tmp_path / "subs", out, *args, cwd=checkout)
        seen = read_until(first, lambda line: line.startswith("[2/5]"), timeout=90)
        assert any(line.startswith("[2/5]") for line in seen), seen
        kill9(first)
        graded_before = {m[1] for line in seen if (m := re.match(r"\[\d/5\] (\S+) ", line))}
        assert not _wait_gone(first.pid), "the killed grader's nbval runs and kernels died with it"
        marker = json.loads((out / run.RESUME_FILE).read_text())

        again = grade_command(tmp_path / "subs", out, *args, cwd=checkout)
        output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    assert f"Resuming grading run {marker['run_id']}" in output
    assert re.search(r"(\d+) notebook\(s\) of this run were graded already: not again", output), output
    assert "collected by an earlier command: kept" in output  # read from OUT, not even from the server
    runs = runs_of(counter)
    assert {learner: runs.get(learner) for learner in graded_before} == dict.fromkeys(graded_before, 1), runs
    assert set(runs) == set(kinds) and all(n in (1, 2) for n in runs.values()), runs
    assert _statuses(out) == {learner: EXPECTED[kind] for learner, kind in kinds.items()}
    book = json.loads((out / "gradebook.json").read_text())
    assert book["meta"]["run_id"] == marker["run_id"] and book["meta"]["graded_before_this_command"] >= 2
    assert book["meta"]["graded_by"][_identity(first.pid)] >= len(graded_before)  # kept, as the killed grader made them
    assert not (out / run.RESUME_FILE).exists()  # finished: a new command grades afresh


# --------------------------------------------------------------------------- workers on other machines


def test_two_workers_share_a_run_one_killed_mid_run_and_other_course_files_never_grade_it(tmp_path):
    kinds = _class(tmp_path / "subs", 6)
    checkout = course_copy(tmp_path / "course")
    with private_server(tmp_path / "server"):
        settings = Settings(source=checkout)
        reference = run.grade(
            tmp_path / "subs", tmp_path / "ref", jobs=2, only_notebooks=["00"], quiet=True, settings=settings,
            solutions=checkout / "solutions",
        )  # fmt: skip
        a = worker_command(tmp_path / "machine-a", cwd=checkout)
        b = worker_command(tmp_path / "machine-b", cwd=checkout)
        c = worker_command(tmp_path / "machine-c", cwd=course_copy(tmp_path / "other-checkout", differ=True))
        try:
            banners = {w: read_until(w, lambda line: "Grading worker for course files" in line, 60) for w in (a, b, c)}
            fingerprints = {w: re.search(r"course files (\w+)", banners[w][-1])[1] for w in (a, b, c)}  # type: ignore[index]
            assert fingerprints[a] == fingerprints[b] != fingerprints[c]
            only_others = ("--jobs", "0", "--notebook", "00")  # no grading slots in the command: the workers grade
            command = grade_command(tmp_path / "subs", tmp_path / "out", *only_others, cwd=checkout)
            # Kill machine A while it grades its second notebook (it finished one before).
            lines_a = read_until(a, lambda line: line.startswith("graded "), 60)
            lines_a += read_until(a, lambda line: line.startswith("grading "), 30)
            assert lines_a and lines_a[-1].startswith("grading "), lines_a
            kill9(a)
            cut_off = re.match(r"grading (\S+)/", lines_a[-1])[1]  # type: ignore[index]
            assert not _wait_gone(a.pid)
            output, _ = command.communicate(timeout=120)
            assert command.returncode == 0, output
            run_id = re.search(r"Grading run (\S+?):", output)[1]  # type: ignore[index]
            lines_c = read_until(c, lambda line: run_id in line, 20)
        finally:
            for w in (a, b, c):
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in (a, b, c):
                try:
                    w.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    kill9(w)
    book = json.loads((tmp_path / "out" / "gradebook.json").read_text())
    graded_by = book["meta"]["graded_by"]
    assert set(graded_by) == {_identity(a.pid), _identity(b.pid)}, graded_by  # both took work, the other checkout none
    assert any(f"Not grading run {run_id}" in line for line in lines_c), lines_c
    assert not any(line.startswith("grading ") for line in lines_c)
    assert _rows(tmp_path / "out") == _rows(tmp_path / "ref")  # the same grades as with one worker
    assert _statuses(tmp_path / "out") == {learner: EXPECTED[kind] for learner, kind in kinds.items()}
    assert any("graded on attempt 2" in n for n in book["notes"].get(f"{cut_off}/{NB}", [])), book["notes"]
    assert reference.meta["graded_by"] and len(reference.meta["graded_by"]) == 1


# --------------------------------------------------------------------------- payloads


async def _executions(workflow_id: str) -> int:
    from helpers import server

    client = await server.connect(server.target())
    return len([w async for w in client.list_workflows(f'WorkflowId = "{workflow_id}"')])


def test_a_notebook_too_large_to_travel_is_an_error_row_never_a_hung_run(tmp_path):
    fine = SOLUTION
    big = with_cell(SOLUTION, "setup", "blob", "DATA = '" + "x" * 150_000 + "'\n")  # over this server's limit
    huge = with_cell(SOLUTION, "setup", "blob", "DATA = '" + "x" * 1_500_000 + "'\n")  # over the grader's own
    write_class(tmp_path / "subs", {"fine": {NB: fine}, "big": {NB: big}, "huge": {NB: huge}})
    limits = {"limit.blobSize.error": 100_000, "limit.blobSize.warn": 50_000}
    checkout = course_copy(tmp_path / "course")
    options = {"jobs": 2, "only_notebooks": ["00"], "quiet": True, "solutions": checkout / "solutions"}
    options["settings"] = Settings(source=checkout)
    started = time.monotonic()
    with private_server(tmp_path / "server", dynamic_config=limits), pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan, "CHILDREN_PER_RUN", 1)  # the run workflow continues as new after each learner
        book = run.grade(tmp_path / "subs", tmp_path / "out", **options)
        assert time.monotonic() - started < 60
        runs = asyncio.run(_executions(book.meta["run_id"]))
        # Killed after the run completed but before the gradebook was written: the same command only collects.
        marker = {"run_id": book.meta["run_id"], "inputs": book.meta["run_inputs"]}
        shutil.rmtree(tmp_path / "out")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / run.RESUME_FILE).write_text(json.dumps(marker))
        again = run.grade(tmp_path / "subs", tmp_path / "out", **options)
    assert runs == 2  # two learners with something to run, one per run of the workflow
    assert again.meta["run_id"] == book.meta["run_id"] and again.meta["graded_before_this_command"] == 2
    assert [r.__dict__ for r in again.rows] == [r.__dict__ for r in book.rows]
    rows = {(r.learner, r.exercise): r for r in book.rows}
    assert {rows[("fine", ex.id)].status for ex in REF.exercises} == {"passed"}
    for ex in REF.exercises:
        assert rows[("huge", ex.id)].status == "error" and "1.5 MB" in rows[("huge", ex.id)].message
        assert "more than the 1 MB a grading run carries" in rows[("huge", ex.id)].message
        assert rows[("big", ex.id)].status == "error"
        assert "larger than this Temporal server accepts in one payload" in rows[("big", ex.id)].message


def test_what_travels_is_the_notebook_without_outputs_and_a_changed_file_is_not_graded(tmp_path):
    nb = copy.deepcopy(SOLUTION)
    nb["cells"][0].setdefault("attachments", {"x.png": {"image/png": "AAAA" * 1000}})
    stripped = planning.stripped(nb)
    assert all(set(c) <= {"cell_type", "id", "source", "metadata"} for c in stripped["cells"])
    assert [c.get("id") for c in stripped["cells"]] == [c.get("id") for c in nb["cells"]]
    assert json.dumps(stripped).count("outputs") == 0

    write_class(tmp_path / "subs", {"ada": {NB: SOLUTION}})
    limits = plan.Limits(60, 600, 3, True)
    people = planning.learner_folders(tmp_path / "subs")
    planner = planning.Planner(people, [REF], "f" * 64, limits, tmp_path / "subs", tmp_path / "out")
    same = planning.Planner(people, [REF], "f" * 64, limits, tmp_path / "subs", tmp_path / "out")
    assert planner.planned.inputs == same.planned.inputs  # the same command: the same run to resume
    (job,) = planner.planned.plan.learners[0].jobs
    assert job.size < plan.MAX_PAYLOAD_BYTES and job.notebook == NB
    fetch = planner.activity()
    request = plan.FetchRequest(planner.planned.plan.run_id, "ada", NB, job.digest)
    assert fetch(request).cells == planning.stripped(SOLUTION)
    write_class(tmp_path / "subs", {"ada": {NB: LEARNER}})  # the learner's file changed after planning
    changed = fetch(request)
    assert changed.cells is None and "changed after grading started" in (changed.error or "")
    other = planning.Planner(people, [REF], "f" * 64, limits, tmp_path / "subs", tmp_path / "out")
    assert other.planned.inputs != planner.planned.inputs  # so the next command grades it afresh


# --------------------------------------------------------------------------- what the instructor and learner see


def test_progress_bar_counts_running_retrying_and_time_left():
    state = progress.State(total=90, done=30, failed=1, elapsed=60.0, retrying=1)
    state.running = [progress.Running("ada/03_activity_design", 20, 40), progress.Running("bob/00_welcome", 2, 8, 2)]
    line = progress.render(state, width=200)
    assert line.startswith("[") and "30/90 graded" in line and "2 running" in line and "1 retrying" in line
    assert "1 failed" in line and "1:00, ~" in line and "ada/03_activity_design 20/40" in line
    assert "bob/00_welcome 2/8 (attempt 2)" in line
    assert len(progress.render(state, width=60)) <= 60

    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    tty = Tty()
    shown = progress.Progress(tty)  # type: ignore[arg-type]
    shown.update(state)
    shown.line("[31/90] ada 00_welcome: 2/2 (2 passed) 2.1 s")
    shown.close()
    assert tty.text.count("30/90 graded") == 2  # redrawn under the new line
    assert "\r\x1b[2K[31/90] ada" in tty.text and tty.text.endswith("\n")


def test_make_check_shows_the_learner_how_far_they_are(tmp_path):
    mine = tmp_path / "notebooks"
    write_class(tmp_path, {"notebooks": {NB: _half()}})
    shutil.copy(contract.NOTEBOOKS / "01_when_to_orchestrate.ipynb", mine)
    with private_server(tmp_path / "server"):
        done = subprocess.run(
            [sys.executable, "-m", "helpers.grading.check", "--folder", str(mine), "--notebook", "00", "--notebook",
             "01", "--jobs", "2"],
            cwd=contract.ROOT,
            env=dict(os.environ, TEMPORAL_COURSE_DATA=str(tmp_path / "data"), COLUMNS="140"),
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout[done.stdout.index("notebook  ") :]
    assert re.search(r"00_welcome\s+00\.1\s+✅ passed", table), table
    assert re.search(r"00\.2\s+⏳ not done yet\s+set WORKFLOW_TASKS", table), table
    assert re.search(r"01_when_to_orchestrate\s+01\.1\s+⏳ not done yet\s+fill in ANSWERS", table), table
    assert "1 of 5 exercises passed. Next: 00.2 (00_welcome): set WORKFLOW_TASKS" in done.stdout
    assert check.summary([]) == "0 of 0 exercises passed. All done: well done!"


def test_settings_reach_every_worker_through_the_run():
    """Timeouts and demo skipping are the run's, not a worker's: they travel in each notebook's payload."""
    limits = plan.Limits(7.0, 99.0, 2, False)
    sub = plan.Submission("r", "f", "ada", NB, limits, {"cells": []})
    assert Settings().cell_timeout != limits.cell_timeout and sub.limits.grade_timeout.total_seconds() == 219


# --------------------------------------------------------------------------- the learner's workflow alone


def test_a_learner_workflow_reports_a_notebook_it_could_not_grade_and_passes_payloads_through(tmp_path):
    """The grading activity fails on every attempt (as if each worker grading it were lost): after its attempts
    the learner's workflow reports the notebook as not graded instead of failing; the notebook reaches the
    grading activity exactly as fetched."""
    import concurrent.futures
    import uuid

    from temporalio import activity
    from temporalio.exceptions import ApplicationError
    from temporalio.worker import Worker

    from helpers import server
    from helpers.grading import workflows

    limits = plan.Limits(60, 600, 3, True)
    cells = planning.stripped(SOLUTION)
    seen: list[Any] = []

    @activity.defn(name=workflows.FETCH)
    def fetch(req: plan.FetchRequest) -> plan.Submission:
        return plan.Submission(req.run_id, "f", req.learner, req.notebook, limits, cells)

    @activity.defn(name=workflows.GRADE)
    def grade(sub: plan.Submission) -> dict[str, Any]:
        seen.append(sub)
        raise ApplicationError(f"worker lost on attempt {activity.info().attempt}")

    async def go() -> plan.LearnerOutcome:
        client = await server.connect(server.target())
        queue = f"test-{uuid.uuid4().hex[:8]}"
        job = plan.NotebookJob(NB, "d", 1000)
        learner = plan.LearnerRun("run", queue, queue, limits, plan.LearnerPlan("ada", "ada", [job]))
        executor = concurrent.futures.ThreadPoolExecutor(2)
        async with Worker(
            client,
            task_queue=queue,
            workflows=[workflows.GradeLearner],
            activities=[fetch, grade],
            activity_executor=executor,
        ):
            run_learner = workflows.GradeLearner.run
            outcome = plan.LearnerOutcome
            return await client.execute_workflow(
                run_learner, learner, id=f"run/{queue}", task_queue=queue, result_type=outcome
            )

    with private_server(tmp_path / "server"):
        outcome = asyncio.run(go())
    assert len(seen) == plan.GRADE_ATTEMPTS and all(s.cells == cells and s.learner == "ada" for s in seen)
    assert f"grading it failed {plan.GRADE_ATTEMPTS} times" in outcome.failed[NB]
    assert f"worker lost on attempt {plan.GRADE_ATTEMPTS}" in outcome.failed[NB]
