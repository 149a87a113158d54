"""pytest plugin the grader loads into each nbval run: one signed JSON line per notebook cell, written as it happens.

The grader (``helpers.grading.nbval_run``) runs ``pytest -p helpers.grading.nbval_plugin --nbval …`` on a graded
copy of a learner's notebook. For every cell item it appends what the grader needs: the cell id (the grader gave
every cell of the graded copy a unique id, so nbval's "Cell N" names do not matter), whether the cell passed nbval's
comparison, the error text, whether the cell hit the timeout, and the text the cell printed (capped). Lines are
flushed one by one, so a run killed half-way still leaves the cells it finished.

The learner's kernel is a child of this pytest process and could write to the same file, so the grader hands this
process a per-run secret key and the file's path on **stdin** (one JSON line, read at import; never in the
environment or the command line, which the kernel can read). Each line is ``<HMAC-SHA256 hex> <JSON>`` with a
sequence number inside the JSON; the grader rejects the run when a line is unsigned, badly signed, out of sequence
or repeats a cell. Afterwards fd 0 points at /dev/null and, on Linux, the process is made non-dumpable, so a kernel
of the same (non-root) user cannot read the key from ``/proc/<pid>/mem`` either.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
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
HANDSHAKE_VAR = "COURSE_GRADE_HANDSHAKE"  # "stdin": the grader writes {"key": hex, "results": path} there
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _read_handshake() -> tuple[bytes | None, str | None]:
    """The key and results path from stdin (only when the grader says it wrote them there)."""
    if os.environ.pop(HANDSHAKE_VAR, None) != "stdin":  # popped: the kernel started later does not see it
        return None, None
    data = b""
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = os.read(0, 4096 - len(data))
            if not chunk:
                break
            data += chunk
    with contextlib.suppress(OSError):  # nothing left to find at /proc/<pid>/fd/0
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    try:
        msg = json.loads(data)
        key, results = bytes.fromhex(msg["key"]), str(msg["results"])
    except (ValueError, KeyError, TypeError):
        return None, None
    _follow_parent(msg.get("parent"))
    return key, results


def _follow_parent(parent: object) -> None:
    """Die with the grading process: a grader killed with ``kill -9`` leaves no nbval run behind (the kernel, our
    child, notices its parent is gone and exits too)."""
    if not isinstance(parent, int) or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)


_KEY, _RESULTS = _read_handshake()
_SEQ = 0


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
    global _SEQ
    if _KEY is None or not _RESULTS:
        return
    payload = json.dumps({**record, "seq": _SEQ}, ensure_ascii=False, sort_keys=True).encode()
    _SEQ += 1
    with open(_RESULTS, "ab") as f:
        f.write(sign(_KEY, payload).encode() + b" " + payload + b"\n")
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
