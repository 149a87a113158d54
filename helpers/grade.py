"""Grade a folder of learners' notebooks against the solutions with nbval, into a gradebook.

    python -m helpers.grade SUBMISSIONS --out OUT [--jobs N] [--learner NAME ...] [--notebook NN ...]
    make grade SUBMISSIONS=<dir> OUT=<dir> [JOBS=n]

``SUBMISSIONS/<learner>/<NN_topic>.ipynb``: one folder per learner, any subset of the notebooks in ``solutions/``.
``OUT`` receives ``grades.csv`` (learner × notebook × exercise), ``summary.csv`` (learner × notebook totals and a
course total), ``report.html`` and ``report.md`` (per learner: each exercise's verdict and the check's hint),
``gradebook.json`` (everything, used to merge a regrade) and ``logs/`` (what each notebook's cells printed).

How a notebook is graded (docs/instructor-guide.md tells the instructor's side):

1. A *graded copy* is built in a private temporary folder: the learner's cells in the learner's order, outputs
   cleared (``execution_count`` null: nbval runs them and only fails them on errors, which are not graded), and
   every check cell restored from the solution — source, tags, outputs and execution count — matched by cell id,
   else by its ``check`` + ``ex-NN.k`` tags, else re-inserted after the learner's exercise cell. Editing, moving,
   duplicating or deleting a check cell changes nothing.
2. ``pytest --nbval`` runs the copy in its own kernel (per-cell timeout, whole-notebook wall-clock budget, the
   process tree killed at the end) with a private HOME, TMPDIR, working folder and copy of ``helpers/``, against
   the one shared Temporal server; the course runtime gives each kernel its own task queue and workflow ids.
   A cell that times out (or kills the kernel) is marked ``nbval-skip`` and the notebook is run again, so the
   other exercises are still graded.
3. A check cell passes when nbval's strict comparison (sanitized by ``tests/nbval.cfg``) with the solution's
   output passes. Otherwise the verdict line the check printed (``helpers.checks.parse``) gives the status
   (``not_done`` / ``failed``) and the hint.

The submission files are only read. Gradebook files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import checks, server

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
SANITIZE = ROOT / "tests" / "nbval.cfg"
HELPERS = Path(__file__).resolve().parent

STATUSES = ("passed", "failed", "not_done", "timeout", "missing", "error")
FIELDS = ("learner", "notebook", "exercise", "points", "max_points", "status", "message")
SYMBOLS = {"passed": "✅", "failed": "❌", "not_done": "⏳", "timeout": "⌛", "missing": "∅", "error": "⚠️"}

CELL_TIMEOUT_S = 60.0
NOTEBOOK_TIMEOUT_S = 600.0
MAX_RUNS = 3
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
TOKEN_VAR = "COURSE_GRADE_TOKEN"
RESULTS_VAR = "COURSE_GRADE_RESULTS"
EX_TAG = re.compile(r"^ex-(\d\d\.\d+)$")
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NB_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")
# In learner-written cells these deserve a human look: they can only matter if code tries to fool the checks.
SUSPICIOUS = {
    "helpers.checks": re.compile(r"helpers\s*\.\s*checks|from\s+helpers\s+import\s+checks"),
    "assigns to a check module": re.compile(r"\bnb\d\d\s*\.\s*\w+\s*=(?!=)"),
    "verdict symbols": re.compile(r"[✅⏳❌]"),
    "importlib.reload": re.compile(r"importlib\s*\.\s*reload|\breload\("),
    "sys.modules": re.compile(r"sys\s*\.\s*modules"),
    "__file__": re.compile(r"__file__"),
    "builtins": re.compile(r"\bbuiltins\b"),
}


class SubmissionError(ValueError):
    """A learner's file that cannot be graded; the message says why, in one line."""


# --------------------------------------------------------------------------- the solutions


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

    @property
    def prefix(self) -> str:
        return self.name[:2]

    @property
    def max_points(self) -> int:
        return sum(ex.points for ex in self.exercises)


def _source(cell: Mapping[str, Any]) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        return "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _tags(cell: Mapping[str, Any]) -> list[str]:
    meta = cell.get("metadata")
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def check_exercise(cell: Mapping[str, Any]) -> str | None:
    """``NN.k`` of a check cell (tags ``check`` and ``ex-NN.k``), else None."""
    tags = _tags(cell)
    if cell.get("cell_type") != "code" or "check" not in tags:
        return None
    return next((m[1] for t in tags if (m := EX_TAG.match(t))), None)


def _exercise_tag(cell: Mapping[str, Any]) -> str | None:
    return next((m[1] for t in _tags(cell) if (m := EX_TAG.match(t))), None)


def _normalized(source: str) -> str:
    return "\n".join(line.strip() for line in source.splitlines() if line.strip())


