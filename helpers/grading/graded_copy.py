"""The graded copy of a learner's notebook: the learner's cells in the learner's order, outputs cleared, and every
check cell restored from the solution (source, tags, outputs, execution count) — matched by cell id, else by its
``check`` + ``ex-NN.k`` tags, else re-inserted after the learner's exercise cell. Editing, moving, duplicating or
deleting a check cell changes nothing."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from helpers import contract
from helpers.grading.references import Exercise, Reference, normalized
from helpers.grading.review import imported_names, parse_cell, review_flags

CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class Role:
    kind: str  # "check", "work" (a cell tagged with an exercise) or "other"
    exercise: str | None
    label: str  # the learner's cell id (or a description) for messages


@dataclass
class GradedCopy:
    notebook: dict[str, Any]
    roles: dict[str, Role]  # graded cell id -> role
    notes: list[str]
    demos: list[str] = field(default_factory=list)  # the learner's untouched demo cells, left out


def graded_copy(
    submission: Mapping[str, Any], ref: Reference, skip: Iterable[str] = (), skip_demos: bool = True
) -> GradedCopy:
    """Learner cells (outputs cleared) with every check cell restored from the solution. ``skip``: graded ids
    to tag ``nbval-skip`` (cells that timed out in an earlier run). ``skip_demos``: leave out the learner's cells
    that are the solution's ``demo`` cells, untouched (same id, same code as the solution or the learner template;
    a demo cell the learner edited runs: their code may be in it)."""
    notes: list[str] = []
    items: list[dict[str, Any]] = []  # learner cells, then placeholders for checks
    for n, raw in enumerate(submission.get("cells", [])):
        if not isinstance(raw, dict) or raw.get("cell_type") not in ("code", "markdown", "raw"):
            notes.append(f"cell #{n + 1} is not a valid notebook cell; ignored")
            continue
        orig = raw.get("id") if isinstance(raw.get("id"), str) else None
        items.append({"orig": orig, "cell": raw, "n": n})

    check_ids = {ex.check.get("id"): ex.id for ex in ref.exercises}
    extra_checks = 0
    for ex in ref.exercises:
        # The learner's copy of this check: by id first, else the last cell tagged as this exercise's check.
        by_id = [
            i
            for i, it in enumerate(items)
            if it["orig"] == ex.check.get("id") and "check" not in it and it["cell"].get("cell_type") == "code"
        ]
        by_tag = [i for i, it in enumerate(items) if "check" not in it and contract.check_exercise(it["cell"]) == ex.id]
        position = by_id[0] if by_id else (by_tag[-1] if by_tag else None)
        theirs = {*by_id, *by_tag}
        if any(normalized(contract.source(items[i]["cell"])) != normalized(contract.source(ex.check)) for i in theirs):
            notes.append(
                f"check cell of {ex.id} was edited (its code differs from the solution's check): your edits to the "
                "check cell were discarded"
            )
        for i in theirs - ({position} if position is not None else set()):
            items[i]["drop"] = True
            extra_checks += 1
        if position is not None:
            items[position] = {"check": ex.id, "orig": ex.check.get("id")}
    items = [it for it in items if not it.get("drop")]
    if extra_checks:
        notes.append(f"{extra_checks} extra copy(ies) of check cells removed (only one check per exercise runs)")

    def work_positions(ex: Exercise) -> list[int]:
        return [
            i
            for i, it in enumerate(items)
            if "check" not in it
            and it["cell"].get("cell_type") == "code"
            and (it["orig"] in ex.work_ids or contract.exercise_tag(it["cell"]) == ex.id)
        ]

    for ex in ref.exercises:
        pos = next((i for i, it in enumerate(items) if it.get("check") == ex.id), None)
        work = work_positions(ex)
        if pos is not None and (not work or pos > work[-1]):
            continue  # the check sits below the learner's exercise code: keep the learner's order
        placeholder = {"check": ex.id, "orig": ex.check.get("id")}
        if pos is not None:  # above the exercise code: move it right below the last exercise cell
            items.pop(pos)
            work = work_positions(ex)
            items.insert(work[-1] + 1, placeholder)
            notes.append(f"check cell of {ex.id} was above its exercise cell; moved below it")
        elif work:
            items.insert(work[-1] + 1, placeholder)
            notes.append(f"check cell of {ex.id} was missing; restored below the exercise cell")
        else:  # no exercise cell either: where the solution has it, after the same neighbour
            anchor = next((i for i, it in enumerate(items) if ex.before_id and it.get("orig") == ex.before_id), None)
            items.insert(len(items) if anchor is None else anchor + 1, placeholder)
            notes.append(f"check cell of {ex.id} was missing; restored")

    skip = set(skip)
    by_ex = {ex.id: ex for ex in ref.exercises}
    imported: set[str] = set()  # modules the learner's cells import: assigning their attributes is worth a look
    for it in items:
        if "check" not in it and it["cell"].get("cell_type") == "code":
            tree = parse_cell(contract.source(it["cell"]))
            imported |= imported_names(tree) if tree is not None else set()
    cells: list[dict[str, Any]] = []
    roles: dict[str, Role] = {}
    used: set[str] = set()
    demos: list[str] = []
    for it in items:
        if skip_demos and "check" not in it and _untouched_demo(it["orig"], it["cell"], ref):
            demos.append(it["orig"])
            continue
        if "check" in it:
            ex = by_ex[it["check"]]
            cell = copy.deepcopy(ex.check)
            cell_id = _unique(f"check-{ex.id.replace('.', '-')}", used)
            cell["id"] = cell_id
            cell["metadata"] = {"tags": contract.tags(ex.check)}
            if cell_id in skip:
                cell["metadata"]["tags"].append(contract.NBVAL_SKIP)
            roles[cell_id] = Role("check", ex.id, f"check cell of {ex.id}")
            cells.append(cell)
            continue
        raw = it["cell"]
        orig = it["orig"]
        base = orig if orig and CELL_ID.match(orig) and orig not in check_ids else f"cell-{it['n'] + 1}"
        cell_id = _unique(base, used)
        tags = [t for t in contract.tags(raw) if t != contract.CHECK]
        kind = raw["cell_type"]
        cell = {
            "cell_type": kind,
            "id": cell_id,
            "metadata": {"tags": tags} if tags else {},
            "source": contract.source(raw),
        }
        if kind == "code":
            cell.update(outputs=[], execution_count=None)
            if cell_id in skip:
                cell["metadata"] = {"tags": [*tags, contract.NBVAL_SKIP]}
            ex_id = contract.exercise_tag(raw) if contract.exercise_tag(raw) in by_ex else None
            if ex_id is None and orig:
                ex_id = next((e.id for e in ref.exercises if orig in e.work_ids), None)
            label = f"cell {orig!r}" if orig else f"code cell #{it['n'] + 1}"
            roles[cell_id] = Role("work" if ex_id else "other", ex_id, label)
            if normalized(cell["source"]) not in ref.known_sources:
                hits = review_flags(cell["source"], ref.protected, ref.modules | imported)
                if hits:
                    notes.append(f"review {label}: learner code touches {', '.join(hits)}")
        cells.append(cell)
    nb = {
        "cells": cells,
        "metadata": contract.notebook_metadata(),
        "nbformat": contract.NBFORMAT,
        "nbformat_minor": contract.NBFORMAT_MINOR,
    }
    return GradedCopy(nb, roles, notes, demos)


def _untouched_demo(orig: str | None, cell: Mapping[str, Any], ref: Reference) -> bool:
    sources = ref.demos.get(orig or "")
    return bool(sources) and cell.get("cell_type") == "code" and normalized(contract.source(cell)) in sources


def _unique(base: str, used: set[str]) -> str:
    candidate, n = base[:60], 2
    while candidate in used:
        candidate = f"{base[:56]}-{n}"
        n += 1
    used.add(candidate)
    return candidate
