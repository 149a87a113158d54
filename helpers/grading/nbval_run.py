"""One strict nbval run of a graded copy, in its own process tree, and the signed per-cell records it leaves.

``pytest --nbval`` runs the copy in a kernel of its own (per-cell timeout, a wall-clock deadline, the process tree
killed at the end) with a private HOME, TMPDIR, working folder and copy of ``helpers/``. The per-cell records are
written by ``helpers.grading.nbval_plugin`` in nbval's process and signed with a per-run key that reaches that
process on stdin, so a notebook can neither forge nor replay them.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.grading import isolation
from helpers.grading.course_files import read_bytes
from helpers.grading.nbval_plugin import sign

PLUGIN = "helpers.grading.nbval_plugin"


@dataclass
class RunResult:
    records: dict[str, dict[str, Any]]  # graded cell id -> its record
    order: list[str]  # graded cell ids in the order nbval reported them
    finished: bool  # pytest reached the end of the session
    killed: bool  # the wall-clock budget ran out and the process tree was killed
    returncode: int | None
    log: str
    tampered: str | None = None  # why the records cannot be trusted


def new_key() -> bytes:
    return secrets.token_bytes(32)


def stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns, st.st_size)


def read_records(path: Path, key: bytes) -> tuple[dict[str, dict[str, Any]], list[str], bool, str | None]:
    """The signed records of one run: (records by cell id, order, finished, why they were tampered with)."""
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


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def run_nbval(
    nb: Mapping[str, Any],
    workdir: Path,
    lib: Path,
    cell_timeout: float,
    deadline: float,
    base_env: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """One strict nbval run of a graded copy in ``workdir`` (cwd), bounded by ``deadline`` (monotonic).
    ``progress`` is called about every second with the number of cells reported so far."""
    run_id = uuid.uuid4().hex[:8]
    home = workdir.parent / f"home-{run_id}"
    nb_path = workdir / "graded.ipynb"
    ini = workdir.parent / "pytest.ini"
    inputs = {nb_path: json.dumps(nb, ensure_ascii=False, indent=1).encode(), ini: b"[pytest]\naddopts =\n"}
    for path, data in inputs.items():
        path.write_bytes(data)
    stats = {path: stat_key(path) for path in inputs}
    results = workdir.parent / f"results-{run_id}.jsonl"
    results.touch()
    token = uuid.uuid4().hex
    key = new_key()
    env = isolation.kernel_env(base_env, home, lib, token)
    cmd = [
        sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "nbval.plugin", "-p", "no:cacheprovider", "--noconftest",
        "-c", str(ini), "--rootdir", str(workdir), "-q", "--tb=no", "--no-header", "-W", "ignore",
        "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(lib / "nbval.cfg"),
        "--nbval-cell-timeout", f"{cell_timeout:g}", "--nbval-kernel-startup-timeout", "60", nb_path.name,
    ]  # fmt: skip
    log_path = workdir.parent / f"pytest-{run_id}.log"
    killed = False
    with open(log_path, "wb") as log:
        with isolation.ACTIVE_LOCK:  # registered before a sweep could see it, and never after an interrupt
            if isolation.STOPPING.is_set():
                raise RuntimeError("grading was stopped")
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
            isolation.ACTIVE[proc.pid] = (proc, token)
        try:
            # The key and the results path go on stdin: never in the environment or argv, which the kernel sees.
            handshake = {"key": key.hex(), "results": str(results), "parent": os.getpid()}
            with contextlib.suppress(OSError), proc.stdin:  # type: ignore[union-attr]
                proc.stdin.write(json.dumps(handshake).encode() + b"\n")  # type: ignore[union-attr]
            while True:
                try:
                    proc.wait(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        killed = True
                        break
                    if progress is not None:
                        progress(_count_lines(results))
        finally:
            isolation.kill_tree(proc, token)  # also reaps what a finished run left behind
            with isolation.ACTIVE_LOCK:
                isolation.ACTIVE.pop(proc.pid, None)
    records, order, finished, tampered = read_records(results, key)
    # What nbval and the kernel read at start must be what the grader wrote (a notebook graded at the same time
    # could have rewritten it, or planted IPython start-up code in this run's private HOME).
    changed = [p.name for p, data in inputs.items() if stat_key(p) != stats[p] or read_bytes(p) != data]
    planted = sorted(
        str(p.relative_to(home))
        for pattern in ("*/startup/*", "*/ipython*config.*", "*/ipython_kernel_config.*")
        for p in (home / ".ipython").glob(pattern)
        if p.name != "README"
    )
    if not tampered and (changed or planted):
        tampered = f"{', '.join(changed + planted)} changed or appeared during the run"
    return RunResult(records, order, finished and not killed, killed, proc.returncode, tail(log_path), tampered)


def tail(path: Path, limit: int = 8000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        text = f.read().decode("utf-8", errors="replace")
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return ""


def culprit(run: RunResult) -> str | None:
    """The cell that timed out or took the kernel down (the rest of that run is not trustworthy)."""
    for cell_id in run.order:
        rec = run.records[cell_id]
        if rec.get("skipped") or rec.get("when") != "call":
            continue  # a kernel that never started is an error of the whole notebook, not of one cell
        if rec.get("timed_out") or not rec.get("kernel_alive", True):
            return cell_id
    return None
