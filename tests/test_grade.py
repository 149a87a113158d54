"""The grader on synthetic submissions built from solutions/ and notebooks/ (notebook 00), on a Temporal server of
this module's own. One class of learners is graded once (module fixture); each test reads its part of the gradebook:
the integrity properties (check cells restored, signed records, snapshot of the course files, the process sweep,
submissions untouched, the bad inputs) hold with the grader running as a Temporal workflow."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from grading_support import private_server

from helpers import build, contract, server
from helpers.grading import (
    cli,
    course_files,
    gradebook,
    isolation,
    nbval_plugin,
    nbval_run,
    notebook,
    references,
    review,
    run,
    submissions,
    watch,
)
from helpers.grading import graded_copy as copies

NB = "00_welcome"
CELL_TIMEOUT = 4.0
KEY = bytes(range(32))  # the run key in the module fixture, so that a test can look for it where it must not be
SLEEP = f"4242.{random.randrange(10**6):06d}"
LEARNERS = 16  # in the module fixture  # a detached `sleep` a notebook leaves behind, unique to this session


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


SOLUTION = _load(build.SOLUTIONS / f"{NB}.ipynb")
LEARNER = _load(build.NOTEBOOKS / f"{NB}.ipynb")
REF = next(r for r in references.load_references() if r.name == NB)
EXERCISES = [ex.id for ex in REF.exercises]


def _cell(nb: dict[str, Any], cell_id: str) -> dict[str, Any]:
    return next(c for c in nb["cells"] if c.get("id") == cell_id)


def _solve(nb: dict[str, Any], exercise: str) -> None:
    """Put the solution's exercise cells for ``exercise`` into a learner notebook."""
    ex = next(e for e in REF.exercises if e.id == exercise)
    for cell_id in ex.work_ids:
        _cell(nb, cell_id)["source"] = copy.deepcopy(_cell(SOLUTION, cell_id)["source"])


def _with_source(nb: dict[str, Any], cell_id: str, source: str) -> dict[str, Any]:
    nb = copy.deepcopy(nb)
    _cell(nb, cell_id)["source"] = source
    return nb


def _source(nb: dict[str, Any], cell_id: str) -> str:
    src = _cell(nb, cell_id)["source"]
    return "".join(src) if isinstance(src, list) else src


def _work_id(exercise: str) -> str:
    return next(e for e in REF.exercises if e.id == exercise).work_ids[0]


def _check_id(exercise: str) -> str:
    return next(e for e in REF.exercises if e.id == exercise).check["id"]


def _code(cell_id: str, source: str) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "id": cell_id,
        "metadata": {},
        "execution_count": None,
        "outputs": [],
        "source": source,
    }


def _after(nb: dict[str, Any], cell_id: str, cell: dict[str, Any]) -> dict[str, Any]:
    nb = copy.deepcopy(nb)
    nb["cells"].insert(next(i for i, c in enumerate(nb["cells"]) if c.get("id") == cell_id) + 1, cell)
    return nb


def _sleeping() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if SLEEP in (p.info["cmdline"] or []):
            found.append(p)
    return found


# Rewrites the course files the grader copies for the kernels (the real snapshot source of the test's grading:
# Settings.source), so that every later check prints a pass and nbval masks every output; and leaves a `sleep`
# running outside its process tree (own session, clean environment without the run's token, parent gone).
ATTACK = """\
import pathlib, subprocess
repo = pathlib.Path({repo!r})
init = repo / "helpers" / "checks" / "__init__.py"
passed = 'print(Verdict(ex_id, "passed", "well done.").line())'
init.write_text(init.read_text().replace("print(verdict.line())", passed))
with open(repo / "tests" / "nbval.cfg", "a") as f:
    f.write(r"regex: [\\s\\S]+" "\\nreplace: X\\n")
subprocess.Popen(["sh", "-c", "sleep {sleep} &"], env={{"PATH": "/usr/bin:/bin"}}, start_new_session=True)
"""

# Looks for the run's key and results file where a kernel can read (environment, the pytest parent's environment,
# command line and stdin), then forges passing records for both checks and replays a signed line.
FORGE = """\
import glob, json, os, pathlib
ppid = os.getppid()
saw = {{"env": dict(os.environ)}}
for name in ("environ", "cmdline"):
    try:
        saw[name] = pathlib.Path(f"/proc/{{ppid}}/{{name}}").read_bytes().decode(errors="replace")
    except OSError as err:
        saw[name] = str(err)
try:
    fd = os.open(f"/proc/{{ppid}}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    saw["stdin"] = os.read(fd, 4096).decode(errors="replace")
    os.close(fd)
except OSError as err:
    saw["stdin"] = str(err)
pathlib.Path({saw!r}).write_text(json.dumps(saw))
for path in glob.glob("../results-*.jsonl"):
    lines = pathlib.Path(path).read_bytes().splitlines()
    with open(path, "ab") as f:
        for cid in ("check-00-1", "check-00-2"):
            rec = {{"cell_id": cid, "when": "call", "ok": True, "skipped": False, "stdout": "", "duration": 0}}
            f.write(json.dumps(rec).encode() + b"\\n")
        f.write(lines[-1] + b"\\n")
"""


