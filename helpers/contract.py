"""The notebook contract: what the generator (``helpers.build``), the checks, the grader (``helpers.grading``) and
the tests agree on about a course notebook. One home for each fact; README "For course authors" tells authors.

* ``solutions/NN_topic.ipynb`` is the source, ``notebooks/NN_topic.ipynb`` the learner copy generated from it.
* Exercise ids are ``NN.k``. The learner's part of an exercise sits between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``, after a ``# TODO(NN.k): what to do`` line. The exercise cell carries the tag ``ex-NN.k``;
  the check cell after it carries ``check`` and ``ex-NN.k``.
* ``demo`` marks a solution cell that only demonstrates (nothing a check needs depends on it): the grader skips it.
  ``benchmark`` marks a cell that measures on purpose (≤ 30 s). ``solution-only`` cells are left out of the learner
  copy. nbval's own tags (``nbval-skip``, ``nbval-ignore-output``, ``raises-exception``) mean what nbval says.
* Notebooks are stored tidy: kernelspec ``python3``, nbformat 4.5, stable cell ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = ROOT / "tests" / "nbval.cfg"  # what strict nbval masks (ids, ports, times) when comparing outputs

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")  # a notebook's stem: "03_activity_design"

# Cell tags.
CHECK = "check"
DEMO = "demo"
BENCHMARK = "benchmark"
SOLUTION_ONLY = "solution-only"
NBVAL_SKIP = "nbval-skip"
EX_TAG = re.compile(r"^ex-(\d\d\.\d+)$")

# Authoring markers in a solution's exercise cell.
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
TODO = re.compile(r"#\s*TODO\((\d\d\.\d+)\):\s*(.+?)\s*$")

# A `benchmark` cell measures for its full time when a learner runs it. The test suite, which runs every notebook
# several times and only checks that such a cell works (its numbers are never compared), sets this variable to a
# fraction (e.g. 0.25) so that measuring windows shrink with it; the twice-run budget test keeps one full pass.
BENCHMARK_SCALE_VAR = "COURSE_BENCHMARK_SCALE"
BENCHMARK_CELL_BUDGET_S = 30.0
CELL_BUDGET_S = 10.0

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}
NBFORMAT, NBFORMAT_MINOR = 4, 5


def benchmark_scale() -> float:
    """How much of its measuring time a ``benchmark`` cell takes (1 unless the tests say less)."""
    import os

    try:
        return min(1.0, max(0.05, float(os.environ.get(BENCHMARK_SCALE_VAR, "1"))))
    except ValueError:
        return 1.0


def budget_stretch() -> float:
    """How much a time budget stretches on a machine shared by several test workers: workers per core (at least 1).

    A budget (``CELL_BUDGET_S``, a check's 10 s) is what one notebook may take on the learner's machine. The test
    suite runs several notebooks at once (pytest-xdist sets ``PYTEST_XDIST_WORKER_COUNT``): each then gets a share
    of the cores, and its budget grows by the same factor. Outside the suite: 1."""
    import os

    try:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        workers = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1.0, workers / max(1, cores))


def discover(folder: Path) -> list[Path]:
    """The course notebooks in ``folder`` (``NN_topic.ipynb``), in course order."""
    return sorted(folder.glob(NOTEBOOK_GLOB))


def notebook_metadata() -> dict[str, Any]:
    """The metadata every stored notebook (and every graded copy) carries."""
    return {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}


def source(cell: Mapping[str, Any]) -> str:
    """A cell's source as one string (notebook JSON may store it as a list of lines; anything else reads as "")."""
    src = cell.get("source", "")
    if isinstance(src, list):
        return "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def tags(cell: Mapping[str, Any]) -> list[str]:
    """A cell's tags (only the strings; a malformed ``metadata`` reads as no tags)."""
    meta = cell.get("metadata")
    found = meta.get("tags") if isinstance(meta, Mapping) else None
    return [t for t in found if isinstance(t, str)] if isinstance(found, list) else []


def exercise_tag(cell: Mapping[str, Any]) -> str | None:
    """``NN.k`` of a cell tagged ``ex-NN.k`` (an exercise cell or its check), else None."""
    return next((m[1] for t in tags(cell) if (m := EX_TAG.match(t))), None)


def check_exercise(cell: Mapping[str, Any]) -> str | None:
    """``NN.k`` of a check cell (a code cell tagged ``check`` and ``ex-NN.k``), else None."""
    if cell.get("cell_type") != "code" or CHECK not in tags(cell):
        return None
    return exercise_tag(cell)


def is_demo(cell: Mapping[str, Any]) -> bool:
    """A solution cell that only demonstrates: the grader may skip it."""
    return cell.get("cell_type") == "code" and DEMO in tags(cell) and check_exercise(cell) is None