def load_references(solutions: Path = SOLUTIONS, learner_dir: Path | None = None) -> list[Reference]:
    """Every ``solutions/NN_*.ipynb`` with its check cells, read once (later changes on disk do not matter)."""
    from helpers import build

    refs = []
    for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb.get("cells", [])
        known = {_normalized(_source(c)) for c in cells if c.get("cell_type") == "code"}
        template = (learner_dir or build.NOTEBOOKS) / path.name
        if template.exists():
            tcells = json.loads(template.read_text(encoding="utf-8")).get("cells", [])
            known |= {_normalized(_source(c)) for c in tcells if c.get("cell_type") == "code"}
        else:  # no generated copy yet: derive it
            import nbformat

            learner = build.learner_copy(nbformat.from_dict(copy.deepcopy(nb)), path.name)
            known |= {_normalized(_source(c)) for c in learner.cells if c.get("cell_type") == "code"}
        exercises = []
        for i, cell in enumerate(cells):
            ex = check_exercise(cell)
            if ex is None:
                continue
            work = tuple(c["id"] for c in cells if c.get("id") and _exercise_tag(c) == ex and check_exercise(c) is None)
            before = cells[i - 1].get("id") if i > 0 else None
            exercises.append(Exercise(ex, copy.deepcopy(cell), work, before))
        refs.append(Reference(path.stem, tuple(exercises), frozenset(known)))
    return refs


# --------------------------------------------------------------------------- reading a submission