def build_class(root: Path, fake_repo: Path) -> dict[str, Any]:
    """learner -> notebook JSON (dict), raw bytes, None (hands in nothing), or (file name, content)."""
    half = copy.deepcopy(LEARNER)
    for ex in EXERCISES[: len(EXERCISES) // 2]:
        _solve(half, ex)

    # Wrong answer to 00.2, and both check cells edited to print a pass with the solution's stored output.
    tampered = copy.deepcopy(LEARNER)
    wrong = _source(SOLUTION, _work_id("00.2")).replace("WORKFLOW_TASKS = 2", "WORKFLOW_TASKS = 3")
    assert "WORKFLOW_TASKS = 3" in wrong
    _cell(tampered, _work_id("00.2"))["source"] = wrong
    for ex in EXERCISES:
        check = _cell(tampered, _check_id(ex))
        solved = _cell(SOLUTION, _check_id(ex))
        text = "".join(o["text"] for o in solved["outputs"] if o.get("output_type") == "stream")
        check["source"] = f"print({text.rstrip()!r})"
        check["outputs"] = copy.deepcopy(solved["outputs"])
        check["execution_count"] = solved["execution_count"]

    # 00.1 loops forever in its exercise cell (interruptible); 00.2 is right.
    endless = _with_source(SOLUTION, _work_id("00.1"), "while True:\n    pass\n")
    # 00.1 right; 00.2 awaits forever (the kernel cannot be interrupted and is stopped).
    hang = _with_source(SOLUTION, _work_id("00.2"), "import asyncio\nawait asyncio.Event().wait()\n")

    # All right, but a mess: markdown deleted, a check duplicated and moved above its exercise, the other check
    # deleted, megabytes printed, an error, and writes aimed at the course repository.
    messy = copy.deepcopy(SOLUTION)
    cells = [c for c in messy["cells"] if c["cell_type"] == "code"]
    check1 = next(c for c in cells if c.get("id") == _check_id("00.1"))
    cells = [c for c in cells if c.get("id") != _check_id("00.2")]
    cells.insert(cells.index(_cell(messy, _work_id("00.1"))), copy.deepcopy(check1))
    dup = copy.deepcopy(check1)
    dup["id"] = "my-copy"
    cells.append(dup)
    noisy = {"cell_type": "code", "id": "noisy", "metadata": {}, "execution_count": None, "outputs": []}
    cells.insert(3, noisy | {"source": "print('x' * 3_000_000)\n"})
    cells.insert(4, noisy | {"id": "oops", "source": "1 / 0\n"})
    intruder = (
        "import pathlib, helpers\n"
        "pathlib.Path(helpers.__file__).with_name('GRADER_WAS_HERE.txt').write_text('x')\n"
        "pathlib.Path('../solutions').mkdir(exist_ok=True)\n"
        "pathlib.Path('../solutions/00_welcome.ipynb').write_text('{}')\n"
        f"pathlib.Path({str(fake_repo / 'helpers' / 'checks' / 'nb00.py')!r}).write_text('# gone')\n"
    )
    cells.insert(5, noisy | {"id": "intruder", "source": intruder})
    messy["cells"] = cells

    attacker = _after(LEARNER, "setup", _code("attack", ATTACK.format(repo=str(fake_repo), sleep=SLEEP)))
    forger = copy.deepcopy(LEARNER)
    forger["cells"].append(_code("forge", FORGE.format(saw=str(root.parent / "forger-saw.json"))))

    return {
        "aaa-attacker": attacker,
        "forger": forger,
        "correct": SOLUTION,
        "untouched": LEARNER,
        "half": half,
        "tampered": tampered,
        "endless": endless,
        "hang": hang,
        "messy": messy,
        "corrupt": b'{"cells": [ {"cell_type": "code", "source": "pri',
        "not-a-notebook": b'{"hello": "world"}',
        "nothing": None,
        "renamed": ("00_welcome-Copy1.ipynb", SOLUTION),
    }


def write_class(root: Path, learners: dict[str, Any]) -> None:
    for learner, content in learners.items():
        folder = root / learner
        folder.mkdir(parents=True)
        name = f"{NB}.ipynb"
        if isinstance(content, tuple):
            name, content = content
        if content is None:
            continue
        data = content if isinstance(content, bytes) else json.dumps(content, indent=1).encode()
        (folder / name).write_bytes(data)


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module", autouse=True)
def grading_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevServer]:
    """A server of this module's own (see tests/grading_support.py)."""
    with private_server(tmp_path_factory.mktemp("server")) as dev:
        yield dev


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("grading")
    subs, out, fake_repo = base / "submissions", base / "out", base / "repo"
    # A copy of the course the grader takes helpers/ and tests/nbval.cfg from (and watches), for notebooks to attack.
    shutil.copytree(build.ROOT / "helpers", fake_repo / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    (fake_repo / "tests").mkdir()
    shutil.copy2(build.ROOT / "tests" / "nbval.cfg", fake_repo / "tests" / "nbval.cfg")
    write_class(subs, build_class(subs, fake_repo))
    # Not notebooks: a FIFO (reading it would block), a broken link, a learner folder linked from outside.
    (subs / "fifo").mkdir()
    os.mkfifo(subs / "fifo" / f"{NB}.ipynb")
    (subs / "broken-link").mkdir()
    (subs / "broken-link" / f"{NB}.ipynb").symlink_to(base / "nowhere.ipynb")
    (base / "elsewhere").mkdir()
    (subs / "linked").symlink_to(base / "elsewhere")
    before = fingerprint(subs)
    settings = notebook.Settings(
        cell_timeout=CELL_TIMEOUT, notebook_timeout=60, source=fake_repo, watch=(fake_repo,), watch_environment=False
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nbval_run, "new_key", lambda: KEY)
        book = run.grade(subs, out, jobs=2, only_notebooks=["00"], settings=settings, quiet=True)
    rows = {(r.learner, r.exercise): r for r in book.rows}
    return {
        "book": book,
        "rows": rows,
        "subs": subs,
        "out": out,
        "before": before,
        "fake_repo": fake_repo,
        "base": base,
        "sleeping": _sleeping(),
    }


def statuses(graded: dict[str, Any], learner: str) -> dict[str, str]:
    return {ex: graded["rows"][(learner, ex)].status for ex in EXERCISES}


def test_all_correct_gets_full_marks(graded):
    for ex in EXERCISES:
        row = graded["rows"][("correct", ex)]
        assert (row.status, row.points, row.max_points) == ("passed", 1, 1)
        assert row.message and "passed" not in row.message  # the check's own note, without the verdict words


def test_untouched_learner_notebook_is_not_done_with_hints(graded):
    for ex in EXERCISES:
        row = graded["rows"][("untouched", ex)]
        assert (row.status, row.points) == ("not_done", 0)
        assert len(row.message) > 10


def test_half_done_gets_half(graded):
    got = sum(graded["rows"][("half", ex)].points for ex in EXERCISES)
    assert got == len(EXERCISES) // 2
    assert statuses(graded, "half") == {
        ex: "passed" if i < len(EXERCISES) // 2 else "not_done" for i, ex in enumerate(EXERCISES)
    }


def test_edited_check_cells_cannot_fake_a_pass(graded):
    assert statuses(graded, "tampered") == {"00.1": "not_done", "00.2": "failed"}
    assert "WORKFLOW_TASKS = 3" in graded["rows"][("tampered", "00.2")].message  # the real check's hint
    notes = graded["book"].notes["tampered/00_welcome"]
    for ex in EXERCISES:  # the instructor learns that code in the check cell did not run
        assert any(
            f"check cell of {ex} was edited" in n and "edits to the check cell were discarded" in n for n in notes
        )


def test_corrupt_and_non_notebook_files_are_error_rows(graded):
    for learner, words in (("corrupt", "not valid notebook JSON"), ("not-a-notebook", "not a Jupyter notebook")):
        for ex in EXERCISES:
            row = graded["rows"][(learner, ex)]
            assert (row.status, row.points, row.max_points) == ("error", 0, 1)
            assert words in row.message


def test_missing_and_renamed_notebooks(graded):
    assert statuses(graded, "nothing") == dict.fromkeys(EXERCISES, "missing")
    assert statuses(graded, "renamed") == dict.fromkeys(EXERCISES, "passed")
    assert any("00_welcome-Copy1.ipynb" in n for n in graded["book"].notes["renamed/00_welcome"])


def test_endless_loop_is_a_timeout_row_and_the_rest_is_still_graded(graded):
    assert statuses(graded, "endless") == {"00.1": "timeout", "00.2": "passed"}
    assert statuses(graded, "hang") == {"00.1": "passed", "00.2": "timeout"}
    timings = graded["book"].meta["timings"]
    for learner in ("endless", "hang"):
        seconds, runs = timings[f"{learner}/{NB}"]
        assert runs == 2  # the hanging cell skipped in a second run
        # one cell timeout (+ nbval's 5 s interrupt wait) plus two ordinary runs
        assert seconds < 2 * CELL_TIMEOUT + 5 + 2 * 10, seconds
    assert "did not finish within 4 s" in graded["rows"][("endless", "00.1")].message


def test_deleted_reordered_duplicated_cells_and_noise_still_grade(graded):
    assert statuses(graded, "messy") == dict.fromkeys(EXERCISES, "passed")
    notes = " | ".join(graded["book"].notes["messy/00_welcome"])
    assert "extra copy" in notes and "moved below" in notes and "restored" in notes
    assert "review cell 'intruder'" in notes and "__file__" in notes


def test_writes_to_the_course_repository_are_contained_and_reported(graded):
    # The kernel imported a private copy of helpers/, and ran in a private working folder.
    assert not (build.ROOT / "helpers" / "GRADER_WAS_HERE.txt").exists()
    assert _load(build.SOLUTIONS / f"{NB}.ipynb")["cells"]
    # An absolute path into a watched folder cannot be prevented, but it is reported.
    assert (graded["fake_repo"] / "helpers" / "checks" / "nb00.py").read_text() == "# gone"
    notes = " | ".join(graded["book"].notes["messy/00_welcome"])
    assert "files in the course repository changed" in notes and "nb00.py" in notes


def test_a_notebook_that_rewrites_the_course_files_changes_no_other_grade(graded):
    repo = graded["fake_repo"]
    attacker = (graded["book"].notes.get("aaa-attacker/00_welcome"), _log(graded, "aaa-attacker"))
    assert "well done." in (repo / "helpers" / "checks" / "__init__.py").read_text(), attacker  # it happened…
    assert "replace: X" in (repo / "tests" / "nbval.cfg").read_text()
    # …but every kernel got the snapshot taken before the first notebook ran: stubs are still "not done".
    assert statuses(graded, "aaa-attacker") == dict.fromkeys(EXERCISES, "not_done")
    assert statuses(graded, "untouched") == dict.fromkeys(EXERCISES, "not_done")
    assert statuses(graded, "half")["00.2"] == "not_done"
    # Loud: a warning on top of the report, and a note on every notebook that ran during or after the change.
    book = graded["book"]
    assert any("__init__.py" in w and "nbval.cfg" in w for w in book.meta["warnings"])
    assert "**Warning:**" in (graded["out"] / "report.md").read_text(encoding="utf-8")
    assert "class='warn'" in (graded["out"] / "report.html").read_text(encoding="utf-8")
    for key in book.meta["timings"]:  # every notebook that ran
        assert any("changed" in n for n in book.notes[key]), key


def test_a_notebook_cannot_forge_or_replay_its_results(graded):
    for ex in EXERCISES:
        row = graded["rows"][("forger", ex)]
        assert (row.status, row.points) == ("error", 0)
        assert row.message.startswith(notebook.TAMPERED)
    saw = json.loads((graded["base"] / "forger-saw.json").read_text())
    assert saw["environ"] and saw["cmdline"]  # it could read its parent's environment and command line…
    everything = json.dumps(saw)
    assert KEY.hex() not in everything and "results-" not in everything  # …but neither the key nor the file name
    assert nbval_plugin.HANDSHAKE_VAR not in saw["env"] and "key" not in saw["stdin"]


def test_processes_a_notebook_detaches_are_stopped(graded):
    assert graded["sleeping"] == []
    book = graded["book"]
    said = " ".join([*book.meta["warnings"], *(n for notes in book.notes.values() for n in notes)])
    assert f"sleep {SLEEP}" in said, (said, _log(graded, "aaa-attacker"))


def _log(graded: dict[str, Any], learner: str) -> str:
    path = graded["out"] / "logs" / submissions.learner_slug(learner) / f"{NB}.txt"
    return path.read_text()[:3000] if path.exists() else "(no log)"


def test_fifos_broken_links_and_links_outside_the_submissions(graded):
    for learner, words in (("fifo", "FIFO"), ("broken-link", "broken symbolic link")):
        for ex in EXERCISES:
            row = graded["rows"][(learner, ex)]
            assert row.status == "error" and words in row.message, row
    assert statuses(graded, "linked") == dict.fromkeys(EXERCISES, "missing")
    assert any(
        "symbolic link" in n and "outside the submissions" in n for n in graded["book"].notes["linked/00_welcome"]
    )


def test_submissions_are_byte_identical_after_grading(graded):
    assert fingerprint(graded["subs"]) == graded["before"]


def test_gradebook_files(graded):
    out = graded["out"]
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == list(gradebook.FIELDS)
    assert len(rows) == LEARNERS * len(EXERCISES)
    assert {r["status"] for r in rows} <= set(gradebook.STATUSES)
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        summary = {r["learner"]: r for r in csv.DictReader(f)}
    assert summary["correct"][NB] == summary["correct"]["total"] == str(len(EXERCISES))
    assert summary["half"]["total"] == str(len(EXERCISES) // 2)
    assert summary["untouched"]["max_total"] == str(len(EXERCISES))
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "tampered" in report and "WORKFLOW_TASKS = 3" in report
    assert "not right yet" not in report  # verdict words become statuses
    assert "### tampered" in (out / "report.md").read_text(encoding="utf-8")
    assert not list(out.glob(".*.tmp"))
    assert (out / "logs" / "endless" / f"{NB}.txt").read_text().count("=== run") == 2


def test_regrading_one_learner_replaces_only_their_rows(graded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(graded["out"], out)
    subs = tmp_path / "subs"
    write_class(subs, {"corrupt": LEARNER, "correct": b"ignored: not regraded"})
    book = run.grade(
        subs, out, jobs=1, only_learners=["corrupt"], only_notebooks=["00"], settings=notebook.Settings(), quiet=True
    )
    rows = {(r.learner, r.exercise): r.status for r in book.rows}
    assert {rows[("corrupt", ex)] for ex in EXERCISES} == {"not_done"}
    assert {rows[("correct", ex)] for ex in EXERCISES} == {"passed"}
    assert len(book.rows) == LEARNERS * len(EXERCISES)
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        assert sum(1 for r in csv.DictReader(f) if r["learner"] == "corrupt" and r["status"] == "not_done") == 2


# --------------------------------------------------------------------------- without running notebooks


def test_graded_copy_restores_check_cells_and_clears_learner_outputs():
    tampered = _with_source(SOLUTION, _check_id("00.1"), "print('✅ 00.1 passed: trust me')")
    copy_ = copies.graded_copy(tampered, REF)
    checks = [c for c in copy_.notebook["cells"] if "check" in c.get("metadata", {}).get("tags", [])]
    assert [c["source"] for c in checks] == [_source(SOLUTION, _check_id(ex)) for ex in EXERCISES]
    assert all(c["execution_count"] is not None and c["outputs"] for c in checks)
    others = [c for c in copy_.notebook["cells"] if c["cell_type"] == "code" and c not in checks]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in others)
    ids = [c["id"] for c in copy_.notebook["cells"]]
    assert len(ids) == len(set(ids))
    import nbformat

    nbformat.validate(nbformat.from_dict(copy_.notebook))


def test_graded_copy_puts_a_lost_check_below_the_exercise_cell():
    nb = copy.deepcopy(LEARNER)
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != _check_id("00.1")]
    cells = copies.graded_copy(nb, REF).notebook["cells"]
    ids = [c["id"] for c in cells]
    assert ids[ids.index(_work_id("00.1")) + 1] == "check-00-1"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2, 3]", "not a Jupyter notebook"),
        (b'{"cells": [{"cell_type": "markdown", "source": "hi"}]}', "no code cells"),
        (b"", "not valid notebook JSON"),
    ],
)
def test_read_submission_explains_bad_files(tmp_path, content, words):
    path = tmp_path / "x.ipynb"
    path.write_bytes(content)
    with pytest.raises(submissions.SubmissionError, match=words):
        submissions.read_submission(path)


