"""Planning a grading run on the grading command's side: which learner handed in which notebook, what can be
decided without running anything (missing, unreadable, too large to travel), the payload each notebook travels as
(outputs stripped), and the run's identity, which decides whether a command resumes an earlier one.

The command also serves the notebooks to the run (``course_grade_fetch`` on its own task queue): the learner's
workflow asks for them one at a time, and gets each exactly as planned (a file changed since is an error row)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.converter import DataConverter

from helpers import contract
from helpers.grading import plan as runs
from helpers.grading.notebook import NotebookResult, rows_for
from helpers.grading.plan import (
    MAX_PAYLOAD_BYTES,
    FetchRequest,
    LearnerPlan,
    Limits,
    NotebookJob,
    RunPlan,
    Submission,
    task_queue,
)
from helpers.grading.references import Reference
from helpers.grading.submissions import SubmissionError, find_submission, learner_slug, outside, read_submission
from helpers.grading.workflows import FETCH

Key = tuple[str, str]  # (learner, notebook)


def stripped(nb: Mapping[str, Any]) -> dict[str, Any]:
    """What of a notebook grading needs: every cell's type, id, tags and source (outputs, execution counts,
    attachments and other metadata left out). Invalid cells stay as they are: the graded copy notes them."""
    cells = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            cells.append(cell)
            continue
        keep: dict[str, Any] = {"cell_type": cell["cell_type"], "source": contract.source(cell)}
        if isinstance(cell.get("id"), str):
            keep["id"] = cell["id"]
        if tags := contract.tags(cell):
            keep["metadata"] = {"tags": tags}
        cells.append(keep)
    return {"cells": cells}


def _payload(sub: Submission) -> bytes:
    return DataConverter.default.payload_converter.to_payloads([sub])[0].SerializeToString()


def _digest(sub: Submission) -> str:
    """Of what was read (not of the run it is read for)."""
    text = json.dumps([sub.learner, sub.notebook, sub.cells, sub.notes, sub.error], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Source:
    """Where a planned notebook is read from, and what was noticed about it."""

    path: Path
    notes: list[str]


@dataclass
class Planned:
    plan: RunPlan
    local: dict[Key, NotebookResult]  # decided without running anything
    sources: dict[Key, Source]  # what the run will ask for
    order: list[Key]  # the gradebook's order: learners, then notebooks in course order
    refs: dict[str, Reference]
    learners: list[str]
    inputs: str = ""  # digest of everything that decides the grades (the run's identity)
    oversized: list[Key] = field(default_factory=list)


class Planner:
    """Reads the class once and answers the run's requests for notebooks afterwards."""

    def __init__(
        self,
        people: Sequence[tuple[str, Path]],
        refs: Sequence[Reference],
        fingerprint: str,
        limits: Limits,
        root: Path,
        out: Path,
        selection: Sequence[str] = (),
    ) -> None:
        self.fingerprint = fingerprint
        self.limits = limits
        self.root = root
        local: dict[Key, NotebookResult] = {}
        sources: dict[Key, Source] = {}
        order: list[Key] = []
        learner_plans: list[LearnerPlan] = []
        oversized: list[Key] = []
        identity = hashlib.sha256(json.dumps([fingerprint, limits.__dict__, str(out), *selection]).encode())
        for name, folder in people:
            lp = LearnerPlan(name, learner_slug(name))
            for ref in refs:
                key = (name, ref.name)
                order.append(key)
                result = NotebookResult(name, ref.name, [])
                if outside(folder, root):
                    result.notes.append(f"the learner folder is a symbolic link to {folder.resolve()}, outside the "
                                        "submissions folder; graded anyway")  # fmt: skip
                try:
                    path, note = find_submission(folder, ref.name)
                except OSError as err:
                    result.rows = rows_for(name, ref, "error", f"unreadable folder: {err}")
                    local[key] = result
                    continue
                if note:
                    result.notes.append(note)
                if path is None:
                    result.rows = rows_for(name, ref, "missing", f"no {ref.name}.ipynb handed in")
                    local[key] = result
                    continue
                if outside(path, root, folder):
                    result.notes.append(f"{path.name} is a symbolic link to {path.resolve()}, outside the submissions "
                                        "folder; graded anyway")  # fmt: skip
                if not ref.exercises:
                    local[key] = result
                    continue
                sub = self.submission(name, ref.name, path, result.notes, run_id=runs.run_id("0" * 12, "0" * 8))
                if sub.error is not None:
                    result.rows = rows_for(name, ref, "error", sub.error)
                    local[key] = result
                    continue
                size = len(_payload(sub))
                if size > MAX_PAYLOAD_BYTES:
                    result.rows = rows_for(
                        name,
                        ref,
                        "error",
                        f"{path.name}: without its outputs the notebook is {size / 1e6:.1f} MB, more than the "
                        f"{MAX_PAYLOAD_BYTES / 1e6:.0f} MB a grading run carries per notebook (is data pasted into "
                        "a cell?)",
                    )
                    local[key] = result
                    oversized.append(key)
                    continue
                digest = _digest(sub)
                identity.update(f"{name}\0{ref.name}\0{digest}\0".encode())
                sources[key] = Source(path, result.notes)
                lp.jobs.append(NotebookJob(ref.name, digest, size))
            for key in (k for k in order if k[0] == name and k in local):
                rows = local[key].rows
                identity.update(f"{key}\0{json.dumps([r.__dict__ for r in rows])}".encode())
            if lp.jobs:
                learner_plans.append(lp)
        inputs = identity.hexdigest()
        run_id = runs.run_id(inputs, nonce="0" * 8)  # the command picks the nonce: a new run, or the one to resume
        queue = task_queue(fingerprint)
        plan = RunPlan(run_id, fingerprint, queue, f"{run_id}-files", limits, learner_plans, runs.CHILDREN_PER_RUN)
        self.planned = Planned(
            plan, local, sources, order, {r.name: r for r in refs}, [n for n, _ in people], inputs, oversized
        )

    def submission(self, learner: str, notebook: str, path: Path, notes: list[str], run_id: str) -> Submission:
        sub = Submission(run_id, self.fingerprint, learner, notebook, self.limits, None, list(notes))
        try:
            sub.cells = stripped(read_submission(path))
        except SubmissionError as err:
            sub.error = f"{path.name}: {err}"
        return sub

    def activity(self) -> Any:
        """The activity that hands a planned notebook to the run (on the command's own task queue)."""
        planned = self.planned

        @activity.defn(name=FETCH)
        def fetch(req: FetchRequest) -> Submission:
            key = (req.learner, req.notebook)
            source = planned.sources.get(key)
            if req.run_id != planned.plan.run_id or source is None:
                raise RuntimeError(f"{req.learner}/{req.notebook} is not part of grading run {req.run_id}")
            sub = self.submission(req.learner, req.notebook, source.path, source.notes, req.run_id)
            if _digest(sub) != req.digest:
                sub.cells = None
                sub.error = (
                    f"{source.path.name} changed after grading started, so it was not graded; grade again "
                    "(the same command starts a new grading run for the changed files)"
                )
            return sub

        return fetch


def learner_folders(submissions: Path, only: Sequence[str] = ()) -> list[tuple[str, Path]]:
    from helpers.grading.submissions import learners

    people = [(p.name, p) for p in learners(submissions)]
    if only:
        people = [(n, p) for n, p in people if n in only]
    return people
