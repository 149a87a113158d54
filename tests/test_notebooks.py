"""Learner notebooks: Run All works on the generated stubs, and every check says "not done yet".

(Solutions are covered by strict nbval over solutions/ in the same pytest run, each run twice in one kernel with
every cell within its time budget: see ``--twice`` in the root conftest.py.)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import build, checks, contract, waits

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
def test_learner_notebook_runs_all_and_checks_say_not_done(path: Path, monkeypatch: pytest.MonkeyPatch):
    # Benchmark cells only need to work here (their numbers are never compared): measure a quarter of the time.
    monkeypatch.setenv(contract.BENCHMARK_SCALE_VAR, "0.25")
    # The kernel shares the cores with the other test workers: its waits stretch as the cell budgets do.
    monkeypatch.setenv(waits.WAIT_SCALE_VAR, f"{contract.budget_stretch():g}")
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
