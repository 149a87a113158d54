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

Integrity (docs/instructor-guide.md, "Isolation", says what this does not cover): ``solutions/``, ``helpers/`` and
``tests/nbval.cfg`` are read into memory once, before any notebook runs (:class:`CourseFiles`), and every run gets a
fresh copy of that snapshot, checked afterwards; the per-cell records are signed with a per-run key that reaches
nbval's process on stdin (``helpers.nbval_results``); :class:`RepoWatch` flags changes to the course and the grading
packages for the whole run; :class:`Reaper` makes the grader a child subreaper and kills what notebooks leave
running; Ctrl-C/SIGTERM still writes the gradebook of what finished.

The submission files are only read. Gradebook files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import csv
import ctypes
import hashlib
import hmac
import html
import importlib.util
import io
import json
import os
import py_compile
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
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
TOKEN_VAR = "COURSE_GRADE_TOKEN"  # marks every process of one nbval run (not a secret: used to find orphans)
HANDSHAKE_VAR = "COURSE_GRADE_HANDSHAKE"  # tells helpers.nbval_results to read its key from stdin
INTERRUPTED = "grading was interrupted"
TAMPERED = "the grading records were tampered with"
EX_TAG = re.compile(r"^ex-(\d\d\.\d+)$")
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NB_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")
# In learner-written cells that Python cannot parse (see review_flags), these regexes deserve a human look.
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
    protected: frozenset[str] = frozenset()  # names the check cells call through (nb00)
    modules: frozenset[str] = frozenset()  # what the solution imports or defines with %%module, and `course`

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
        names = {"course"}  # the setup cell's session object (the contract: course = await runtime.start("NN"))
        for c in cells:
            if m := re.match(r"\s*%%module\s+(\w+)", _source(c)):
                names.add(m[1])
            elif c.get("cell_type") == "code" and (tree := _parse_cell(_source(c))) is not None:
                names |= imported_names(tree, top_level_only=True)
        protected = check_names(ex.check for ex in exercises)
        refs.append(Reference(path.stem, tuple(exercises), frozenset(known), protected, frozenset(names)))
    return refs


# --------------------------------------------------------------------------- reviewing learner code

VERDICT_CHARS = "✅⏳❌"
VERDICT_CODES = frozenset({0x2705, 0x23F3, 0x274C})
VERDICT_TEXT = re.compile(r"2705|23f3|274c|heavy check mark|hourglass|cross mark", re.IGNORECASE)
PYTHON_CELL_MAGICS = frozenset({"module", "time", "timeit", "capture", "prun"})  # their body is Python
RISKY_LINE_MAGICS = frozenset({"run", "load", "load_ext", "reload_ext", "autoreload", "aimport", "macro", "reset"})
RISKY_NAMES = frozenset({"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint",
                         "__builtins__", "builtins", "get_ipython"})  # fmt: skip
NAMESPACE_CALLS = frozenset({"globals", "locals", "vars"})  # reading them (.get, [k], `in`) is fine; writing is not
DICT_READS = frozenset({"get", "keys", "items", "values", "copy", "__contains__"})
RISKY_MODULES = frozenset({"builtins", "ctypes", "gc", "importlib", "imp", "runpy", "unicodedata"})
RISKY_ATTRS = frozenset({"__file__", "__globals__", "__code__", "__closure__", "__builtins__", "__subclasses__",
                         "__defaults__", "__kwdefaults__", "f_globals", "f_locals", "f_builtins", "f_back",
                         "gi_frame", "cr_frame", "tb_frame", "reload", "redirect_stdout", "redirect_stderr",
                         "dup2"})  # fmt: skip
IPYTHON_ATTRS = frozenset({"events", "ast_transformers", "input_transformers_cleanup", "input_transformers_post",
                           "input_transformer_manager", "user_ns", "user_global_ns", "register_magic_function",
                           "register_magics", "magics_manager", "set_custom_exc", "display_pub", "run_cell",
                           "run_cell_async", "run_line_magic", "run_cell_magic", "showtraceback"})  # fmt: skip
SYS_ATTRS = frozenset({"modules", "meta_path", "path_hooks", "path_importer_cache", "settrace", "setprofile",
                       "addaudithook", "_getframe", "displayhook", "excepthook"})  # fmt: skip
ALWAYS_ROOTS = frozenset({"sys", "builtins", "__builtins__", "checks", "helpers"})
_MAGIC_ASSIGN = re.compile(r"^(\s*[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*)[%!](%?)(\w*)")
_AST_FLAGS = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def _python_of_cell(source: str, protected: Collection[str], flag: Any) -> str | None:
    """The cell as Python: a cell magic's first line dropped (``%%module`` and the magics whose body is Python),
    line magics and shell escapes replaced by ``pass``/``None``. None when the body is not Python."""
    lines = source.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic, _, arg = lines[first].strip()[2:].partition(" ")
        if magic == "module" and arg.strip() in protected:
            flag(f"%%module {arg.strip()}")
        elif magic not in PYTHON_CELL_MAGICS:
            flag(f"cell magic %%{magic}")
            return None
        lines[first] = ""
    for i, line in enumerate(lines):
        body = line.lstrip()
        if body.startswith(("%", "!")):
            if (m := re.match(r"%+(\w+)", body)) and m[1] in RISKY_LINE_MAGICS:
                flag(f"%{m[1]}")
            lines[i] = line[: len(line) - len(body)] + "pass"
        elif m := _MAGIC_ASSIGN.match(line):
            if m[3] in RISKY_LINE_MAGICS:
                flag(f"%{m[3]}")
            lines[i] = m[1] + "None"
    return "\n".join(lines)


