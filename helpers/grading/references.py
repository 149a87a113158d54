"""The solutions as the grader needs them: each notebook's exercises, the check cells that are the nbval reference,
and what a learner's untouched cells look like. Read once, before any notebook runs (later changes on disk do not
matter to a grading run)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    # Cells the solution tags `demo` (nothing a check needs depends on them): cell id -> their normalized sources
    # in the solution and the learner template. A learner's cell with that id and one of those sources is skipped.
    demos: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    problem: str | None = None  # why this solution cannot be the reference (then the grader refuses to grade it)

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


def _unexecuted(path: Path, exercises: list[Exercise]) -> str | None:
    """A check cell without a stored output is compared with nothing: nbval would pass every learner."""
    bare = [ex.id for ex in exercises if ex.check.get("execution_count") is None or not ex.check.get("outputs")]
    if not bare:
        return None
    return (
        f"solutions/{path.name}: the check cell of {', '.join(bare)} has no stored output, so strict nbval would "
        f"compare nothing and pass every learner. Re-execute the solution first: make solutions NB={path.name[:2]}"
    )


def load_references(solutions: Path = contract.SOLUTIONS, learner_dir: Path | None = None) -> list[Reference]:
    """Every ``solutions/NN_*.ipynb`` with its check cells, read once (later changes on disk do not matter)."""
    templates = learner_dir or contract.NOTEBOOKS
    return references_from(
        {p.stem: p.read_bytes() for p in contract.discover(solutions)},
        {p.stem: p.read_bytes() for p in contract.discover(templates)},
    )


def references_from(solutions: Mapping[str, bytes], templates: Mapping[str, bytes]) -> list[Reference]:
    """The references of solution notebooks given as bytes (name -> JSON); ``templates`` are their learner copies
    (a missing one is generated)."""
    from helpers import build

    refs = []
    for name in sorted(solutions):
        path = Path(f"{name}.ipynb")
        nb = json.loads(solutions[name].decode("utf-8"))
        cells = nb.get("cells", [])
        known = _code_sources(cells)
        if name in templates:
            tcells = json.loads(templates[name].decode("utf-8")).get("cells", [])
        else:  # no generated copy yet: derive it
            import nbformat

            tcells = build.learner_copy(nbformat.from_dict(copy.deepcopy(nb)), path.name).cells
        known |= _code_sources(tcells)
        demos = {
            c["id"]: frozenset(normalized(contract.source(t)) for t in (c, *tcells) if t.get("id") == c["id"])
            for c in cells
            if contract.is_demo(c) and c.get("id")
        }
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
        problem = _unexecuted(path, exercises)
        refs.append(Reference(name, tuple(exercises), frozenset(known), protected, frozenset(names), demos, problem))
    return refs