def test_cli_usage_and_a_class_with_nothing_handed_in(tmp_path):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    cmd = [sys.executable, "-m", "helpers.grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--jobs", "1"]
    done = subprocess.run(
        [*cmd, "--notebook", "00", "--notebook", "01"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out" / "grades.csv", newline="", encoding="utf-8") as f:
        assert {r["status"] for r in csv.DictReader(f)} == {"missing"}
    cmd = [sys.executable, "-m", "helpers.grade", str(tmp_path / "nope")]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "not a folder" in bad.stderr


# --------------------------------------------------------------------------- integrity, without running notebooks


def _signed(key: bytes, records: list[dict[str, Any]]) -> list[bytes]:
    lines = []
    for n, rec in enumerate(records):
        payload = json.dumps({**rec, "seq": n}, sort_keys=True).encode()
        lines.append(nbval_plugin.sign(key, payload).encode() + b" " + payload)
    return lines


def test_read_records_accepts_the_plugins_lines_and_rejects_forged_ones(tmp_path):
    key, path = bytes(32), tmp_path / "results.jsonl"
    cell = {"cell_id": "work", "when": "call", "ok": True}
    check = {"cell_id": "check-00-1", "when": "call", "ok": False}
    good = _signed(key, [cell, check, {"finished": True}])
    path.write_bytes(b"\n".join(good) + b"\n")
    records, order, finished, tampered = nbval_run.read_records(path, key)
    assert (order, finished, tampered) == (["work", "check-00-1"], True, None)
    assert records["work"]["ok"] is True
    path.write_bytes(b"\n".join(good[:2]) + b"\n" + good[2][:20])  # a run killed in the middle of a line
    assert nbval_run.read_records(path, key)[2:] == (False, None)

    forged = json.dumps({**check, "ok": True, "seq": 1}).encode()
    cases = {
        "not signed": [good[0], b"0" * 64 + b" " + forged],
        "out of sequence": [good[0], good[0]],  # a signed line replayed
        "two results": _signed(key, [cell, check, {**check, "ok": True}]),
        "after the end": _signed(key, [cell, {"finished": True}, check]),
    }
    cases["not signed "] = _signed(bytes(range(32)), [cell, {**check, "ok": True}])  # another run's key
    for words, lines in cases.items():
        path.write_bytes(b"\n".join(lines) + b"\n")
        tampered = nbval_run.read_records(path, key)[3]
        assert tampered and words.strip() in tampered, (words, tampered)


def test_kernel_environment_has_no_secret_and_no_results_path(tmp_path):
    env = isolation.kernel_env({"COURSE_GRADE_RESULTS": "/x", "PATH": "/bin"}, tmp_path / "home", tmp_path / "lib", "t")
    assert "COURSE_GRADE_RESULTS" not in env and env[nbval_plugin.HANDSHAKE_VAR] == "stdin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONPATH"] == str(tmp_path / "lib")
    from helpers import waits

    assert float(env[waits.WAIT_SCALE_VAR]) > 1, "graded notebooks share a busy machine: their waits stretch"


def test_course_files_are_a_snapshot_and_edits_to_a_copy_are_seen(tmp_path):
    src = tmp_path / "course"
    (src / "helpers" / "checks").mkdir(parents=True)
    (src / "tests").mkdir()
    (src / "helpers" / "__init__.py").write_text("X = 1\n")
    (src / "helpers" / "checks" / "__init__.py").write_text("Y = 1\n")
    (src / "tests" / "nbval.cfg").write_text("regex: a\nreplace: b\n")
    course = course_files.CourseFiles(src)
    (src / "helpers" / "__init__.py").write_text("X = 2\n")  # changed after the snapshot: not copied
    lib = tmp_path / "lib"
    written = course.write(lib)
    assert (lib / "helpers" / "__init__.py").read_text() == "X = 1\n"
    assert (lib / "nbval.cfg").read_text() == "regex: a\nreplace: b\n"
    assert any(rel.endswith(".pyc") for rel in written)  # kernels need not write byte-code
    assert course.changes(lib, written) == []
    time.sleep(0.05)
    target = lib / "helpers" / "checks" / "__init__.py"
    st = target.stat()
    target.write_text("Y = 2\n")  # same size, and the modification time put back
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    evil = lib / "helpers" / "__pycache__" / "evil.cpython-311.pyc"
    evil.write_bytes(b"x")
    (lib / "helpers" / "notes.txt").write_text("harmless")
    assert course.changes(lib, written) == ["helpers/__pycache__/evil.cpython-311.pyc", "helpers/checks/__init__.py"]


def test_repo_watch_notices_an_edit_that_restores_size_and_mtime(tmp_path):
    target = tmp_path / "checks.py"
    target.write_text("ok = 1\n")
    st = target.stat()
    alarms: list[str] = []
    watcher = watch.RepoWatch([tmp_path], on_alarm=alarms.append)
    time.sleep(0.05)
    with watcher.running_as("ada/00") as during, watcher.running_as("bob/00") as beside:
        target.write_text("ok = 2\n")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with watcher.running_as("cy/00") as later:
        pass
    assert "checks.py" in during[0] and "checks.py" in beside[0]  # both ran while it changed
    assert "graded after" in later[0] and len(alarms) == 1 and "ada/00" in alarms[0]


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ("import types\n_ok = chr(0x2705)\nnb00 = types.SimpleNamespace(check_greet_team=print)\n", "rebinds nb00"),
        ("import types\n_ok = chr(0x2705)\n", "verdict symbols"),
        ("s = '\\u2705 00.1 passed: ok'", "verdict symbols"),
        ("s = b'\\xe2\\x9c\\x85'.decode()", "verdict symbols"),
        ("import unicodedata\ns = unicodedata.lookup('WHITE HEAVY CHECK MARK')", "verdict symbols"),
        ("import sys, io\nsys.stdout = io.StringIO()", "assigns to sys.stdout"),
        ("def print(*args):\n    pass", "rebinds print"),
        ("exec(open('x.py').read())", "exec"),
        ("%%module nb00\nasync def check_greet_team(*a):\n    pass", "%%module nb00"),
        ("get_ipython().events.register('post_run_cell', print)", "IPython internals (.events)"),
        ("globals()['nb00'] = None", "globals"),
        ("g = globals()\ng['nb00'] = None", "globals"),
        ("from helpers.checks import nb00 as nb01\nnb00 = nb01", "rebinds nb00"),
        ("nb00.check_greet_team = print", "assigns to nb00.check_greet_team"),
        ("setattr(nb00, 'check_greet_team', print)", "setattr() on nb00"),
        ("import builtins\nbuiltins.setattr(nb00, 'check_greet_team', print)", "setattr() on nb00"),
        ("import builtins\nbuiltins.print = len", "assigns to builtins.print"),
        ("runtime.current = None", "assigns to runtime.current"),
        ("%run evil.py", "%run"),
        ("%%bash\necho hi", "cell magic %%bash"),
        ("for nb00 in range(3):\n    pass", "rebinds nb00"),
        ("import sys\nsys.modules['helpers.checks.nb00'] = None", "sys.modules"),
        ("x = 1\nobj?\nnb00.check = 1", "assigns to a check module"),  # not Python: the text rules
    ],
)
def test_review_flags_learner_code_that_could_fool_the_checks(source, label):
    assert label in review.review_flags(source, REF.protected, REF.modules)