def read_submission(path: Path) -> dict[str, Any]:
    """The notebook JSON of a learner's file, or SubmissionError with a one-line reason."""
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise SubmissionError(f"the file is {size / 1e6:.0f} MB, over the grader's limit of 64 MB")
        with open(path, "rb") as f:  # read only; the file is never written
            raw = f.read()
    except OSError as err:
        raise SubmissionError(f"could not read the file: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SubmissionError("the file is not UTF-8 text, so not a notebook") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SubmissionError(f"the file is not valid notebook JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("worksheets"), list) and "cells" not in data:
        import nbformat  # an nbformat 3 notebook: upgrade it

        try:
            data = json.loads(nbformat.writes(nbformat.convert(nbformat.from_dict(data), 4)))
        except Exception as err:
            raise SubmissionError(f"an old (nbformat 3) notebook that could not be upgraded: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise SubmissionError("the file is JSON but not a Jupyter notebook (it has no list of cells)")
    if not any(isinstance(c, dict) and c.get("cell_type") == "code" for c in data["cells"]):
        raise SubmissionError("the notebook has no code cells")
    return data


# --------------------------------------------------------------------------- the graded copy


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


def graded_copy(submission: Mapping[str, Any], ref: Reference, skip: Iterable[str] = ()) -> GradedCopy:
    """Learner cells (outputs cleared) with every check cell restored from the solution. ``skip``: graded ids
    to tag ``nbval-skip`` (cells that timed out in an earlier run)."""
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
        by_id = [i for i, it in enumerate(items) if it["orig"] == ex.check.get("id") and "check" not in it]
        by_tag = [i for i, it in enumerate(items) if "check" not in it and check_exercise(it["cell"]) == ex.id]
        position = by_id[0] if by_id else (by_tag[-1] if by_tag else None)
        for i in {*by_id, *by_tag} - ({position} if position is not None else set()):
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
            and (it["orig"] in ex.work_ids or _exercise_tag(it["cell"]) == ex.id)
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
    cells: list[dict[str, Any]] = []
    roles: dict[str, Role] = {}
    used: set[str] = set()
    for it in items:
        if "check" in it:
            ex = by_ex[it["check"]]
            cell = copy.deepcopy(ex.check)
            cell_id = _unique(f"check-{ex.id.replace('.', '-')}", used)
            cell["id"] = cell_id
            cell["metadata"] = {"tags": _tags(ex.check)}
            if cell_id in skip:
                cell["metadata"]["tags"].append("nbval-skip")
            roles[cell_id] = Role("check", ex.id, f"check cell of {ex.id}")
            cells.append(cell)
            continue
        raw = it["cell"]
        orig = it["orig"]
        base = orig if orig and CELL_ID.match(orig) and orig not in check_ids else f"cell-{it['n'] + 1}"
        cell_id = _unique(base, used)
        tags = [t for t in _tags(raw) if t != "check"]
        kind = raw["cell_type"]
        cell = {"cell_type": kind, "id": cell_id, "metadata": {"tags": tags} if tags else {}, "source": _source(raw)}
        if kind == "code":
            cell.update(outputs=[], execution_count=None)
            if cell_id in skip:
                cell["metadata"] = {"tags": [*tags, "nbval-skip"]}
            ex_id = _exercise_tag(raw) if _exercise_tag(raw) in by_ex else None
            if ex_id is None and orig:
                ex_id = next((e.id for e in ref.exercises if orig in e.work_ids), None)
            label = f"cell {orig!r}" if orig else f"code cell #{it['n'] + 1}"
            roles[cell_id] = Role("work" if ex_id else "other", ex_id, label)
            if _normalized(cell["source"]) not in ref.known_sources:
                hits = [name for name, rx in SUSPICIOUS.items() if rx.search(cell["source"])]
                if hits:
                    notes.append(f"review {label}: learner code touches {', '.join(hits)}")
        cells.append(cell)
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return GradedCopy(nb, roles, notes)


def _unique(base: str, used: set[str]) -> str:
    candidate, n = base[:60], 2
    while candidate in used:
        candidate = f"{base[:56]}-{n}"
        n += 1
    used.add(candidate)
    return candidate


# --------------------------------------------------------------------------- running nbval


@dataclass
class Settings:
    cell_timeout: float = CELL_TIMEOUT_S
    notebook_timeout: float = NOTEBOOK_TIMEOUT_S
    max_runs: int = MAX_RUNS
    keep_temp: bool = False
    watch: tuple[Path, ...] = (ROOT,)


@dataclass
class RunResult:
    records: dict[str, dict[str, Any]]  # graded cell id -> last record
    order: list[str]  # graded cell ids in the order nbval reported them
    finished: bool  # pytest reached the end of the session
    killed: bool  # the wall-clock budget ran out and the process tree was killed
    returncode: int | None
    log: str


def kernel_env(base: Mapping[str, str], home: Path, lib: Path, results: Path, token: str) -> dict[str, str]:
    """The environment of one nbval run (and its kernel): private HOME, TMPDIR, data dir, a copy of helpers."""
    drop = ("PYTEST_", "PYTHON", "JPY_", "COV_CORE", "COVERAGE_", "VIRTUAL_ENV_PROMPT", "MPLBACKEND")
    env = {k: v for k, v in base.items() if not k.startswith(drop)}
    tmp = home / "tmp"
    for d in (tmp, home / ".ipython", home / "mpl", home / "runtime", home / "temporal-course"):
        d.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        TEMP=str(tmp),
        TMP=str(tmp),
        IPYTHONDIR=str(home / ".ipython"),
        MPLCONFIGDIR=str(home / "mpl"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        TEMPORAL_COURSE_DATA=str(home / "temporal-course"),
        PYTHONPATH=str(lib),
        PYTHONNOUSERSITE="1",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        **{TOKEN_VAR: token, RESULTS_VAR: str(results)},
    )
    return env


def _processes_with_token(token: str) -> list[int]:
    """Pids whose environment carries ``token`` (Linux /proc): a kernel and anything it started, orphans too."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_tree(proc: subprocess.Popen[bytes], token: str) -> None:
    """Kill an nbval run and everything it started (the kernel runs in a session of its own)."""
    pids: set[int] = set()
    with contextlib.suppress(Exception):
        import psutil

        pids |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(3):  # orphans can be re-parented between scans
        pids |= set(_processes_with_token(token))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        pids = set()
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


_ACTIVE: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
_ACTIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def kill_all_running() -> None:
    """Stop every nbval run still going, and start no new one (Ctrl-C of the grader)."""
    _STOPPING.set()
    with _ACTIVE_LOCK:
        running = list(_ACTIVE.values())
    for proc, token in running:
        kill_tree(proc, token)


def run_nbval(
    nb: Mapping[str, Any], workdir: Path, lib: Path, settings: Settings, deadline: float, base_env: Mapping[str, str]
) -> RunResult:
    """One strict nbval run of a graded copy in ``workdir`` (cwd), bounded by ``deadline`` (monotonic)."""
    run_id = uuid.uuid4().hex[:8]
    home = workdir.parent / f"home-{run_id}"
    nb_path = workdir / "graded.ipynb"
    nb_path.write_text(json.dumps(nb, ensure_ascii=False, indent=1), encoding="utf-8")
    results = workdir.parent / f"results-{run_id}.jsonl"
    ini = workdir.parent / "pytest.ini"
    ini.write_text("[pytest]\naddopts =\n")
    token = uuid.uuid4().hex
    env = kernel_env(base_env, home, lib, results, token)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "helpers.nbval_results",
        "-p",
        "nbval.plugin",
        "-p",
        "no:cacheprovider",
        "--noconftest",
        "-c",
        str(ini),
        "--rootdir",
        str(workdir),
        "-q",
        "--tb=no",
        "--no-header",
        "-W",
        "ignore",
        "--nbval",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(lib / "nbval.cfg"),
        "--nbval-cell-timeout",
        f"{settings.cell_timeout:g}",
        "--nbval-kernel-startup-timeout",
        "60",
        nb_path.name,
    ]
    log_path = workdir.parent / f"pytest-{run_id}.log"
    killed = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        with _ACTIVE_LOCK:
            _ACTIVE[proc.pid] = (proc, token)
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            kill_tree(proc, token)  # also reaps what a finished run left behind
            with _ACTIVE_LOCK:
                _ACTIVE.pop(proc.pid, None)
    records: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    finished = False
    with contextlib.suppress(OSError), open(results, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("finished"):
                finished = True
            elif isinstance(rec.get("cell_id"), str):
                if rec["cell_id"] not in records:
                    order.append(rec["cell_id"])
                records[rec["cell_id"]] = rec
    return RunResult(records, order, finished and not killed, killed, proc.returncode, _tail(log_path))


def _tail(path: Path, limit: int = 8000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        text = f.read().decode("utf-8", errors="replace")
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return ""


def _culprit(run: RunResult) -> str | None:
    """The cell that timed out or took the kernel down (the rest of that run is not trustworthy)."""
    for cell_id in run.order:
        rec = run.records[cell_id]
        if rec.get("skipped") or rec.get("when") != "call":
            continue  # a kernel that never started is an error of the whole notebook, not of one cell
        if rec.get("timed_out") or not rec.get("kernel_alive", True):
            return cell_id
    return None


# --------------------------------------------------------------------------- one notebook


@dataclass
class Row:
    learner: str
    notebook: str
    exercise: str
    points: int
    max_points: int
    status: str
    message: str


@dataclass
class NotebookResult:
    learner: str
    notebook: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runs: int = 0
    log: str = ""


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rows(learner: str, ref: Reference, status: str, message: str) -> list[Row]:
    return [Row(learner, ref.name, ex.id, 0, ex.points, status, message) for ex in ref.exercises]


def exercise_row(
    learner: str,
    ref: Reference,
    ex: Exercise,
    graded: GradedCopy,
    run: RunResult | None,
    timed_out: Mapping[str, str],
    settings: Settings,
    tainted: Iterable[str] = (),
) -> Row:
    """The verdict for one exercise from the last run's records (see the module docstring)."""

    def row(status: str, message: str, points: int = 0) -> Row:
        return Row(learner, ref.name, ex.id, points, ex.points, status, _one_line(message))

    check_id = next(cid for cid, role in graded.roles.items() if role.kind == "check" and role.exercise == ex.id)
    rec = run.records.get(check_id) if run else None
    stdout = (rec or {}).get("stdout", "")
    verdicts = [v for line in stdout.splitlines() if (v := checks.parse(line)) is not None and v.exercise == ex.id]
    verdict = verdicts[-1] if verdicts else None
    if rec and rec.get("ok") and not rec.get("skipped") and rec.get("when") == "call":
        return row("passed", verdict.message if verdict else "the check's output matches the solution's.", ex.points)
    if check_id in timed_out:
        return row("timeout", f"the check did not finish within {settings.cell_timeout:g} s ({timed_out[check_id]})")
    work_late = [cid for cid, role in graded.roles.items() if role.exercise == ex.id and cid in timed_out]
    if work_late:
        label = graded.roles[work_late[0]].label
        return row(
            "timeout",
            f"your exercise {label} did not finish within {settings.cell_timeout:g} s "
            f"({timed_out[work_late[0]]}); the grader skipped it and graded the rest",
        )
    if check_id in set(tainted):
        return row("timeout", "not graded: an earlier cell hung and the grader had no re-runs left")
    if rec is None:
        if run is not None and run.killed:
            return row("timeout", f"the notebook used up its {settings.notebook_timeout:g} s before this check ran")
        return row("error", "the check cell did not run (the notebook run stopped early; see the log)")
    if rec.get("when") == "setup":
        return row("error", f"the notebook could not be run: {rec.get('error') or 'kernel did not start'}")
    if verdict is not None:
        if verdict.status != "passed":
            return row(verdict.status, verdict.message)
        extra = [ln for ln in stdout.splitlines() if ln.strip() and checks.parse(ln) is None]
        detail = f" (extra output: {extra[0][:120]!r})" if extra else ""
        return row(
            "failed",
            "the check printed a pass, but the cell's output differs from the solution's"
            f"{detail}; code that runs during the check should not print.",
        )
    if rec.get("exception"):
        hint = ""
        if rec["exception"].startswith("NameError"):
            hint = "; is the exercise cell (or the setup cell) missing, or did it fail?"
        return row("failed", f"the check cell raised {rec['exception']}{hint}")
    return row("failed", "the check cell's output differs from the solution's (no verdict line printed)")


def grade_notebook(
    learner: str,
    ref: Reference,
    path: Path | None,
    settings: Settings,
    tmp_root: Path,
    base_env: Mapping[str, str],
    path_note: str | None = None,
) -> NotebookResult:
    """Grade one learner's notebook; never raises (problems become rows with status ``error``)."""
    started = time.monotonic()
    result = NotebookResult(learner, ref.name, [])
    if path_note:
        result.notes.append(path_note)
    if path is None:
        result.rows = _rows(learner, ref, "missing", f"no {ref.name}.ipynb handed in")
        return result
    if not ref.exercises:
        return result
    work_root = Path(tempfile.mkdtemp(prefix=f"{_slug(learner)[:20]}-{ref.prefix}-", dir=tmp_root))
    try:
        try:
            submission = read_submission(path)
        except SubmissionError as err:
            result.rows = _rows(learner, ref, "error", f"{path.name}: {err}")
            return result
        lib = work_root / "lib"
        shutil.copytree(HELPERS, lib / "helpers", ignore=shutil.ignore_patterns("*.tmp"))
        shutil.copy2(SANITIZE, lib / "nbval.cfg")
        workdir = work_root / "work"
        workdir.mkdir()
        deadline = started + settings.notebook_timeout
        skip: dict[str, str] = {}  # graded cell id -> what happened to it
        tainted: set[str] = set()  # cells that ran after a hang nobody could re-run around
        run: RunResult | None = None
        result.notes += graded_copy(submission, ref).notes
        logs = []
        while not _STOPPING.is_set():
            graded = graded_copy(submission, ref, skip)
            run = run_nbval(graded.notebook, workdir, lib, settings, deadline, base_env)
            result.runs += 1
            logs.append(_run_log(result.runs, graded, run))
            culprit = _culprit(run)
            if culprit is None:
                break
            alive = run.records[culprit].get("kernel_alive", True)
            skip[culprit] = "interrupted" if alive else "the kernel had to be stopped"
            role = graded.roles.get(culprit)
            result.notes.append(
                f"{role.label if role else culprit} did not finish within {settings.cell_timeout:g} s; "
                "the grader skipped it and ran the notebook again"
            )
            if result.runs >= settings.max_runs or time.monotonic() > deadline - 5:
                tainted = set(run.order[run.order.index(culprit) + 1 :])
                result.notes.append("no time or re-runs left: cells after it were not graded")
                break
        if run is None:
            raise RuntimeError("grading was stopped")
        if run.killed:
            result.notes.append(f"the notebook hit its {settings.notebook_timeout:g} s budget and was stopped")
        if not run.records and not run.killed:
            result.rows = _rows(learner, ref, "error", f"nbval did not run (exit {run.returncode}); see the log")
        else:
            result.rows = [exercise_row(learner, ref, ex, graded, run, skip, settings, tainted) for ex in ref.exercises]
        result.log = "\n".join(logs)
    except Exception as err:  # the grader's own failure for this notebook: one error row each, the run goes on
        result.rows = _rows(learner, ref, "error", f"the grader failed on this notebook: {type(err).__name__}: {err}")
    finally:
        result.seconds = round(time.monotonic() - started, 2)
        if not settings.keep_temp:
            shutil.rmtree(work_root, ignore_errors=True)
    return result


def _run_log(n: int, graded: GradedCopy, run: RunResult) -> str:
    lines = [f"=== run {n}: finished={run.finished} killed={run.killed} exit={run.returncode}"]
    for cell_id in run.order:
        rec = run.records[cell_id]
        role = graded.roles.get(cell_id)
        state = "skipped" if rec.get("skipped") else ("ok" if rec.get("ok") else "FAILED")
        lines.append(f"--- {role.label if role else cell_id} [{role.kind if role else '?'}] {state} {rec['duration']}s")
        if rec.get("error") and not rec.get("ok"):
            lines.append("    " + _one_line(rec["error"], 600))
        for key in ("stdout", "stderr", "plain"):
            if rec.get(key):
                text = rec[key] if len(rec[key]) < 2000 else rec[key][:2000] + " …"
                lines.append(f"    [{key}] " + text.replace("\n", "\n    "))
    lines.append("--- pytest output (tail):")
    lines.append(run.log[-3000:])
    return "\n".join(lines)


# --------------------------------------------------------------------------- the class


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "learner"


def find_submission(learner_dir: Path, ref: Reference) -> tuple[Path | None, str | None]:
    """``<learner>/<NN_topic>.ipynb``; else one ``NN_*.ipynb`` / ``NN-*.ipynb`` / ``NN *.ipynb`` (noted)."""
    exact = learner_dir / f"{ref.name}.ipynb"
    if exact.is_file():
        return exact, None
    pattern = re.compile(rf"^{ref.prefix}[ _-].*\.ipynb$", re.IGNORECASE)
    found = sorted(p for p in learner_dir.iterdir() if p.is_file() and pattern.match(p.name))
    if not found:
        return None, None
    if len(found) > 1:
        return found[0], f"several files for {ref.name} ({', '.join(p.name for p in found)}); graded {found[0].name}"
    return found[0], f"graded {found[0].name} as {ref.name}.ipynb"


def learners(submissions: Path) -> list[Path]:
    return sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


class RepoWatch:
    """Notices files changed under the watched folders while notebooks run, and who could have done it."""

    SKIP = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"})

    def __init__(self, roots: Sequence[Path], exclude: Sequence[Path] = ()) -> None:
        self.roots = [r.resolve() for r in roots if r.exists()]
        self.exclude = [e.resolve() for e in exclude]
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.state = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int]]:
        files: dict[str, tuple[int, int]] = {}
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = [d for d in dirnames if d not in self.SKIP and here / d not in self.exclude]
                for name in filenames:
                    with contextlib.suppress(OSError):
                        st = (here / name).stat()
                        files[str(here / name)] = (st.st_mtime_ns, st.st_size)
        return files

    @contextlib.contextmanager
    def running_as(self, key: str) -> Iterator[list[str]]:
        """Yields a list that receives a note if the watched files changed while ``key`` (and others) ran."""
        notes: list[str] = []
        with self.lock:
            self.running.add(key)
        try:
            yield notes
        finally:
            with self.lock:
                now = self.snapshot()
                changed = sorted(k for k in now.keys() | self.state.keys() if now.get(k) != self.state.get(k))
                self.state = now
                suspects = sorted(self.running)
                self.running.discard(key)
            if changed:
                shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                notes.append(f"files in the course repository changed while this notebook ran: {shown} "
                             f"(running then: {', '.join(suspects)})")  # fmt: skip


