"""The grader on synthetic submissions built from solutions/ and notebooks/ (notebook 00), against the session's
dev server. One class of learners is graded once (module fixture); each test reads its part of the gradebook."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import build, grade

NB = "00_welcome"
CELL_TIMEOUT = 4.0


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


SOLUTION = _load(build.SOLUTIONS / f"{NB}.ipynb")
LEARNER = _load(build.NOTEBOOKS / f"{NB}.ipynb")
REF = next(r for r in grade.load_references() if r.name == NB)
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


def build_class(root: Path, fake_repo: Path) -> dict[str, Any]:
    """learner -> notebook JSON (dict), raw bytes, or None (hands in nothing)."""
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

    return {
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
        if p.is_file()
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory, dev_server) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("grading")
    subs, out, fake_repo = base / "submissions", base / "out", base / "repo"
    (fake_repo / "helpers" / "checks").mkdir(parents=True)
    (fake_repo / "helpers" / "checks" / "nb00.py").write_text("# the real checks\n")
    write_class(subs, build_class(subs, fake_repo))
    before = fingerprint(subs)
    settings = grade.Settings(cell_timeout=CELL_TIMEOUT, notebook_timeout=60, watch=(fake_repo,))
    book = grade.grade(subs, out, jobs=2, only_notebooks=["00"], settings=settings, quiet=True)
    rows = {(r.learner, r.exercise): r for r in book.rows}
    return {
        "book": book,
        "rows": rows,
        "subs": subs,
        "out": out,
        "before": before,
        "fake_repo": fake_repo,
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


def test_submissions_are_byte_identical_after_grading(graded):
    assert fingerprint(graded["subs"]) == graded["before"]


def test_gradebook_files(graded):
    out = graded["out"]
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == list(grade.FIELDS)
    assert len(rows) == 11 * len(EXERCISES)
    assert {r["status"] for r in rows} <= set(grade.STATUSES)
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
    book = grade.grade(
        subs, out, jobs=1, only_learners=["corrupt"], only_notebooks=["00"], settings=grade.Settings(), quiet=True
    )
    rows = {(r.learner, r.exercise): r.status for r in book.rows}
    assert {rows[("corrupt", ex)] for ex in EXERCISES} == {"not_done"}
    assert {rows[("correct", ex)] for ex in EXERCISES} == {"passed"}
    assert len(book.rows) == 11 * len(EXERCISES)
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        assert sum(1 for r in csv.DictReader(f) if r["learner"] == "corrupt" and r["status"] == "not_done") == 2


# --------------------------------------------------------------------------- without running notebooks


def test_graded_copy_restores_check_cells_and_clears_learner_outputs():
    tampered = _with_source(SOLUTION, _check_id("00.1"), "print('✅ 00.1 passed: trust me')")
    copy_ = grade.graded_copy(tampered, REF)
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
    cells = grade.graded_copy(nb, REF).notebook["cells"]
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
    with pytest.raises(grade.SubmissionError, match=words):
        grade.read_submission(path)


def test_cli_usage_and_a_class_with_nothing_handed_in(tmp_path, dev_server):
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "helpers.grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--jobs", "1"],
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