def test_review_flags_stay_quiet_on_the_courses_own_code():
    refs = {r.name: r for r in references.load_references()}
    for folder in (build.SOLUTIONS, build.NOTEBOOKS):
        for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            ref = refs[path.stem]
            for cell in _load(path)["cells"]:
                if cell["cell_type"] == "code" and contract.check_exercise(cell) is None:
                    src = "".join(cell["source"])
                    assert review.review_flags(src, ref.protected, ref.modules) == [], (path.name, cell.get("id"))
    ordinary = (
        "names = ['Ada']\nfor n in names:\n    print(n, globals().get('X'))\nawait course.run(team.GreetTeam.run)"
    )
    assert review.review_flags(ordinary, REF.protected, REF.modules) == []


def test_review_flags_know_local_names_and_common_attribute_names():
    modules = {"meter", "runtime"}
    # A parameter or local variable named like a module is not the module (notebook 05's MeterReader).
    local = "def run(meter):\n    meter.readings += 1\n\ndef g():\n    runtime = object()\n    runtime.x = 1\n"
    assert review.review_flags(local, (), modules) == []
    assert review.review_flags("sizes = {r.number: r.events for r in runs}", (), modules) == []
    # A test's monkeypatch (notebook 07) is not setattr() on a module: it undoes itself after the test.
    assert review.review_flags("def test(monkeypatch):\n    monkeypatch.setattr(meter, 'x', 1)", (), modules) == []
    # The same assignments to the module itself are still noted: at top level, in a function, through `global`.
    assert "assigns to meter.readings" in review.review_flags("meter.readings = 0", (), modules)
    assert "assigns to runtime.current" in review.review_flags("def f():\n    runtime.current = None", (), modules)
    declared = "def f():\n    global runtime\n    runtime = 1\n    runtime.current = None"
    assert "assigns to runtime.current" in review.review_flags(declared, (), modules)
    hook = "ip = get_ipython()\nip.events.register('post_run_cell', print)"
    assert "IPython internals (.events)" in review.review_flags(hook, (), modules)