@dataclass
class Gradebook:
    rows: list[Row]
    notes: dict[str, list[str]]  # "learner/notebook" -> notes
    notebooks: list[tuple[str, int]]  # (name, max points)
    meta: dict[str, Any]


def grade(
    submissions: Path,
    out: Path,
    *,
    jobs: int | None = None,
    only_learners: Sequence[str] = (),
    only_notebooks: Sequence[str] = (),
    settings: Settings | None = None,
    solutions: Path = SOLUTIONS,
    quiet: bool = False,
) -> Gradebook:
    """Grade every learner folder in ``submissions`` into ``out`` (see the module docstring)."""
    settings = settings or Settings()
    jobs = max(1, jobs or cores())
    submissions = submissions.resolve()
    out = out.resolve()
    if not submissions.is_dir():
        raise SystemExit(f"error: {submissions} is not a folder of learner folders")
    if out == submissions or submissions in out.parents:
        raise SystemExit("error: --out must not be inside the submissions folder (it is never written to)")
    refs = load_references(solutions)
    if only_notebooks:
        refs = [r for r in refs if any(r.name.startswith(n) or r.prefix == n for n in only_notebooks)]
    if not refs:
        raise SystemExit(f"error: no solution notebooks matched in {solutions}")
    people = learners(submissions)
    if only_learners:
        people = [p for p in people if p.name in only_learners]
        if missing := set(only_learners) - {p.name for p in people}:
            raise SystemExit(f"error: no learner folder named {', '.join(sorted(missing))} in {submissions}")
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))

    where = server.target()
    status, started = server.ensure(where)
    say(status.describe() + (" (started now)" if started else ""))
    base_env = dict(os.environ)
    base_env["TEMPORAL_ADDRESS"] = where.address
    base_env["TEMPORAL_NAMESPACE"] = where.namespace
    if profile := _profile_file():
        base_env.setdefault("TEMPORAL_CONFIG_FILE", str(profile))

    tasks = [(person, ref) for person in people for ref in refs]
    say(f"Grading {len(people)} learner(s) × {len(refs)} notebook(s) with {jobs} job(s)…")
    t0 = time.monotonic()
    tmp_root = Path(tempfile.mkdtemp(prefix="course-grade-"))
    watch = RepoWatch(settings.watch, exclude=[out, tmp_root])
    results: list[NotebookResult] = []

    def work(person: Path, ref: Reference) -> NotebookResult:
        try:
            path, note = find_submission(person, ref)
        except OSError as err:
            return NotebookResult(person.name, ref.name, _rows(person.name, ref, "error", f"unreadable folder: {err}"))
        with watch.running_as(f"{person.name}/{ref.name}") as watch_notes:
            res = grade_notebook(person.name, ref, path, settings, tmp_root, base_env, note)
        res.notes += watch_notes
        return res

    _STOPPING.clear()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(work, person, ref) for person, ref in tasks]
        for n, fut in enumerate(as_completed(futures), 1):
            res = fut.result()
            results.append(res)
            got = sum(r.points for r in res.rows)
            most = sum(r.max_points for r in res.rows)
            tally = Counter(r.status for r in res.rows)
            say(
                f"[{n}/{len(tasks)}] {res.learner} {res.notebook}: {got}/{most} "
                f"({', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}) {res.seconds:.1f} s"
            )
    except BaseException:  # Ctrl-C: drop the queue, stop what runs, write nothing
        pool.shutdown(wait=False, cancel_futures=True)
        kill_all_running()
        raise
    finally:
        pool.shutdown(wait=True)
        if not settings.keep_temp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = round(time.monotonic() - t0, 1)

    order = {(p.name, r.name): i for i, (p, r) in enumerate(tasks)}
    results.sort(key=lambda res: order[(res.learner, res.notebook)])
    book = Gradebook(
        rows=[row for res in results for row in res.rows],
        notes={f"{res.learner}/{res.notebook}": res.notes for res in results if res.notes},
        notebooks=[(r.name, r.max_points) for r in refs],
        meta={
            "graded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": elapsed,
            "jobs": jobs,
            "learners": len(people),
            "cell_timeout": settings.cell_timeout,
            "notebook_timeout": settings.notebook_timeout,
            "server": where.address,
            "timings": {f"{res.learner}/{res.notebook}": [res.seconds, res.runs] for res in results},
        },
    )
    if only_learners or only_notebooks:
        book = merge(load_gradebook(out), book)
    write_gradebook(out, book, logs={(res.learner, res.notebook): res.log for res in results if res.log})
    say(f"Graded in {elapsed:.1f} s. Gradebook: {out / 'report.html'}")
    return book


