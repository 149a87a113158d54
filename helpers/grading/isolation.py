"""Keeping notebooks apart and cleaning up after them: each nbval run's private environment, killing a run's whole
process tree (orphans too), and the grading process as a child subreaper that sweeps what notebooks detach."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from helpers.grading.nbval_plugin import HANDSHAKE_VAR

TOKEN_VAR = "COURSE_GRADE_TOKEN"  # marks every process of one nbval run (not a secret: used to find orphans)
OWNER_VAR = "COURSE_GRADE_OWNER"  # "<pid>:<start time>" of the grading process that started the run


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (with its pid, it names one process for good)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_mark() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid()) or 0}"


def sweep_dead_owners() -> list[str]:
    """Kill what nbval runs of a grading process that no longer exists left running (a grader killed with
    ``kill -9`` cannot clean up; its kernels normally follow it within a second, their own children may not).
    Runs of a grading process still alive (another grader on this machine) are left alone."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    killed = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        mark = next((v for v in env.split(b"\0") if v.startswith(OWNER_VAR.encode() + b"=")), None)
        if mark is None:
            continue
        pid, _, started = mark.split(b"=", 1)[1].decode(errors="replace").partition(":")
        if pid.isdigit() and _start_time(int(pid)) == started:
            continue  # its grader is alive
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(cmdline[:120])
    return killed


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
        # Several notebooks are graded at once on a busy machine: every bounded wait of the course gets 3× the
        # time, so that a right answer never times out (the verdicts are the same; only slow ones come later).
        COURSE_WAIT_SCALE="3",
        **{TOKEN_VAR: token, OWNER_VAR: owner_mark(), HANDSHAKE_VAR: "stdin"},
    )
    return env


def environ_has(pid: int, needles: Collection[bytes]) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(n in env for n in needles)


def processes_with_token(token: str) -> list[int]:
    """Pids whose environment carries ``token`` (Linux /proc): a kernel and anything it started, orphans too."""
    needle = f"{TOKEN_VAR}={token}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    me = os.getpid()
    pids = (int(e.name) for e in proc.iterdir() if e.name.isdigit())
    return [pid for pid in pids if pid != me and environ_has(pid, [needle])]


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
        pids |= set(processes_with_token(token))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        pids = set()
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


# The nbval runs going on in this process: registered before a sweep could see them, never after a stop.
ACTIVE: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
ACTIVE_LOCK = threading.Lock()
STOPPING = threading.Event()


def kill_all_running() -> None:
    """Stop every nbval run still going, and start no new one (Ctrl-C of the grader)."""
    STOPPING.set()
    with ACTIVE_LOCK:
        running = list(ACTIVE.values())
    for proc, token in running:
        kill_tree(proc, token)


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def prctl(option: int, arg: int = 0) -> int | None:
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
    the grader non-dumpable while it holds run keys (see ``helpers.grading.nbval_plugin``). :meth:`close` restores
    both."""

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
        self.subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
        self.was_dumpable = prctl(PR_GET_DUMPABLE)
        prctl(PR_SET_DUMPABLE, 0)
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
        with ACTIVE_LOCK:  # no job starts while we decide (its pytest would look like a leftover)
            owned: set[int] = set()
            tokens = [f"{TOKEN_VAR}={token}".encode() for _, token in ACTIVE.values()]
            for proc, _ in ACTIVE.values():
                owned.add(proc.pid)
                with contextlib.suppress(ps.Error):
                    owned |= {c.pid for c in ps.Process(proc.pid).children(recursive=True)}
            victims = []
            for p in self._descendants():
                if p.pid in owned or self._key(p) in self.keep or (tokens and environ_has(p.pid, tokens)):
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
            prctl(PR_SET_CHILD_SUBREAPER, self.was_subreaper)
        if self.was_dumpable is not None and self.was_dumpable >= 0:
            prctl(PR_SET_DUMPABLE, self.was_dumpable)
        return names
