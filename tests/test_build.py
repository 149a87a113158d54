"""The generator: solution regions become stubs, check cells stay, and notebooks/ is in sync."""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import build, contract

IN_FUNCTION = """\
async def run(self, names):
    # TODO(03.2): call the activity for each name
    ### BEGIN SOLUTION
    return [n.upper() for n in names]
    ### END SOLUTION
"""

TOP_LEVEL = """\
# TODO(03.1): fill in the answers
### BEGIN SOLUTION
ANSWER: int = 42
NAMES = ["a", "b"]
print("only in the solution")

@decorate
async def helper(x: int) -> int:
    \"\"\"Docstring stays.\"\"\"
    return x + 1
### END SOLUTION
after = True
"""


def test_region_inside_a_function_raises_with_the_task():
    source, regions = build.stub_source(IN_FUNCTION, "t")
    assert "### BEGIN" not in source and "upper" not in source
    assert "    raise NotImplementedError('Exercise 03.2: call the activity for each name')" in source
    assert regions == [build.Region("03.2", "call the activity for each name")]
    compile(source, "stub", "exec")  # still valid Python


def test_top_level_region_keeps_names_and_signatures_so_run_all_goes_on():
    source, _ = build.stub_source(TOP_LEVEL, "t")
    assert "ANSWER = ...  # your answer (03.1)" in source
    assert "NAMES = ...  # your answer (03.1)" in source
    assert "print(" not in source and "x + 1" not in source
    assert '"""Docstring stays."""' in source
    namespace: dict = {"decorate": lambda f: f}
    exec(compile(source, "stub", "exec"), namespace)
    assert namespace["ANSWER"] is Ellipsis and namespace["after"] is True
    import asyncio

    with pytest.raises(NotImplementedError, match=r"Exercise 03\.1: fill in the answers"):
        asyncio.run(namespace["helper"](1))


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "needs a '# TODO"),
        ("# TODO(01.1): x\n### BEGIN SOLUTION\nx = 1\n", "without an END"),
        ("x = 1\n### END SOLUTION\n", "without a BEGIN"),
    ],
)
def test_broken_markers_are_authoring_errors(source, error):
    with pytest.raises(build.BuildError, match=error):
        build.stub_source(source, "t")


def _solution(*cells):
    nb = new_notebook(cells=list(cells))
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i}"
    return nb


def test_learner_copy_keeps_ids_and_check_source_and_drops_outputs():
    exercise = new_code_cell("# TODO(05.1): answer\n### BEGIN SOLUTION\nX = 1\n### END SOLUTION", metadata={})
    exercise.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    exercise.execution_count = 3
    check = new_code_cell("check(X)", metadata={"tags": ["check", "ex-05.1"]})
    only = new_markdown_cell("the answer is 1", metadata={"tags": ["solution-only"]})
    learner = build.learner_copy(_solution(new_markdown_cell("# T"), exercise, check, only), "05_x.ipynb")
    assert [c.id for c in learner.cells] == ["c0", "c1", "c2"]
    assert learner.cells[1].outputs == [] and learner.cells[1].execution_count is None
    assert learner.cells[2].source == "check(X)"
    assert learner.cells[2].metadata == {"tags": ["check", "ex-05.1"], "editable": False, "deletable": False}
    assert learner.metadata["kernelspec"]["name"] == "python3"


def test_exercise_without_check_cell_is_rejected():
    exercise = new_code_cell("# TODO(05.1): answer\n### BEGIN SOLUTION\nX = 1\n### END SOLUTION")
    with pytest.raises(build.BuildError, match=r"05\.1 have no check cell"):
        build.learner_copy(_solution(exercise), "05_x.ipynb")


def test_duplicate_check_cells_are_rejected():
    check = {"tags": ["check", "ex-05.1"]}
    nb = _solution(new_code_cell("a()", metadata=dict(check)), new_code_cell("b()", metadata=dict(check)))
    with pytest.raises(build.BuildError, match="more than one check cell"):
        build.learner_copy(nb, "05_x.ipynb")


def test_learner_notebooks_are_in_sync_with_solutions(tmp_path):
    """`make notebooks` would change nothing: notebooks/ is exactly what the generator makes."""
    written = build.build_notebooks(build.SOLUTIONS, tmp_path)
    assert written, "no solutions found"
    committed = sorted(p.name for p in build.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert committed == sorted(p.name for p in written)
    for path in written:
        assert (build.NOTEBOOKS / path.name).read_text() == path.read_text(), (
            f"notebooks/{path.name} is stale: run `make notebooks` and commit"
        )


def test_solutions_are_stored_normalized():
    for path in sorted(build.SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert path.read_text() == build.dumps(build.normalize(nb)), f"{path.name}: run `make solutions`"
        assert all(c.get("id") for c in nb.cells)
        counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
        assert all(isinstance(n, int) for n in counts), f"{path.name}: unexecuted cells have no nbval reference"


def test_links_between_notebooks_resolve():
    link = re.compile(r"\]\(([^)#\s]+\.ipynb)\)")
    for folder in (build.SOLUTIONS, build.NOTEBOOKS):
        for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            for cell in nbformat.read(path, as_version=4).cells:
                for target in link.findall(cell.source if cell.cell_type == "markdown" else ""):
                    assert (folder / target).exists(), f"{path.name} cell {cell.id} links to missing {target}"


def test_budgets_stretch_by_test_workers_per_core(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert contract.budget_stretch() == 1.0  # a learner's run, or the suite in one process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(3 * cores))
    assert contract.budget_stretch() == 3.0
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert contract.budget_stretch() == 1.0  # fewer workers than cores: never below the budget itself