def cores() -> int:
    """CPUs this process may use (what ``nproc`` says), the default number of jobs."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _profile_file() -> Path | None:
    """Temporal's profile file as the instructor's own HOME sees it (kernels get a private HOME)."""
    candidates = []
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        candidates.append(Path(xdg) / "temporalio" / "temporal.toml")
    home = Path.home()
    candidates += [
        home / ".config" / "temporalio" / "temporal.toml",
        home / "Library" / "Application Support" / "temporalio" / "temporal.toml",
    ]
    return next((p for p in candidates if p.is_file()), None)


# --------------------------------------------------------------------------- the gradebook


def load_gradebook(out: Path) -> Gradebook | None:
    try:
        data = json.loads((out / "gradebook.json").read_text(encoding="utf-8"))
        return Gradebook(
            rows=[Row(**r) for r in data["rows"]],
            notes={k: list(v) for k, v in data["notes"].items()},
            notebooks=[(n, int(m)) for n, m in data["notebooks"]],
            meta=dict(data["meta"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def merge(old: Gradebook | None, new: Gradebook) -> Gradebook:
    """``new`` replaces the (learner, notebook) pairs it graded; everything else of ``old`` stays."""
    if old is None:
        return new
    redone = {(r.learner, r.notebook) for r in new.rows}
    rows = [r for r in old.rows if (r.learner, r.notebook) not in redone] + new.rows
    names = dict(old.notebooks) | dict(new.notebooks)
    learner_order = list(dict.fromkeys([r.learner for r in old.rows] + [r.learner for r in new.rows]))
    nb_order = sorted(names)
    rows.sort(key=lambda r: (learner_order.index(r.learner), nb_order.index(r.notebook), _ex_key(r.exercise)))
    notes = {k: v for k, v in old.notes.items() if tuple(k.split("/", 1)) not in redone} | new.notes
    meta = dict(old.meta) | {k: v for k, v in new.meta.items() if k != "timings"}
    meta["timings"] = dict(old.meta.get("timings", {})) | new.meta.get("timings", {})
    meta["learners"] = len(learner_order)
    return Gradebook(rows, notes, sorted(names.items()), meta)


def _ex_key(ex: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", ex))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def totals(book: Gradebook) -> dict[str, dict[str, tuple[int, int]]]:
    """learner -> notebook -> (points, max points)."""
    per: dict[str, dict[str, tuple[int, int]]] = {}
    for r in book.rows:
        got, most = per.setdefault(r.learner, {}).get(r.notebook, (0, 0))
        per[r.learner][r.notebook] = (got + r.points, most + r.max_points)
    return per


def write_gradebook(out: Path, book: Gradebook, logs: Mapping[tuple[str, str], str] | None = None) -> None:
    """grades.csv, summary.csv, report.md, report.html, gradebook.json (each atomically) and logs/."""
    out.mkdir(parents=True, exist_ok=True)
    for (learner, notebook), text in (logs or {}).items():
        folder = out / "logs" / _slug(learner)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"{notebook}.txt", text)
    names = [n for n, _ in book.notebooks]
    per = totals(book)
    summary = []
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        most = sum(m for _, m in book.notebooks)
        cells = [nbs.get(n, (0, 0))[0] for n in names]
        summary.append([learner, *cells, got, most, f"{100 * got / most:.0f}" if most else ""])
    data = {
        "rows": [asdict(r) for r in book.rows],
        "notes": book.notes,
        "notebooks": book.notebooks,
        "meta": book.meta,
    }
    _atomic_write(out / "gradebook.json", json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    _atomic_write(out / "summary.csv", _csv(summary, ["learner", *names, "total", "max_total", "percent"]))
    _atomic_write(out / "report.md", report_markdown(book))
    _atomic_write(out / "report.html", report_html(book))
    _atomic_write(out / "grades.csv", _csv(([getattr(r, f) for f in FIELDS] for r in book.rows), FIELDS))


def _exercise_stats(book: Gradebook) -> list[tuple[str, str, Counter[str]]]:
    stats: dict[tuple[str, str], Counter[str]] = {}
    for r in book.rows:
        stats.setdefault((r.notebook, r.exercise), Counter())[r.status] += 1
    return [(nb, ex, c) for (nb, ex), c in sorted(stats.items(), key=lambda kv: (kv[0][0], _ex_key(kv[0][1])))]


def report_markdown(book: Gradebook) -> str:
    names = [n for n, _ in book.notebooks]
    maxes = dict(book.notebooks)
    per = totals(book)
    total_max = sum(maxes.values())
    lines = [
        "# Gradebook",
        "",
        f"Graded {book.meta.get('graded_at', '')}: {len(per)} learner(s), notebooks {', '.join(names)}; "
        f"per-cell timeout {book.meta.get('cell_timeout', '?'):g} s. Statuses: "
        + ", ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES)
        + ".",
        "",
        "## Class overview",
        "",
        "| learner | " + " | ".join(f"{n} (/{maxes[n]})" for n in names) + f" | total (/{total_max}) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines.append(f"| {learner} | " + " | ".join(str(nbs.get(n, (0, 0))[0]) for n in names) + f" | {got} |")
    lines += ["", "## Exercises", "", "| notebook | exercise | " + " | ".join(STATUSES) + " |"]
    lines.append("|---|---|" + "---|" * len(STATUSES))
    for nb, ex, c in _exercise_stats(book):
        lines.append(f"| {nb} | {ex} | " + " | ".join(str(c.get(s, 0)) for s in STATUSES) + " |")
    lines += ["", "## Learners", ""]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines += [f"### {learner}: {got}/{total_max}", ""]
        notes = [(k.split("/", 1)[1], n) for k, v in book.notes.items() if k.split("/", 1)[0] == learner for n in v]
        for nb, note in notes:
            lines.append(f"- note ({nb}): {note}")
        if notes:
            lines.append("")
        lines += ["| notebook | exercise | verdict | points | hint |", "|---|---|---|---|---|"]
        for r in (r for r in book.rows if r.learner == learner):
            msg = r.message.replace("|", "\\|")
            lines.append(f"| {r.notebook} | {r.exercise} | {SYMBOLS[r.status]} {r.status} | "
                         f"{r.points}/{r.max_points} | {msg} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.passed{background:#e7f6e7}.failed{background:#fde8e8}
.not_done{background:#fff7e0}.timeout,.error{background:#f6e0f6}.missing{background:#eee;color:#666}
.note{color:#7a4b00}td.num{text-align:right}td.verdict{white-space:nowrap}h3{margin-top:2em}
"""