def _parse_cell(source: str, protected: Collection[str] = (), flag: Any = lambda _: None) -> ast.Module | None:
    code = _python_of_cell(source, protected, flag)
    if code is None:
        return None
    try:
        return compile(code, "<cell>", "exec", _AST_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):  # get_ipython().events: the call's name
        node = node.func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def imported_names(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    """Names a cell binds by ``import`` (in the whole tree, or only at its top level)."""
    nodes = getattr(tree, "body", []) if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if a.name != "*"}
    return names


def review_flags(source: str, protected: Collection[str], roots: Collection[str] = ()) -> list[str]:
    """What in a learner-written cell deserves the instructor's look: code that could fool the checks.

    ``protected``: names the check cells call through (``nb00``; ``checks`` and ``helpers`` are added). ``roots``:
    names whose attributes a learner has no reason to assign (modules the notebook imports, names the solution binds
    at top level). A heuristic for a human review note, never a grade: it reads the code, it does not run it."""
    protected = {*protected, "checks", "helpers"}
    roots = {*roots, *protected, *ALWAYS_ROOTS}
    found: dict[str, None] = {}

    def flag(label: str) -> None:
        found.setdefault(label)

    code = _python_of_cell(source, protected, flag)
    if code is None:
        return list(found)
    try:
        tree = compile(code, "<cell>", "exec", _AST_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):  # IPython may still run it (e.g. `obj?`): fall back to plain text
        for label, rx in SUSPICIOUS.items():
            if rx.search(source) or (label == "verdict symbols" and VERDICT_TEXT.search(source)):
                flag(label)
        return list(found)
    rebindable = protected | {"print"}
    reads: set[int] = set()  # globals()/vars()/locals() calls that only read
    for node in ast.walk(tree):
        inner = None
        if (isinstance(node, ast.Attribute) and node.attr in DICT_READS) or (
            isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
        ):
            inner = node.value
        elif isinstance(node, ast.Compare) and all(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            inner = node.comparators[-1]
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id in NAMESPACE_CALLS:
            reads.add(id(inner.func))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in rebindable and isinstance(node.ctx, (ast.Store, ast.Del)):
                flag(f"rebinds {node.id}")
            if node.id in RISKY_NAMES and id(node) not in reads:
                flag(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in rebindable:
                flag(f"rebinds {node.name}")
        elif isinstance(node, ast.ExceptHandler) and node.name in rebindable:
            flag(f"rebinds {node.name}")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in set(node.names) & rebindable:
                flag(f"rebinds {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                bound = alias.asname or (alias.name if module else alias.name.split(".")[0])
                # The setup cell's own import (from helpers.checks import nb00) is not worth a note.
                setup_import = module == "helpers.checks" and bound == alias.name and bound in protected
                if alias.name == "*":
                    flag(f"from {module} import *")
                elif bound in rebindable and not setup_import:
                    flag(f"rebinds {bound}")
                if full.startswith("helpers.checks") and not setup_import:
                    flag("helpers.checks")
                if full.split(".")[0] in RISKY_MODULES:
                    flag(f"imports {full.split('.')[0]}")
        elif isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and isinstance(node.ctx, (ast.Store, ast.Del)) and chain[0] in roots:
                flag(f"assigns to {'.'.join(chain)}")
            if node.attr in IPYTHON_ATTRS:
                flag(f"IPython internals (.{node.attr})")
            if node.attr in RISKY_ATTRS:
                flag(node.attr)
            if chain and chain[0] == "sys" and node.attr in SYS_ATTRS:
                flag(f"sys.{node.attr}")
            if chain and chain[:2] == ["helpers", "checks"]:
                flag("helpers.checks")
            if node.attr == "__dict__" and chain and chain[0] in roots:
                flag(f"{chain[0]}.__dict__")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in ("setattr", "delattr") and node.args:
                target = _dotted(node.args[0])
                if target and target[0] in roots:
                    flag(f"{name}() on {target[0]}")
            elif name == "chr" and node.args:
                arg = node.args[0]
                if not isinstance(arg, ast.Constant):
                    flag("chr() of a computed value")
                elif arg.value in VERDICT_CODES:
                    flag("verdict symbols")
        elif isinstance(node, ast.Constant) and _verdict_constant(node.value):
            flag("verdict symbols")
    return list(found)


def _verdict_constant(value: Any) -> bool:
    """A literal that spells a verdict symbol: the character, its escape/code point in text, bytes or a number."""
    if isinstance(value, bytes):
        return any(c.encode() in value for c in VERDICT_CHARS) or bool(VERDICT_TEXT.search(value.decode("latin-1")))
    if isinstance(value, str):
        return any(c in value for c in VERDICT_CHARS) or bool(VERDICT_TEXT.search(value))
    return isinstance(value, int) and not isinstance(value, bool) and value in VERDICT_CODES


def check_names(cells: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The names check cells call through: ``nb00`` in ``await nb00.check_greet_team(...)``."""
    names: set[str] = set()
    for cell in cells:
        tree = _parse_cell(_source(cell))
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Call) and (chain := _dotted(node.func)) and len(chain) > 1:
                names.add(chain[0])
    return frozenset(names)


# --------------------------------------------------------------------------- reading a submission


def read_submission(path: Path) -> dict[str, Any]:
    """The notebook JSON of a learner's file, or SubmissionError with a one-line reason."""
    if path.is_symlink() and not path.exists():
        raise SubmissionError(f"the file is a broken symbolic link (to {os.readlink(path)})")
    try:
        # Read only (the file is never written); O_NONBLOCK so that a FIFO cannot block the grader.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise SubmissionError("it is a folder, not a notebook file")
            if not stat.S_ISREG(st.st_mode):
                kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
                raise SubmissionError(f"it is {kind}, not a regular file")
            if st.st_size > MAX_NOTEBOOK_BYTES:
                raise SubmissionError(f"the file is {st.st_size / 1e6:.0f} MB, over the grader's limit of 64 MB")
            raw = f.read(MAX_NOTEBOOK_BYTES + 1)
        if len(raw) > MAX_NOTEBOOK_BYTES:
            raise SubmissionError("the file is over the grader's limit of 64 MB")
    except IsADirectoryError:
        raise SubmissionError("it is a folder, not a notebook file") from None
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
        by_id = [
            i
            for i, it in enumerate(items)
            if it["orig"] == ex.check.get("id") and "check" not in it and it["cell"].get("cell_type") == "code"
        ]
        by_tag = [i for i, it in enumerate(items) if "check" not in it and check_exercise(it["cell"]) == ex.id]
        position = by_id[0] if by_id else (by_tag[-1] if by_tag else None)
        theirs = {*by_id, *by_tag}
        if any(_normalized(_source(items[i]["cell"])) != _normalized(_source(ex.check)) for i in theirs):
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
    imported: set[str] = set()  # modules the learner's cells import: assigning their attributes is worth a look
    for it in items:
        if "check" not in it and it["cell"].get("cell_type") == "code":
            tree = _parse_cell(_source(it["cell"]))
            imported |= imported_names(tree) if tree is not None else set()
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
                hits = review_flags(cell["source"], ref.protected, ref.modules | imported)
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

# Installed packages a tampered copy of which would change every later grade: watched around each notebook.
GRADING_PACKAGES = ("nbval", "_pytest", "pytest", "pluggy", "jupyter_client", "ipykernel", "nbformat", "IPython")


def _package_dirs() -> tuple[Path, ...]:
    dirs = []
    for name in GRADING_PACKAGES:
        with contextlib.suppress(ImportError, ValueError, AttributeError):
            spec = importlib.util.find_spec(name)
            dirs += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return tuple(dirs)


def _environment_dirs() -> tuple[Path, ...]:
    """Folders watched without recursing: site-packages (``*.pth`` files run at every Python start) and bin/."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(Path(sys.executable).parent)}
    return tuple(Path(p) for p in sorted(paths))


@dataclass
class Settings:
    cell_timeout: float = CELL_TIMEOUT_S
    notebook_timeout: float = NOTEBOOK_TIMEOUT_S
    max_runs: int = MAX_RUNS
    keep_temp: bool = False
    source: Path = ROOT  # the course whose helpers/ and tests/nbval.cfg the kernels get (copied once, at the start)
    watch: tuple[Path, ...] = field(default_factory=lambda: (ROOT, *_package_dirs()))  # recursively
    watch_flat: tuple[Path, ...] = field(default_factory=_environment_dirs)  # only the files directly inside
    watch_environment: bool = True  # also compare all of sys.prefix (a venv) before and after the whole run


@dataclass
class RunResult:
    records: dict[str, dict[str, Any]]  # graded cell id -> its record
    order: list[str]  # graded cell ids in the order nbval reported them
    finished: bool  # pytest reached the end of the session
    killed: bool  # the wall-clock budget ran out and the process tree was killed
    returncode: int | None
    log: str
    tampered: str | None = None  # why the records cannot be trusted


class CourseFiles:
    """``helpers/`` and ``tests/nbval.cfg`` as they were when grading started, held in the grader's memory.

    Each nbval run gets a fresh copy (``lib/``, first on the kernel's ``PYTHONPATH``), written from this snapshot,
    never from the live repository, which a notebook could rewrite for the notebooks graded after it. The copy
    includes byte-code compiled with hash checks, so kernels need not write any; after the run the copy is compared
    with what was written (content, and inode/ctime, which a process cannot set back), to catch one notebook editing
    the copy of another (or its own before importing it)."""

    CODE = (".py", ".pyc", ".pth", ".so", ".cfg")

    def __init__(self, source: Path) -> None:
        files: dict[str, bytes] = {}
        for path in sorted((source / "helpers").rglob("*")):
            rel = path.relative_to(source)
            if "__pycache__" in rel.parts or path.suffix in (".pyc", ".tmp") or not path.is_file():
                continue
            files[rel.as_posix()] = path.read_bytes()
        files["nbval.cfg"] = (source / "tests" / "nbval.cfg").read_bytes()
        with tempfile.TemporaryDirectory(prefix="course-grade-pyc-") as tmp:
            for rel, data in list(files.items()):
                if rel.endswith(".py"):
                    src = Path(tmp) / rel
                    src.parent.mkdir(parents=True, exist_ok=True)
                    src.write_bytes(data)
                    pyc = Path(importlib.util.cache_from_source(str(src)))
                    with contextlib.suppress(py_compile.PyCompileError):
                        mode = py_compile.PycInvalidationMode.CHECKED_HASH
                        py_compile.compile(str(src), cfile=str(pyc), doraise=True, invalidation_mode=mode)
                        files[pyc.relative_to(tmp).as_posix()] = pyc.read_bytes()
        self.files = files

    def write(self, lib: Path) -> dict[str, tuple[int, int, int]]:
        for rel, data in self.files.items():
            path = lib / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return self._scan(lib)

    @staticmethod
    def _scan(lib: Path) -> dict[str, tuple[int, int, int]]:
        found = {}
        for dirpath, _, filenames in os.walk(lib):
            for name in filenames:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    found[Path(dirpath, name).relative_to(lib).as_posix()] = (st.st_ino, st.st_ctime_ns, st.st_size)
        return found

    def changes(self, lib: Path, written: Mapping[str, tuple[int, int, int]]) -> list[str]:
        """Files of the copy changed or removed since ``write``, and code files added to it."""
        now = self._scan(lib)
        changed = [rel for rel in written if now.get(rel) != written[rel] or _read(lib / rel) != self.files.get(rel)]
        added = [rel for rel in now if rel not in written and (rel.endswith(self.CODE) or "__pycache__" in rel)]
        return sorted(changed + added)


def kernel_env(base: Mapping[str, str], home: Path, lib: Path, token: str) -> dict[str, str]:
    """The environment of one nbval run (and its kernel): private HOME, TMPDIR, data dir, a copy of helpers.
    It carries no secret and no path to the results file: the kernel can read it."""
    drop = ("PYTEST_", "PYTHON", "JPY_", "COV_CORE", "COVERAGE_", "VIRTUAL_ENV_PROMPT", "MPLBACKEND", "COURSE_GRADE")
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
        PYTHONDONTWRITEBYTECODE="1",  # lib/ ships its byte-code; a new .pyc there would be someone's doing
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        **{TOKEN_VAR: token, HANDSHAKE_VAR: "stdin"},
    )
    return env


def _environ_has(pid: int, needles: Collection[bytes]) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(n in env for n in needles)


def _processes_with_token(token: str) -> list[int]:
    """Pids whose environment carries ``token`` (Linux /proc): a kernel and anything it started, orphans too."""
    needle = f"{TOKEN_VAR}={token}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    me = os.getpid()
    pids = (int(e.name) for e in proc.iterdir() if e.name.isdigit())
    return [pid for pid in pids if pid != me and _environ_has(pid, [needle])]


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


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def _prctl(option: int, arg: int = 0) -> int | None:
    """Linux prctl(2); None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, ctypes.c_ulong(arg), 0, 0, 0))
    except (OSError, AttributeError):
        return None


class Reaper:
    """The grader as a child subreaper (Linux): a process a notebook detaches (double fork, own session, a clean
    environment without the run's token) is re-parented to the grader instead of init, so it stays a descendant;
    :meth:`sweep` kills every descendant that is neither a running nbval job's nor older than grading. Also makes
    the grader non-dumpable while it holds run keys (see ``helpers.nbval_results``). :meth:`close` restores both."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        was = ctypes.c_int(0)
        self.was_subreaper = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                if ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) == 0:
                    self.was_subreaper = was.value
        self.subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
        self.was_dumpable = _prctl(PR_GET_DUMPABLE)
        _prctl(PR_SET_DUMPABLE, 0)
        self.keep = {self._key(p) for p in self._descendants()}

    def _descendants(self) -> list[Any]:
        try:
            return self.me.children(recursive=True)
        except self.psutil.Error:
            return []

    def _key(self, p: Any) -> tuple[int, float]:
        try:
            return (p.pid, p.create_time())
        except self.psutil.Error:
            return (p.pid, 0.0)

    def sweep(self) -> list[str]:
        """Kill the descendants no running job owns (again, until none is left: a process can fork while its
        parent is being killed); returns their command lines."""
        names: list[str] = []
        for _ in range(5):
            killed = self._sweep_once(names)
            if not killed:
                break
            time.sleep(0.05)
        return names

    def _sweep_once(self, names: list[str]) -> int:
        ps = self.psutil
        with _ACTIVE_LOCK:  # no job starts while we decide (its pytest would look like a leftover)
            owned: set[int] = set()
            tokens = [f"{TOKEN_VAR}={token}".encode() for _, token in _ACTIVE.values()]
            for proc, _ in _ACTIVE.values():
                owned.add(proc.pid)
                with contextlib.suppress(ps.Error):
                    owned |= {c.pid for c in ps.Process(proc.pid).children(recursive=True)}
            victims = []
            for p in self._descendants():
                if p.pid in owned or self._key(p) in self.keep or (tokens and _environ_has(p.pid, tokens)):
                    continue
                victims.append(p)
            alive = 0
            for p in victims:
                with contextlib.suppress(ps.Error):
                    if p.status() != ps.STATUS_ZOMBIE:
                        alive += 1
                        names.append(" ".join(p.cmdline()[:3]) or p.name())
                with contextlib.suppress(ps.Error):
                    p.kill()
        deadline = time.monotonic() + 2.0
        for p in victims:  # reap the ones re-parented to us (else they stay zombies)
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(p.pid, os.WNOHANG)[0] != 0:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.01)
        return alive

    def close(self) -> list[str]:
        names = self.sweep()
        if self.subreaper and self.was_subreaper is not None:
            _prctl(PR_SET_CHILD_SUBREAPER, self.was_subreaper)
        if self.was_dumpable is not None and self.was_dumpable >= 0:
            _prctl(PR_SET_DUMPABLE, self.was_dumpable)
        return names


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns, st.st_size)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _new_key() -> bytes:
    return secrets.token_bytes(32)


def read_records(path: Path, key: bytes) -> tuple[dict[str, dict[str, Any]], list[str], bool, str | None]:
    """The signed records of one run: (records by cell id, order, finished, why they were tampered with)."""
    from helpers.nbval_results import sign

    records: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    finished = False
    try:
        raw = path.read_bytes()
    except OSError:
        return records, order, False, None
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a line cut short by a kill
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(lines):
        sig, _, payload = line.partition(b" ")
        if not hmac.compare_digest(sig, sign(key, payload).encode()):
            return records, order, finished, f"line {n + 1} of the results is not signed by the grader's run"
        rec = json.loads(payload)
        if rec.get("seq") != n:
            return records, order, finished, f"line {n + 1} of the results is out of sequence"
        if finished:
            return records, order, finished, "results continue after the end of the run"
        if rec.get("finished"):
            finished = True
        elif isinstance(rec.get("cell_id"), str):
            if (rec["cell_id"], rec.get("when")) in seen or rec["cell_id"] in records:
                return records, order, finished, f"two results for the cell {rec['cell_id']!r}"
            seen.add((rec["cell_id"], rec.get("when")))
            order.append(rec["cell_id"])
            records[rec["cell_id"]] = rec
    return records, order, finished, None


def run_nbval(
    nb: Mapping[str, Any], workdir: Path, lib: Path, settings: Settings, deadline: float, base_env: Mapping[str, str]
) -> RunResult:
    """One strict nbval run of a graded copy in ``workdir`` (cwd), bounded by ``deadline`` (monotonic)."""
    run_id = uuid.uuid4().hex[:8]
    home = workdir.parent / f"home-{run_id}"
    nb_path = workdir / "graded.ipynb"
    ini = workdir.parent / "pytest.ini"
    inputs = {nb_path: json.dumps(nb, ensure_ascii=False, indent=1).encode(), ini: b"[pytest]\naddopts =\n"}
    for path, data in inputs.items():
        path.write_bytes(data)
    stats = {path: _stat_key(path) for path in inputs}
    results = workdir.parent / f"results-{run_id}.jsonl"
    results.touch()
    token = uuid.uuid4().hex
    key = _new_key()
    env = kernel_env(base_env, home, lib, token)
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
        with _ACTIVE_LOCK:  # registered before a sweep could see it, and never after an interrupt
            if _STOPPING.is_set():
                raise RuntimeError("grading was stopped")
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
            _ACTIVE[proc.pid] = (proc, token)
        try:
            # The key and the results path go on stdin: never in the environment or argv, which the kernel sees.
            with contextlib.suppress(OSError), proc.stdin:  # type: ignore[union-attr]
                proc.stdin.write(json.dumps({"key": key.hex(), "results": str(results)}).encode() + b"\n")  # type: ignore[union-attr]
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            kill_tree(proc, token)  # also reaps what a finished run left behind
            with _ACTIVE_LOCK:
                _ACTIVE.pop(proc.pid, None)
    records, order, finished, tampered = read_records(results, key)
    # What nbval and the kernel read at start must be what the grader wrote (a notebook graded at the same time
    # could have rewritten it, or planted IPython start-up code in this run's private HOME).
    changed = [p.name for p, data in inputs.items() if _stat_key(p) != stats[p] or _read(p) != data]
    planted = sorted(
        str(p.relative_to(home))
        for pattern in ("*/startup/*", "*/ipython*config.*", "*/ipython_kernel_config.*")
        for p in (home / ".ipython").glob(pattern)
        if p.name != "README"
    )
    if not tampered and (changed or planted):
        tampered = f"{', '.join(changed + planted)} changed or appeared during the run"
    return RunResult(records, order, finished and not killed, killed, proc.returncode, _tail(log_path), tampered)


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
    interrupted: bool = False  # grading was stopping while this notebook ran: its rows are not trustworthy


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
        if verdict.status == "unavailable":  # the server did not answer: the grader's problem, not the learner's
            return row("error", f"not graded: {verdict.message}")
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
    course: CourseFiles | None = None,
) -> NotebookResult:
    """Grade one learner's notebook; never raises (problems become rows with status ``error``). ``course``: the
    snapshot of helpers/ and nbval.cfg the kernels get (taken from ``settings.source`` when not given)."""
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
        course = course or CourseFiles(settings.source)
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
            lib = work_root / f"lib-{result.runs + 1}"  # a fresh copy for every run
            written = course.write(lib)
            run = run_nbval(graded.notebook, workdir, lib, settings, deadline, base_env)
            result.runs += 1
            logs.append(_run_log(result.runs, graded, run))
            if changed := course.changes(lib, written):
                shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
                run.tampered = run.tampered or f"the grader's private copy of the course files changed: {shown}"
            if run.tampered:
                break
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
        if run.tampered:
            result.rows = _rows(learner, ref, "error", f"{TAMPERED} ({run.tampered}); look at this notebook")
            result.notes.append(f"{TAMPERED}: {run.tampered}. Not graded; look at this notebook's code.")
            result.log = "\n".join(logs)
            return result
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


def learner_slug(name: str) -> str:
    """A folder name / HTML anchor for a learner, distinct for distinct names: a name that is not already a plain
    lower-case slug gets a short hash (``a b`` and ``a_b``, or ``Ada`` and ``ada`` on a case-blind disk)."""
    slug = _slug(name)
    if slug == name and name == name.lower():
        return slug
    return f"{slug[:40]}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def find_submission(learner_dir: Path, ref: Reference) -> tuple[Path | None, str | None]:
    """``<learner>/<NN_topic>.ipynb``; else one ``NN_*.ipynb`` / ``NN-*.ipynb`` / ``NN *.ipynb`` (noted). Something
    there that is not a readable file (a FIFO, a broken link) is returned too: it becomes an error row."""
    exact = learner_dir / f"{ref.name}.ipynb"
    if os.path.lexists(exact):
        return exact, None
    pattern = re.compile(rf"^{ref.prefix}[ _-].*\.ipynb$", re.IGNORECASE)
    found = sorted((not p.is_file(), p) for p in learner_dir.iterdir() if pattern.match(p.name))
    found = [p for _, p in found]  # regular files first
    if not found:
        return None, None
    if len(found) > 1:
        return found[0], f"several files for {ref.name} ({', '.join(p.name for p in found)}); graded {found[0].name}"
    return found[0], f"graded {found[0].name} as {ref.name}.ipynb"


def learners(submissions: Path) -> list[Path]:
    return sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _outside(path: Path, *folders: Path) -> bool:
    """Whether ``path`` (symbolic links followed) lies outside every one of ``folders``."""
    try:
        real = path.resolve()
        return not any(real == f or f in real.parents for f in (f.resolve() for f in folders))
    except (OSError, RuntimeError):  # a symbolic link loop: reading it fails later, with a message
        return False


class RepoWatch:
    """Notices files changed under the watched folders while notebooks run, and who could have done it.

    ``roots`` are walked recursively (without .git, .venv, caches), ``flat`` folders only one level deep. A file
    counts as changed when its mtime, ctime, size or inode differ (ctime cannot be set back by a process). Once a
    change is seen, the run is flagged: ``alarm`` holds the first one, ``on_alarm`` is called once, and every
    notebook that finishes from then on gets a note."""

    SKIP = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"})

    def __init__(
        self,
        roots: Sequence[Path],
        exclude: Sequence[Path] = (),
        flat: Sequence[Path] = (),
        on_alarm: Any = None,
        skip: Collection[str] = SKIP,
    ) -> None:
        self.roots = [r.resolve() for r in roots if r.exists()]
        self.flat = [f.resolve() for f in flat if f.is_dir()]
        self.exclude = [e.resolve() for e in exclude]
        self.skip = frozenset(skip)
        self.on_alarm = on_alarm
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.alarm: str | None = None
        self.changed: list[str] = []
        self.pending: dict[str, list[str]] = {}  # notes for notebooks still running
        self.state = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int, int, int]]:
        files: dict[str, tuple[int, int, int, int]] = {}

        def add(path: str) -> None:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                files[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = [d for d in dirnames if d not in self.skip and here / d not in self.exclude]
                for name in filenames:
                    add(os.path.join(dirpath, name))
        for folder in self.flat:
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        add(entry.path)
        return files

    def check(self) -> list[str]:
        """Files changed since the last check. Every notebook running now gets a note naming them (the change
        happened while it ran, or before it started: the watcher only looks when a notebook ends); the first
        change raises the alarm."""
        with self.lock:
            now = self.snapshot()
            changed = sorted(k for k in now.keys() | self.state.keys() if now.get(k) != self.state.get(k))
            self.state = now
            first = bool(changed) and self.alarm is None
            if changed:
                self.changed += [c for c in changed if c not in self.changed]
                suspects = ", ".join(sorted(self.running)) or "none"
                shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                for key in self.running:
                    self.pending.setdefault(key, []).append(
                        f"files in the course repository changed while this notebook ran: {shown} "
                        f"(running then: {suspects})"
                    )
                if first:
                    self.alarm = f"{shown} changed while {suspects} ran"
        if first and self.on_alarm:
            self.on_alarm(self.alarm)
        return changed

    @contextlib.contextmanager
    def running_as(self, key: str) -> Iterator[list[str]]:
        """Yields a list that receives notes when the watched files changed while ``key`` ran, or before it
        ended (its grade was then made after a change and deserves a look)."""
        notes: list[str] = []
        with self.lock:
            self.running.add(key)
        try:
            yield notes
        finally:
            self.check()
            with self.lock:
                self.running.discard(key)
                notes += self.pending.pop(key, [])
                if not notes and self.alarm:
                    notes.append(f"graded after files of the course changed during this run ({self.alarm}); "
                                 "see the warning at the top of the report")  # fmt: skip


@dataclass
class Gradebook:
    rows: list[Row]
    notes: dict[str, list[str]]  # "learner/notebook" -> notes
    notebooks: list[tuple[str, int]]  # (name, max points)
    meta: dict[str, Any]


class UsageError(SystemExit):
    """A problem with the command line found before grading starts: exit status 2 and a one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during grading, after the gradebook of what finished was written."""

    def __init__(self, book: Gradebook, unfinished: int) -> None:
        super().__init__(f"{unfinished} notebook(s) not graded")
        self.book = book
        self.unfinished = unfinished


def _prepare_out(out: Path) -> None:
    """Create ``out`` and prove it is writable, before any notebook runs (not after all the work)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"error: --out {out} is a file, not a folder; choose a folder for the gradebook")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"error: cannot write the gradebook into {out}: {err.strerror or err}") from None


def _previous_gradebook(out: Path) -> Gradebook | None:
    """The gradebook a regrade of some learners/notebooks merges into; refuses when it exists but cannot be read
    (else everyone else's grades would silently disappear)."""
    book_file = out / "gradebook.json"
    others = [n for n in ("grades.csv", "summary.csv", "report.html", "report.md") if (out / n).exists()]
    if not book_file.exists() and not others:
        return None  # a first grading into a new folder
    old = load_gradebook(out)
    if old is None:
        what = "cannot be read" if book_file.exists() else f"is missing (but {', '.join(others)} is there)"
        raise UsageError(
            f"error: {book_file} {what}, so a regrade with --learner/--notebook cannot be merged into it and "
            "everyone else's grades would be lost. Restore it, or regrade everyone (without --learner/--notebook) "
            "or into a new --out folder."
        )
    return old


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
    """Grade every learner folder in ``submissions`` into ``out`` (see the module docstring).

    Raises :class:`UsageError` before any work for a bad ``out`` or an unreadable gradebook to merge into, and
    :class:`GradingInterrupted` on Ctrl-C/SIGTERM, after writing the gradebook (unfinished notebooks as errors)."""
    settings = settings or Settings()
    jobs = max(1, jobs or cores())
    submissions = submissions.resolve()
    out = out.resolve()
    if not submissions.is_dir():
        raise SystemExit(f"error: {submissions} is not a folder of learner folders")
    if out == submissions or submissions in out.parents:
        raise SystemExit("error: --out must not be inside the submissions folder (it is never written to)")
    _prepare_out(out)
    old = _previous_gradebook(out) if (only_learners or only_notebooks) else None
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
    warnings: list[str] = []

    def alarm(text: str) -> None:
        warnings.append(
            f"Files of the course or its Python environment changed while notebooks ran: {text}. Every notebook "
            "graded from then on has a note. The kernels got the grader's copy of helpers/ and tests/nbval.cfg "
            "taken before any notebook ran, and the solutions were read then too; a change elsewhere (installed "
            "packages) can still change grades: check the files (git status), restore them, and regrade the "
            "noted notebooks."
        )
        print(f"WARNING: {warnings[-1]}", file=sys.stderr, flush=True)

    course = CourseFiles(settings.source)  # before any notebook runs; kernels get copies of this snapshot
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
    busy = [out, tmp_root, server.data_dir()]  # written during grading by the grader and the Temporal server
    watch = RepoWatch(settings.watch, exclude=busy, flat=settings.watch_flat, on_alarm=alarm)
    env_watch = None
    if settings.watch_environment and sys.prefix != sys.base_prefix:  # a venv: compared as a whole at the end
        env_watch = RepoWatch([Path(sys.prefix)], exclude=busy, skip={"__pycache__"})
    results: dict[int, NotebookResult] = {}
    leftovers: list[str] = []

    def work(person: Path, ref: Reference) -> NotebookResult:
        if _STOPPING.is_set():
            return NotebookResult(person.name, ref.name, [], interrupted=True)
        notes = []
        if _outside(person, submissions):
            notes.append(f"the learner folder is a symbolic link to {person.resolve()}, outside the submissions "
                         "folder; graded anyway")  # fmt: skip
        try:
            path, note = find_submission(person, ref)
        except OSError as err:
            res = NotebookResult(person.name, ref.name, _rows(person.name, ref, "error", f"unreadable folder: {err}"))
            res.notes = notes
            return res
        if path is not None and _outside(path, submissions, person):
            notes.append(f"{path.name} is a symbolic link to {path.resolve()}, outside the submissions folder; "
                         "graded anyway")  # fmt: skip
        watch_notes: list[str] = []
        with (
            watch.running_as(f"{person.name}/{ref.name}")
            if path
            else contextlib.nullcontext(watch_notes) as watch_notes
        ):
            res = grade_notebook(person.name, ref, path, settings, tmp_root, base_env, note, course)
        res.notes = notes + res.notes + watch_notes
        res.interrupted = _STOPPING.is_set()
        if path is not None and (gone := reaper.sweep()):
            who = "it" if jobs == 1 else "it, or by a notebook graded at the same time"
            res.notes.append(f"the grader stopped {len(gone)} process(es) left running after the notebook ended "
                             f"(started by {who}): {', '.join(gone[:3])}")  # fmt: skip
        return res

    _STOPPING.clear()
    reaper = Reaper()
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures: dict[Any, int] = {}
    try:
        for i, (person, ref) in enumerate(tasks):
            futures[pool.submit(work, person, ref)] = i
        for n, fut in enumerate(as_completed(futures), 1):
            res = fut.result()
            results[futures[fut]] = res
            got = sum(r.points for r in res.rows)
            most = sum(r.max_points for r in res.rows)
            tally = Counter(r.status for r in res.rows)
            say(
                f"[{n}/{len(tasks)}] {res.learner} {res.notebook}: {got}/{most} "
                f"({', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}) {res.seconds:.1f} s"
            )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop what runs, keep what finished
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        kill_all_running()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        kill_all_running()
        raise
    finally:
        pool.shutdown(wait=True)
        leftovers = reaper.close()
        if not settings.keep_temp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = round(time.monotonic() - t0, 1)

    if interrupted:
        for fut, i in futures.items():
            finished = i not in results and fut.done() and not fut.cancelled() and fut.exception() is None
            if finished and not fut.result().interrupted:
                results[i] = fut.result()  # finished just before the interrupt, not yet reported
    unfinished = [i for i in range(len(tasks)) if i not in results]
    for i in unfinished:
        person, ref = tasks[i]
        if old is not None and any(r.learner == person.name and r.notebook == ref.name for r in old.rows):
            continue  # a regrade that did not happen: the earlier grades stay
        rows = _rows(person.name, ref, "error", INTERRUPTED)
        results[i] = NotebookResult(person.name, ref.name, rows, [f"{INTERRUPTED} before this notebook was graded"])
    if unfinished:
        warnings.append(
            f"Grading was interrupted: {len(unfinished)} notebook(s) were not graded (status error, "
            f"'{INTERRUPTED}'; in a regrade their earlier grades stay). Run the grader again for them."
        )
    if leftovers:
        warnings.append(f"The grader stopped {len(leftovers)} process(es) left running at the end: "
                        f"{', '.join(leftovers[:5])}")  # fmt: skip
    if env_watch is not None and (changed := env_watch.check()):
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        alarm(f"in the Python environment {sys.prefix}: {shown}")
        for res in results.values():
            res.notes.append(f"files of the Python environment changed during this run ({shown}); this grade may "
                             "not be trustworthy")  # fmt: skip
    for res in results.values():  # a tampering notebook: say so loudly, once per notebook
        if any(r.message.startswith(TAMPERED) for r in res.rows):
            print(f"WARNING: {res.learner}/{res.notebook}: {res.rows[0].message}", file=sys.stderr, flush=True)

    ordered = [results[i] for i in sorted(results)]
    book = Gradebook(
        rows=[row for res in ordered for row in res.rows],
        notes={f"{res.learner}/{res.notebook}": res.notes for res in ordered if res.notes},
        notebooks=[(r.name, r.max_points) for r in refs],
        meta={
            "graded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": elapsed,
            "jobs": jobs,
            "learners": len(people),
            "cell_timeout": settings.cell_timeout,
            "notebook_timeout": settings.notebook_timeout,
            "server": where.address,
            "timings": {f"{res.learner}/{res.notebook}": [res.seconds, res.runs] for res in ordered if res.runs},
            "warnings": warnings,
        },
    )
    if only_learners or only_notebooks:
        book = merge(old, book)
    write_gradebook(out, book, logs={(res.learner, res.notebook): res.log for res in ordered if res.log})
    if interrupted:
        raise GradingInterrupted(book, len(unfinished))
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


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=…``, ``+…``, ``-…``, ``@…``) gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def _md(text: Any) -> str:
    """Text for a Markdown table cell or heading: one line, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


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
        folder = out / "logs" / learner_slug(learner)
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


def _overview(book: Gradebook) -> tuple[list[str], dict[str, int], dict[str, dict[str, tuple[int, int]]], int]:
    """What both reports lay out: notebook names, their max points, per-learner totals, the course max."""
    maxes = dict(book.notebooks)
    return [n for n, _ in book.notebooks], maxes, totals(book), sum(maxes.values())


def _notes_of(book: Gradebook, learner: str) -> list[tuple[str, str]]:
    """(notebook, note) pairs for one learner; notes are keyed ``learner/notebook``."""
    return [(k.split("/", 1)[1], n) for k, v in book.notes.items() if k.split("/", 1)[0] == learner for n in v]


def report_markdown(book: Gradebook) -> str:
    names, maxes, per, total_max = _overview(book)
    lines = [
        "# Gradebook",
        "",
        f"Graded {book.meta.get('graded_at', '')}: {len(per)} learner(s), notebooks {', '.join(names)}; "
        f"per-cell timeout {book.meta.get('cell_timeout', '?'):g} s. Statuses: "
        + ", ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES)
        + ".",
        "",
        *[f"> ⚠️ **Warning:** {_md(w)}\n" for w in book.meta.get("warnings", [])],
        "## Class overview",
        "",
        "| learner | " + " | ".join(f"{n} (/{maxes[n]})" for n in names) + f" | total (/{total_max}) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines.append(f"| {_md(learner)} | " + " | ".join(str(nbs.get(n, (0, 0))[0]) for n in names) + f" | {got} |")
    lines += ["", "## Exercises", "", "| notebook | exercise | " + " | ".join(STATUSES) + " |"]
    lines.append("|---|---|" + "---|" * len(STATUSES))
    for nb, ex, c in _exercise_stats(book):
        lines.append(f"| {nb} | {ex} | " + " | ".join(str(c.get(s, 0)) for s in STATUSES) + " |")
    lines += ["", "## Learners", ""]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines += [f"### {_md(learner)}: {got}/{total_max}", ""]
        notes = _notes_of(book, learner)
        for nb, note in notes:
            lines.append(f"- note ({nb}): {_md(note)}")
        if notes:
            lines.append("")
        lines += ["| notebook | exercise | verdict | points | hint |", "|---|---|---|---|---|"]
        for r in (r for r in book.rows if r.learner == learner):
            lines.append(f"| {_md(r.notebook)} | {_md(r.exercise)} | {SYMBOLS[r.status]} {r.status} | "
                         f"{r.points}/{r.max_points} | {_md(r.message)} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.passed{background:#e7f6e7}.failed{background:#fde8e8}
.not_done{background:#fff7e0}.timeout,.error{background:#f6e0f6}.missing{background:#eee;color:#666}
.note{color:#7a4b00}td.num{text-align:right}td.verdict{white-space:nowrap}h3{margin-top:2em}
.warn{background:#fde8e8;border:2px solid #c00;padding:.5em 1em}
"""