def test_graded_copy_notes_the_stealthy_rebinding(tmp_path):
    sneaky = "import types\n_ok = chr(0x2705)\nnb00 = types.SimpleNamespace()\n"
    nb = _after(LEARNER, "setup", _code("sneaky", sneaky))
    notes = " | ".join(copies.graded_copy(nb, REF).notes)
    assert "review cell 'sneaky'" in notes and "rebinds nb00" in notes and "verdict symbols" in notes


def test_report_files_keep_learners_apart_and_are_safe_to_open(tmp_path):
    def row(learner: str, message: str) -> gradebook.Row:
        return gradebook.Row(learner, NB, "00.1", 0, 1, "failed", message)

    book = gradebook.Gradebook(
        rows=[row("a b", '=HYPERLINK("http://x")'), row("a_b", "x | y"), row("Ada", "-1"), row("ada", "ok")],
        notes={"a b/00_welcome": ["a | note"]},
        notebooks=[(NB, 1)],
        meta={"graded_at": "now", "cell_timeout": 60, "warnings": ["careful | now"]},
    )
    gradebook.write_gradebook(tmp_path, book, logs={(r.learner, NB): r.learner for r in book.rows})
    assert sorted(p.read_text() for p in (tmp_path / "logs").rglob("*.txt")) == ["Ada", "a b", "a_b", "ada"]
    assert len({p.parent.name.lower() for p in (tmp_path / "logs").rglob("*.txt")}) == 4  # even on a case-blind disk
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    anchors = re.findall(r"<h3 id='([^']+)'", page)
    assert len(set(anchors)) == 4 and sorted(re.findall(r"href='#([^']+)'", page)) == sorted(anchors)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| x \\| y |" in md and "careful \\| now" in md
    line = next(line for line in md.splitlines() if "x \\| y" in line)
    assert len(re.findall(r"(?<!\\)\|", line)) == 6  # still five columns
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        messages = {r["learner"]: r["message"] for r in csv.DictReader(f)}
    assert messages["a b"].startswith("'=") and messages["Ada"] == "'-1" and messages["ada"] == "ok"


