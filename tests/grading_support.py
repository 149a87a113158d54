"""What the grader's tests share: a Temporal server of a test's own, classes of synthetic learners, and
grading-command processes to start, watch and kill.

Every test that grades uses a server of its own: a grading worker serves every grading run of the same course files
on its server, so two test modules grading on the session's server would grade (and kill) each other's notebooks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import contract, server

ROOT = contract.ROOT


@contextlib.contextmanager
def private_server(folder: Path, **kwargs: Any) -> Iterator[server.DevServer]:
    """A dev server on a free port that ``TEMPORAL_ADDRESS`` points at (this process and what it starts)."""
    folder.mkdir(parents=True, exist_ok=True)
    dev = server.DevServer.start(headless=True, log_path=folder / "server.log", **kwargs)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEMPORAL_ADDRESS", dev.address)
            mp.setenv("TEMPORAL_NAMESPACE", "default")
            yield dev
    finally:
        dev.stop()


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_class(root: Path, learners: dict[str, dict[str, Any]]) -> None:
    """``root/<learner>/<notebook>.ipynb`` for every learner -> {notebook name: notebook JSON}."""
    for learner, notebooks in learners.items():
        (root / learner).mkdir(parents=True, exist_ok=True)
        for name, nb in notebooks.items():
            (root / learner / f"{name}.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")


def with_cell(nb: dict[str, Any], after: str, cell_id: str, source: str) -> dict[str, Any]:
    """A copy of ``nb`` with a code cell inserted after the cell ``after``."""
    nb = copy.deepcopy(nb)
    cell = {"cell_type": "code", "id": cell_id, "metadata": {}, "outputs": [], "source": source}
    cell["execution_count"] = None
    nb["cells"].insert(next(i for i, c in enumerate(nb["cells"]) if c.get("id") == after) + 1, cell)
    return nb


def counted(nb: dict[str, Any], counter: Path, label: str) -> dict[str, Any]:
    """``nb`` with a cell after its setup that appends ``label`` to ``counter`` each time the notebook is run:
    how often a notebook was graded, seen from outside the grader."""
    source = f"with open({str(counter)!r}, 'a') as f:\n    f.write({label!r} + '\\n')\n"
    return with_cell(nb, "setup", "count-runs", source)


def runs_of(counter: Path) -> dict[str, int]:
    lines = counter.read_text().split() if counter.exists() else []
    return {label: lines.count(label) for label in set(lines)}


def course_copy(root: Path, *, differ: bool = False) -> Path:
    """A checkout of the course of a test's own (``helpers/``, ``solutions/``, ``notebooks/``, ``tests/nbval.cfg``):
    its fingerprint does not change while others edit the course. ``differ``: one commit apart (a solution's text
    differs), so its fingerprint is another."""
    for part in ("helpers", "solutions", "notebooks"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    shutil.copy2(contract.SANITIZE, root / "tests" / "nbval.cfg")
    if differ:
        path = root / "solutions" / "00_welcome.ipynb"
        path.write_text(path.read_text().replace("Welcome", "Welcome back", 1))
    return root


def grade_command(subs: Path, out: Path, *args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """``python -m helpers.grade`` in a process of its own, in the checkout ``cwd`` (stdout and stderr together)."""
    cmd = [sys.executable, "-m", "helpers.grade", str(subs), "--out", str(out), *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def worker_command(home: Path, jobs: int = 1, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """``make grade-worker`` as another machine would run it: its own HOME, TMPDIR and course data folder, and the
    course checkout in ``cwd`` (``helpers`` is imported from there)."""
    for sub in ("tmp", "data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), TMPDIR=str(home / "tmp"), TEMPORAL_COURSE_DATA=str(home / "data"))
    cmd = [sys.executable, "-m", "helpers.grading.worker", "--jobs", str(jobs)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen[str], predicate: Any, timeout: float) -> list[str]:
    """Lines of ``proc``'s output until one satisfies ``predicate`` (or the process ends, or time runs out)."""
    import selectors

    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.2):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if predicate(line):
            break
    sel.close()
    return lines


def kill9(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