def report_html(book: Gradebook) -> str:
    e = html.escape
    names = [n for n, _ in book.notebooks]
    maxes = dict(book.notebooks)
    per = totals(book)
    total_max = sum(maxes.values())
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Gradebook</title>",
        f"<style>{_CSS}</style></head><body><h1>Gradebook</h1>",
        f"<p>Graded {e(str(book.meta.get('graded_at', '')))}: {len(per)} learner(s); per-cell timeout "
        f"{book.meta.get('cell_timeout', 0):g} s. " + " · ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES) + "</p>",
        "<h2>Class overview</h2><table><tr><th>learner</th>"
        + "".join(f"<th>{e(n)} (/{maxes[n]})</th>" for n in names)
        + f"<th>total (/{total_max})</th></tr>",
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        row = "".join(f"<td class='num'>{nbs.get(n, (0, 0))[0]}</td>" for n in names)
        out.append(f"<tr><td><a href='#{e(_slug(learner))}'>{e(learner)}</a></td>{row}<td class='num'>{got}</td></tr>")
    out.append("</table><h2>Exercises</h2><table><tr><th>notebook</th><th>exercise</th>")
    out.append("".join(f"<th>{SYMBOLS[s]} {s}</th>" for s in STATUSES) + "</tr>")
    for nb, ex, c in _exercise_stats(book):
        cells = "".join(f"<td class='num'>{c.get(s, 0)}</td>" for s in STATUSES)
        out.append(f"<tr><td>{e(nb)}</td><td>{e(ex)}</td>{cells}</tr>")
    out.append("</table><h2>Learners</h2>")
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        out.append(f"<h3 id='{e(_slug(learner))}'>{e(learner)}: {got}/{total_max}</h3>")
        notes = [(k.split("/", 1)[1], n) for k, v in book.notes.items() if k.split("/", 1)[0] == learner for n in v]
        if notes:
            out.append("<ul>" + "".join(f"<li class='note'>{e(nb)}: {e(n)}</li>" for nb, n in notes) + "</ul>")
        out.append("<table><tr><th>notebook</th><th>exercise</th><th>verdict</th><th>points</th><th>hint</th></tr>")
        for r in (r for r in book.rows if r.learner == learner):
            out.append(
                f"<tr class='{r.status}'><td>{e(r.notebook)}</td><td>{e(r.exercise)}</td>"
                f"<td class='verdict'>{SYMBOLS[r.status]} {r.status}</td><td class='num'>{r.points}/{r.max_points}</td>"
                f"<td>{e(r.message)}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- command line


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.grade",
        description="Grade SUBMISSIONS/<learner>/<NN_topic>.ipynb against solutions/ with nbval.",
    )
    parser.add_argument("submissions", type=Path, help="folder with one folder per learner")
    parser.add_argument("--out", type=Path, default=Path("grading-out"), help="gradebook folder (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks graded at once (default: number of cores)")
    parser.add_argument("--learner", action="append", default=[], help="grade only this learner (repeatable); "
                        "merges into an existing gradebook in --out")  # fmt: skip
    parser.add_argument("--notebook", action="append", default=[], help="grade only notebook NN (repeatable)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, help="seconds per cell (%(default)g)")
    parser.add_argument(
        "--notebook-timeout", type=float, default=NOTEBOOK_TIMEOUT_S, help="seconds per notebook, re-runs included"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the graded copies (for debugging the grader)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the running notebooks too, like Ctrl-C
    settings = Settings(
        cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout, keep_temp=args.keep_temp
    )
    try:
        grade(
            args.submissions,
            args.out,
            jobs=args.jobs or None,
            only_learners=args.learner,
            only_notebooks=args.notebook,
            settings=settings,
        )
    except server.ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the running notebooks were stopped; no gradebook written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    server.exit_now(main())
