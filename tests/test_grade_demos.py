"""The grader leaves out cells tagged ``demo`` (demonstrations no check depends on): every solution still gets full
marks without them, on a server as Temporal ships it (a workshop's cluster may round short timers up to 1 s and
wait 1 s per continue-as-new: none of the course's server settings), with no cell failing and nothing on stderr.
(Untouched learner notebooks graded the same way: tests/test_grade.py for notebook 00, and tests/bench_grade.py for
every notebook.)"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grading_support import private_server

from helpers import contract
from helpers.grading import graded_copy, references, run

REFS = {r.name: r for r in references.load_references()}
WELCOME = REFS["00_welcome"]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _ids(nb: dict[str, Any]) -> list[str]:
    return [c["id"] for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_notebook_tags_its_demonstrations():
    """Each solution marks its demonstrations, and none of them is an exercise or a check cell."""
    for ref in REFS.values():
        assert ref.demos, f"{ref.name} has no cell tagged demo"
        exercise_cells = {cid for ex in ref.exercises for cid in (*ex.work_ids, ex.check["id"])}
        assert not set(ref.demos) & exercise_cells, ref.name


def test_untouched_demo_cells_are_left_out_and_edited_ones_run():
    solution = _load(contract.SOLUTIONS / "00_welcome.ipynb")
    demos = set(WELCOME.demos)
    kept = graded_copy.graded_copy(solution, WELCOME)
    assert set(kept.demos) == demos and not demos & set(_ids(kept.notebook))
    assert set(_ids(graded_copy.graded_copy(solution, WELCOME, skip_demos=False).notebook)) >= demos

    learner = _load(contract.NOTEBOOKS / "00_welcome.ipynb")  # the learner template's demo cells: left out too
    assert set(graded_copy.graded_copy(learner, WELCOME).demos) == demos

    edited = copy.deepcopy(solution)
    run_cell = next(c for c in edited["cells"] if c.get("id") == "run")
    run_cell["source"] = "greeting = await course.run(hello.SayHello.run, 'Grace')\nHELPER = 42\n"
    setup = next(c for c in edited["cells"] if c.get("id") == "setup")
    setup["metadata"] = {"tags": ["demo"]}  # a learner's tag does not make a cell a demo
    graded = graded_copy.graded_copy(edited, WELCOME)
    assert "run" in _ids(graded.notebook) and "setup" in _ids(graded.notebook)
    assert set(graded.demos) == demos - {"run"}


@pytest.fixture(scope="module")
def class_graded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One learner hands in every solution, graded on a server of its own without the course's settings."""
    base = tmp_path_factory.mktemp("demos")
    (base / "subs" / "solution").mkdir(parents=True)
    for path in contract.discover(contract.SOLUTIONS):
        shutil.copy(path, base / "subs" / "solution" / path.name)
    with private_server(base / "server", course_config=False) as dev:
        book = run.grade(base / "subs", base / "out", jobs=2, quiet=True)
    logs = {p.relative_to(base / "out" / "logs").as_posix(): p.read_text() for p in (base / "out").rglob("*.txt")}
    yield {"rows": {(r.learner, r.notebook, r.exercise): r for r in book.rows}, "logs": logs, "port": dev.port}


def test_every_solution_gets_full_marks_with_its_demo_cells_left_out(class_graded):
    for ref in REFS.values():
        for ex in ref.exercises:
            row = class_graded["rows"][("solution", ref.name, ex.id)]
            assert (row.status, row.points) == ("passed", ex.points), row
        log = class_graded["logs"][f"solution/{ref.name}.txt"]
        assert f"left out {len(ref.demos)} untouched demo cell(s)" in log, ref.name
        cells = [line for line in log.splitlines() if line.startswith("--- ") and "pytest output" not in line]
        assert cells and not [c for c in cells if " FAILED " in c], (ref.name, cells)  # no graded cell failed
        assert "[stderr]" not in log, ref.name  # nothing on stderr (core WARN lines, tracebacks)
        assert f":{class_graded['port']}" in log, ref.name  # the setup cell found the plain server
