"""The solutions as the grader needs them: each notebook's exercises, the check cells that are the nbval reference,
and what a learner's untouched cells look like. Read once, before any notebook runs (later changes on disk do not
matter to a grading run)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import contract
from helpers.grading.review import check_names, imported_names, parse_cell


@dataclass(frozen=True)
class Exercise:
    id: str
    check: dict[str, Any]  # the solution's check cell (JSON), the reference for strict comparison
    work_ids: tuple[str, ...]  # ids of the solution cells tagged ex-NN.k that are not the check
    before_id: str | None  # the solution cell just before the check cell (fallback anchor)
    points: int = 1


@dataclass(frozen=True)
class Reference:
    name: str  # "00_welcome"
    exercises: tuple[Exercise, ...]
    known_sources: frozenset[str]  # normalized sources of solution and learner-template code cells
    protected: frozenset[str] = frozenset()  # names the check cells call through (nb00)
    modules: frozenset[str] = frozenset()  # what the solution imports or defines with %%module, and `course`

    @property
    def prefix(self) -> str:
        return self.name[:2]

    @property
    def max_points(self) -> int:
        return sum(ex.points for ex in self.exercises)


def normalized(source: str) -> str:
    """A cell's source for comparison: blank lines and indentation-only changes do not count."""
    return "\n".join(line.strip() for line in source.splitlines() if line.strip())


def _code_sources(cells: list[dict[str, Any]]) -> set[str]:
    return {normalized(contract.source(c)) for c in cells if c.get("cell_type") == "code"}


def load_references(solutions: Path = contract.SOLUTIONS, learner_dir: Path | None = None) -> list[Reference]:
    """Every ``solutions/NN_*.ipynb`` with its check cells, read once (later changes on disk do not matter)."""
    from helpers import build

    refs = []
    for path in contract.discover(solutions):
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb.get("cells", [])
        known = _code_sources(cells)
        template = (learner_dir or contract.NOTEBOOKS) / path.name
        if template.exists():
            known |= _code_sources(json.loads(template.read_text(encoding="utf-8")).get("cells", []))
        else:  # no generated copy yet: derive it
            import nbformat

            learner = build.learner_copy(nbformat.from_dict(copy.deepcopy(nb)), path.name)
            known |= _code_sources(learner.cells)
        exercises = []
        for i, cell in enumerate(cells):
            ex = contract.check_exercise(cell)
            if ex is None:
                continue
            work = tuple(
                c["id"]
                for c in cells
                if c.get("id") and contract.exercise_tag(c) == ex and contract.check_exercise(c) is None
            )
            before = cells[i - 1].get("id") if i > 0 else None
            exercises.append(Exercise(ex, copy.deepcopy(cell), work, before))
        names = {"course"}  # the setup cell's session object (the contract: course = await runtime.start("NN"))
        for c in cells:
            if m := re.match(r"\s*%%module\s+(\w+)", contract.source(c)):
                names.add(m[1])
            elif c.get("cell_type") == "code" and (tree := parse_cell(contract.source(c))) is not None:
                names |= imported_names(tree, top_level_only=True)
        protected = check_names(ex.check for ex in exercises)
        refs.append(Reference(path.stem, tuple(exercises), frozenset(known), protected, frozenset(names)))
    return refs
