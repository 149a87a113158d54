"""What a grading run sends through Temporal: the run's plan (small: names and digests, never notebooks), the
requests for a learner's notebook, and the ids and queues everything runs on. Plain data, safe in the workflow
sandbox; the notebooks themselves travel as the payloads of activities (see ``workflows``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

# A stripped notebook (outputs, attachments and metadata left out) is a few tens of kB; the course's largest is
# ~60 kB. Above this it does not travel: the learner gets an error row (a Temporal server refuses payloads over
# 2 MB by default, and a workflow task that schedules one too large never completes).
MAX_PAYLOAD_BYTES = 1_000_000
HEARTBEAT_TIMEOUT = timedelta(seconds=10)  # a grading worker that stops heartbeating is gone: retry elsewhere
GRADE_ATTEMPTS = 4  # a notebook whose grading is cut off this often (its worker killed or stopped) gets error rows
CHILDREN_PER_RUN = 500  # learners per run of the run workflow before it continues as new (bounded histories)
FETCH_TIMEOUT = timedelta(seconds=60)
RUN_TIMEOUT = timedelta(days=7)  # a run nobody comes back for (its gradebook folder deleted) ends by itself


@dataclass(frozen=True)
class Limits:
    """How every notebook of a run is graded; part of the run's identity."""

    cell_timeout: float
    notebook_timeout: float
    max_runs: int
    skip_demos: bool

    @property
    def grade_timeout(self) -> timedelta:
        """One attempt of grading a notebook: its own budget, plus room to start and clean up."""
        return timedelta(seconds=self.notebook_timeout + 120)


@dataclass
class NotebookJob:
    notebook: str  # "03_activity_design"
    digest: str  # of the payload the grading command sends for it
    size: int  # bytes of that payload


@dataclass
class LearnerPlan:
    learner: str  # the folder name, as the gradebook shows it
    key: str  # a slug of it, unique in the class: the learner's workflow id ends with it
    jobs: list[NotebookJob] = field(default_factory=list)


@dataclass
class RunPlan:
    run_id: str  # the run workflow's id, derived from the gradebook folder and everything that decides a grade
    fingerprint: str  # of the course files (helpers/, solutions/, notebooks/, nbval.cfg) and grading software
    task_queue: str  # grading workers with these course files poll it; no other worker ever sees the run
    files_queue: str  # the grading command's own queue: it reads the submissions and hands them over
    limits: Limits
    learners: list[LearnerPlan]
    children_per_run: int = CHILDREN_PER_RUN


@dataclass
class LearnerRun:
    """The input of one learner's workflow (a child of the run)."""

    run_id: str
    task_queue: str
    files_queue: str
    limits: Limits
    learner: LearnerPlan


@dataclass
class FetchRequest:
    run_id: str
    learner: str
    notebook: str
    digest: str


@dataclass
class Submission:
    """One learner's notebook, as the grading command hands it over: the input of a grading activity."""

    run_id: str
    fingerprint: str
    learner: str
    notebook: str
    limits: Limits
    cells: dict[str, Any] | None  # the notebook JSON, outputs stripped; None when `error` says why not
    notes: list[str] = field(default_factory=list)  # what the command noticed (a renamed file, a symbolic link)
    error: str | None = None


@dataclass
class LearnerOutcome:
    """What a learner's workflow returns: only the notebooks it could not have graded (the grades themselves are
    the results of its grading activities, read from its history)."""

    failed: dict[str, str] = field(default_factory=dict)  # notebook -> why


def run_id(inputs: str, nonce: str) -> str:
    """A grading run's workflow id: the digest of its inputs (what decides the grades), and a nonce of its own."""
    return f"course-grade-{inputs[:12]}-{nonce}"


def task_queue(fingerprint: str) -> str:
    return f"course-grade-{fingerprint[:16]}"


def learner_workflow_id(run_id: str, key: str) -> str:
    return f"{run_id}/{key}"