# --------------------------------------------------------------------------- the command line, failing early


def test_out_must_be_a_writable_folder_and_is_checked_before_grading(tmp_path, capsys):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    (tmp_path / "out").write_text("a file")
    started = time.monotonic()
    code = cli.main([str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 5  # before the server, the snapshot or any notebook


def test_a_regrade_refuses_to_merge_into_an_unreadable_gradebook(tmp_path, capsys):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "grades.csv").write_text("everyone's grades\n")
    for content in ("{not json", None):
        if content is None:
            (out / "gradebook.json").unlink()
        else:
            (out / "gradebook.json").write_text(content)
        code = cli.main([str(tmp_path / "subs"), "--out", str(out), "--learner", "ada", "--notebook", "00"])
        err = capsys.readouterr().err
        assert code == 2 and "gradebook.json" in err and "would be lost" in err, err
        assert (out / "grades.csv").read_text() == "everyone's grades\n"


KILL_GRADER = """\
import os, signal, subprocess, time
subprocess.Popen(["sh", "-c", "sleep {sleep} &"], env={{"PATH": "/usr/bin:/bin"}}, start_new_session=True)
time.sleep(4)  # the other job grades a notebook meanwhile
grader = int(open(f"/proc/{{os.getppid()}}/stat").read().rsplit(")", 1)[1].split()[1])  # pytest's parent
os.kill(grader, signal.SIGTERM)
"""


def test_a_notebook_that_terminates_the_grader_loses_only_unfinished_grades(tmp_path):
    subs, out, sleep = tmp_path / "subs", tmp_path / "out", SLEEP + "1"
    killer = _after(SOLUTION, "setup", _code("kill", KILL_GRADER.format(sleep=sleep)))
    write_class(subs, {"a-first": SOLUTION, "b-killer": killer, "c-later": SOLUTION})
    cmd = [sys.executable, "-m", "helpers.grade", str(subs), "--out", str(out), "--jobs", "2", "--notebook", "00"]
    done = subprocess.run(cmd, cwd=build.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = {(r["learner"], r["status"], r["message"]) for r in csv.DictReader(f)}
    statuses = {learner: status for learner, status, _ in rows}
    # The notebooks are taken in the order the run's queue hands them out: each is either graded or not, never half.
    assert statuses["b-killer"] == "error" and set(statuses.values()) <= {"passed", "error"}
    assert "passed" in statuses.values()  # graded while the killer waited: kept
    assert all(msg == notebook.INTERRUPTED for _, status, msg in rows if status == "error")
    unfinished = sum(1 for status in statuses.values() if status == "error")
    assert "interrupted" in done.stderr
    assert f"gradebook was written with {unfinished} notebook(s) not graded" in done.stderr
    assert "Grading was interrupted" in (out / "report.md").read_text(encoding="utf-8")
    assert not [p for p in psutil.process_iter(["cmdline"]) if sleep in (p.info["cmdline"] or [])]


DIES_ONCE = """
import os, pathlib
_marker = pathlib.Path({marker!r})
if not _marker.exists():  # the first kernel of the test dies while it starts, as one on a swamped machine may
    _marker.write_text("died once")
    os._exit(1)
"""


def test_a_kernel_that_dies_before_any_cell_ran_is_replaced_not_graded(tmp_path):
    """A kernel killed while starting ("Kernel died before replying to kernel_info", seen once under a full make
    test) says nothing about the notebook: the grader runs it again on a fresh kernel instead of an error row."""
    course = tmp_path / "course"
    shutil.copytree(build.ROOT / "helpers", course / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    (course / "tests").mkdir()
    shutil.copy2(build.ROOT / "tests" / "nbval.cfg", course / "tests" / "nbval.cfg")
    marker = tmp_path / "died"
    kernel_module = course / "helpers" / "kernel.py"  # the extension every course kernel loads as it starts
    kernel_module.write_text(kernel_module.read_text() + DIES_ONCE.format(marker=str(marker)))
    settings = notebook.Settings(cell_timeout=30, notebook_timeout=120, source=course, watch_environment=False)
    result = notebook.grade_submission(
        "ada", REF, SOLUTION, settings, tmp_path, dict(os.environ), course_files.CourseFiles(course)
    )
    assert marker.read_text() == "died once"
    assert [(r.status, r.points) for r in result.rows] == [("passed", 1)] * len(EXERCISES), result.rows
    assert result.runs == 2 and "a fresh one" in result.log and not result.notes
