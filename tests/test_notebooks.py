"""Learner notebooks: Run All works on the generated stubs, and every check says "not done yet".

(Solutions are covered by strict nbval over solutions/ in the same pytest run.)
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import build, checks

LEARNER = sorted(build.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted(build.SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def _check_lines(cell) -> list[str]:
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_checks_store_passing_verdicts(path: Path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if (ex := build.exercise_of(cell)) is None:
            continue
        verdicts = [checks.parse(line) for line in _check_lines(cell)]
        assert verdicts == [checks.Verdict(ex, "passed", verdicts[0].message if verdicts[0] else "")], (
            f"{path.name} cell {cell.id}: expected one passing verdict, got {_check_lines(cell)}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_learner_notebook_runs_all_and_checks_say_not_done(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", allow_errors=False, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on any error not tagged raises-exception
    seen = []
    for cell in nb.cells:
        if (ex := build.exercise_of(cell)) is None:
            continue
        lines = _check_lines(cell)
        assert len(lines) == 1, f"{cell.id}: a check prints exactly one verdict line, got {lines}"
        verdict = checks.parse(lines[0])
        assert verdict is not None and verdict.exercise == ex, lines[0]
        assert verdict.status == "not_done", f"{path.name} {ex}: untouched stub should be 'not done yet': {lines[0]}"
        assert len(verdict.message) > 10, "a not-done verdict carries a hint"
        seen.append(ex)
    assert seen, f"{path.name} has no check cells"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    raising = [c for c in nb.cells if "raises-exception" in c.metadata.get("tags", [])]
    assert len(errors) <= len(raising)


CELL_BUDGET_S = 10.0
# A cell tagged `benchmark` deliberately measures (throughput, latency): it may take this long.
BENCHMARK_TAG, BENCHMARK_BUDGET_S = "benchmark", 30.0


def _budget(cell) -> float:
    return BENCHMARK_BUDGET_S if BENCHMARK_TAG in cell.metadata.get("tags", []) else CELL_BUDGET_S


def _seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_runs_twice_in_one_kernel_within_the_cell_budget(path: Path):
    """Run All, then Run All again in the same kernel (a learner re-running everything): no errors, no
    leftover workers or id clashes, the same verdicts, and every cell within its budget (10 s; 30 s for a cell
    tagged `benchmark`)."""
    nb = nbformat.read(path, as_version=4)
    twice = copy.deepcopy(nb)
    second = copy.deepcopy(nb.cells)
    for cell in second:
        cell.id = f"{cell.id}-again"[:64]
    twice.cells = nb.cells + second
    client = NotebookClient(
        twice, timeout=60, kernel_name="python3", allow_errors=False, resources={"metadata": {"path": str(path.parent)}}
    )
    client.record_timing = True
    client.execute()
    slow = {c.id: round(_seconds(c), 1) for c in twice.cells if c.cell_type == "code" and _seconds(c) > _budget(c)}
    assert not slow, f"cells over their budget ({CELL_BUDGET_S:g} s, {BENCHMARK_BUDGET_S:g} s if benchmark): {slow}"
    verdicts = [_check_lines(c) for c in twice.cells if build.exercise_of(c)]
    half = len(verdicts) // 2
    assert verdicts[:half] == verdicts[half:]
    assert all(lines and lines[0].startswith("✅") for lines in verdicts), verdicts