def report_html(book: Gradebook) -> str:
    e = html.escape
    names, maxes, per, total_max = _overview(book)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Gradebook</title>",
        f"<style>{_CSS}</style></head><body><h1>Gradebook</h1>",
        f"<p>Graded {e(str(book.meta.get('graded_at', '')))}: {len(per)} learner(s); per-cell timeout "
        f"{book.meta.get('cell_timeout', 0):g} s. " + " · ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES) + "</p>",
        *[f"<p class='warn'>⚠️ <b>Warning:</b> {e(w)}</p>" for w in book.meta.get("warnings", [])],
        "<h2>Class overview</h2><table><tr><th>learner</th>"
        + "".join(f"<th>{e(n)} (/{maxes[n]})</th>" for n in names)
        + f"<th>total (/{total_max})</th></tr>",
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        row = "".join(f"<td class='num'>{nbs.get(n, (0, 0))[0]}</td>" for n in names)
        out.append(
            f"<tr><td><a href='#{e(learner_slug(learner))}'>{e(learner)}</a></td>{row}<td class='num'>{got}</td></tr>"
        )
    out.append("</table><h2>Exercises</h2><table><tr><th>notebook</th><th>exercise</th>")
    out.append("".join(f"<th>{SYMBOLS[s]} {s}</th>" for s in STATUSES) + "</tr>")
    for nb, ex, c in _exercise_stats(book):
        cells = "".join(f"<td class='num'>{c.get(s, 0)}</td>" for s in STATUSES)
        out.append(f"<tr><td>{e(nb)}</td><td>{e(ex)}</td>{cells}</tr>")
    out.append("</table><h2>Learners</h2>")
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        out.append(f"<h3 id='{e(learner_slug(learner))}'>{e(learner)}: {got}/{total_max}</h3>")
        notes = _notes_of(book, learner)
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
    settings = Settings(
        cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout, keep_temp=args.keep_temp
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the running notebooks too, like Ctrl-C
    try:
        grade(
            args.submissions,
            args.out,
            jobs=args.jobs or None,
            only_learners=args.learner,
            only_notebooks=args.notebook,
            settings=settings,
        )
    except UsageError as err:
        print(err.message, file=sys.stderr)
        return 2
    except server.ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except GradingInterrupted as err:
        print(
            f"interrupted: the running notebooks were stopped; the gradebook was written with {err.unfinished} "
            f"notebook(s) not graded ('{INTERRUPTED}', or their earlier grades in a regrade): "
            f"{args.out.resolve() / 'report.html'}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print("interrupted before any notebook was graded; no gradebook written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    server.exit_now(main())
