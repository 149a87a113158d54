"""pytest plugin the grader loads into each nbval run: one JSON line per notebook cell, written as it happens.

``python -m helpers.grade`` runs ``pytest -p helpers.nbval_results --nbval …`` on a graded copy of a learner's
notebook with ``COURSE_GRADE_RESULTS=<file>``. For every cell item it appends what the grader needs: the cell id
(the grader gave every cell of the graded copy a unique id, so nbval's "Cell N" names do not matter), whether
the cell passed nbval's comparison, the error text, whether the cell hit the timeout, and the text the cell
printed (capped). Lines are flushed one by one, so a run killed half-way still leaves the cells it finished.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import pytest

# jsonschema (via nbformat) imports rfc3987_syntax when it is installed, which builds a grammar for ~0.8 s on
# every start. Notebook validation never checks IRIs, so this run does without it (ImportError is expected).
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

MAX_TEXT = int(os.environ.get("COURSE_GRADE_MAX_TEXT", "20000"))
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _cap(text: str, limit: int = MAX_TEXT) -> str:
    text = _ANSI.sub("", text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit} more characters cut by the grader]"


def _streams(outputs: Any, name: str) -> str:
    return "".join(
        o.get("text", "") for o in outputs or () if o.get("output_type") == "stream" and o.get("name") == name
    )


def _plain(outputs: Any) -> str:
    parts = []
    for o in outputs or ():
        if o.get("output_type") in ("execute_result", "display_data"):
            parts.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _error(outputs: Any) -> str | None:
    for o in outputs or ():
        if o.get("output_type") == "error":
            return f"{o.get('ename', 'Error')}: {o.get('evalue', '')}".strip().rstrip(":")
    return None


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get("COURSE_GRADE_RESULTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    yield
    cell = getattr(item, "cell", None)
    if cell is None or call.when == "teardown":
        return
    if call.when == "setup" and call.excinfo is None:
        return  # the "call" phase reports this cell
    exc = call.excinfo.value if call.excinfo is not None else None
    skipped = call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception)
    outputs = getattr(item, "test_outputs", None)
    parent = getattr(item, "parent", None)
    _write(
        {
            "cell_id": cell.get("id"),
            "when": call.when,
            "ok": exc is None,
            "skipped": bool(skipped),
            "error": None if exc is None or skipped else _cap(str(exc), 2000),
            "timed_out": bool(getattr(parent, "timed_out", False)),
            "kernel_alive": bool(parent is not None and parent.kernel is not None and parent.kernel.is_alive()),
            "stdout": _cap(_streams(outputs, "stdout")),
            "stderr": _cap(_streams(outputs, "stderr"), 4000),
            "plain": _cap(_plain(outputs), 4000),
            "exception": _error(outputs),
            "duration": round(call.duration, 3),
        }
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _write({"finished": True, "exitstatus": int(exitstatus)})
