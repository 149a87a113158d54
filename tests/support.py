"""What every test file needs, in one place: run a check and read its verdict, take a cell out of a notebook.

(Not named ``helpers``: that is the course's package.) Import it as ``from support import ...``; pytest puts
``tests/`` on ``sys.path`` (rootdir-relative, no ``__init__.py``).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import build, checks, runtime


def verdict_of(capsys: pytest.CaptureFixture[str]) -> checks.Verdict:
    """The one verdict line a check printed (asserts there is exactly one, and that it parses)."""
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    verdict = checks.parse(lines[0])
    assert verdict is not None, lines[0]
    return verdict


def run_check(check: Callable[..., Awaitable[None]], *args: Any, capsys: pytest.CaptureFixture[str]) -> checks.Verdict:
    """Run a check (``check(*args)``, or a coroutine function taking no arguments) and return its verdict."""
    asyncio.run(check(*args))
    return verdict_of(capsys)


class Notebook:
    """A solution notebook's cells by id, as a learner gets them (``learner=True``: the generated stub)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells = {c.get("id"): c for c in nbformat.read(path, as_version=4).cells}

    def source(self, cell_id: str, *, learner: bool = False) -> str:
        """The cell's code, without its ``%%module`` line."""
        source = self.cells[cell_id].source
        if learner:
            source, _ = build.stub_source(source, cell_id)
        lines = source.split("\n")
        return "\n".join(lines[1:]) if lines[0].startswith("%%module") else source

    def module_name(self, cell_id: str) -> str:
        first = self.cells[cell_id].source.split("\n")[0]
        assert first.startswith("%%module"), f"{cell_id} is not a %%module cell"
        return first.split()[1]

    def module(
        self,
        scratch: Path,
        cell_id: str,
        *,
        learner: bool = False,
        edit: Callable[[str], str] | None = None,
        name: str | None = None,
    ) -> Any:
        """Write a ``%%module`` cell into ``scratch`` (as the magic would) and import it."""
        source = self.source(cell_id, learner=learner)
        if edit is not None:
            source = edit(source)
        return runtime.write_module(scratch, name or self.module_name(cell_id), source)

    def solution_body(self, cell_id: str) -> str:
        """The code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` in a cell, dedented."""
        lines = self.source(cell_id).split("\n")
        begin, end = _region(lines)
        return textwrap.dedent("\n".join(lines[begin + 1 : end]))

    def with_solution(self, cell_id: str, body: str) -> str:
        """The cell's code (without its ``%%module`` line) with its solution region replaced by ``body``: another
        learner's answer, in the cell as the learner gets it."""
        return swap_solution(self.source(cell_id), body)

    def stored_verdict(self, ex_id: str) -> str:
        """The verdict line the solution stores for ``ex_id``: the grader compares a learner's check output with it
        strictly, so every right answer must print exactly this line."""
        cell = next(c for c in self.cells.values() if build.exercise_of(c) == ex_id)
        return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream").strip()

    async def run_cell(self, cell_id: str, namespace: dict[str, Any]) -> None:
        """Run a code cell (top-level ``await`` allowed) in ``namespace``, as the kernel would."""
        code = compile(self.source(cell_id), f"<cell {cell_id}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result


def swap_solution(source: str, body: str) -> str:
    """``source`` with its solution region (the markers included) replaced by ``body``, dedented and then indented
    like the region."""
    lines = source.split("\n")
    begin, end = _region(lines)
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    answer = textwrap.indent(textwrap.dedent(body).strip("\n"), indent).split("\n")
    return "\n".join([*lines[:begin], *answer, *lines[end + 1 :]])


def _region(lines: list[str]) -> tuple[int, int]:
    """The line numbers of a cell's ``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers."""
    begin = next(i for i, line in enumerate(lines) if line.strip() == "### BEGIN SOLUTION")
    end = next(i for i, line in enumerate(lines) if line.strip() == "### END SOLUTION")
    return begin, end


def solution(name: str) -> Notebook:
    """``solution("01")`` → the solution notebook ``solutions/01_*.ipynb``."""
    (path,) = sorted(build.SOLUTIONS.glob(f"{name}_*.ipynb"))
    return Notebook(path)
