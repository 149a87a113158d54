"""Watching the course and the grading software while notebooks run: a change is flagged loudly, with the
notebooks that were running (or graded afterwards) named, because a notebook can write anywhere its user can."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import sysconfig
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

# Installed packages a tampered copy of which would change every later grade: watched around each notebook.
GRADING_PACKAGES = ("nbval", "_pytest", "pytest", "pluggy", "jupyter_client", "ipykernel", "nbformat", "IPython")


def package_dirs() -> tuple[Path, ...]:
    dirs = []
    for name in GRADING_PACKAGES:
        with contextlib.suppress(ImportError, ValueError, AttributeError):
            spec = importlib.util.find_spec(name)
            dirs += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return tuple(dirs)


def environment_dirs() -> tuple[Path, ...]:
    """Folders watched without recursing: site-packages (``*.pth`` files run at every Python start) and bin/."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(Path(sys.executable).parent)}
    return tuple(Path(p) for p in sorted(paths))


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
