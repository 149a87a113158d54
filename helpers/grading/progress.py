"""The grading run in the terminal: one line per graded notebook, and under them a progress bar (learners ×
notebooks: graded / running / retrying / failed, the cells of the running ones, time left) redrawn in place.
Where the output is not a terminal (a log, CI), the bar becomes a status line now and then."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

BAR = 24
STATUS_EVERY_S = 30.0  # without a terminal


@dataclass
class Running:
    label: str  # "ada/03_activity_design"
    cells: int = 0  # cells nbval reported so far in the current run of the notebook
    of: int = 0  # cells in the graded copy
    attempt: int = 1


@dataclass
class State:
    total: int  # learners × notebooks
    done: int = 0  # graded (or decided without running: missing, unreadable)
    failed: int = 0  # of those, could not be graded (error rows made by the run itself)
    running: list[Running] = field(default_factory=list)
    retrying: int = 0  # waiting for another attempt after their worker was lost
    elapsed: float = 0.0

    @property
    def fraction(self) -> float:
        """Graded notebooks plus the finished share of the running ones."""
        partial = sum(min(1.0, r.cells / r.of) for r in self.running if r.of)
        return min(1.0, (self.done + partial) / self.total) if self.total else 1.0


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def render(state: State, width: int = 100) -> str:
    """The progress line: a bar, counts, time; then what runs now, as far as the width allows."""
    filled = round(BAR * state.fraction)
    parts = [
        f"[{'█' * filled}{'░' * (BAR - filled)}] {state.done}/{state.total} graded",
        f"{len(state.running)} running",
    ]
    if state.retrying:
        parts.append(f"{state.retrying} retrying")
    if state.failed:
        parts.append(f"{state.failed} failed")
    left = ""
    if 0 < state.fraction < 1 and state.elapsed > 5:
        left = f", ~{clock(state.elapsed * (1 - state.fraction) / state.fraction)} left"
    parts.append(f"{clock(state.elapsed)}{left}")
    line = " · ".join(parts)
    for r in sorted(state.running, key=lambda r: r.label):
        cells = f" {r.cells}/{r.of}" if r.of else ""
        retry = f" (attempt {r.attempt})" if r.attempt > 1 else ""
        more = f" | {r.label}{cells}{retry}"
        if len(line) + len(more) > width:
            break
        line += more
    return line[:width]


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn = False
        self.last_status = time.monotonic()
        self.state: State | None = None

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.drawn = False

    def line(self, text: str) -> None:
        """A permanent line (a graded notebook, a message), above the bar."""
        if self.quiet:
            return
        self._clear()
        self.stream.write(text + "\n")
        self._draw()

    def update(self, state: State) -> None:
        self.state = state
        if self.quiet:
            return
        if self.tty:
            self._clear()
            self._draw()
        elif time.monotonic() - self.last_status >= STATUS_EVERY_S:
            self.last_status = time.monotonic()
            self.stream.write(render(state, 200) + "\n")
            self.stream.flush()

    def _draw(self) -> None:
        if self.tty and self.state is not None:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write(render(self.state, width))
            self.drawn = True
        self.stream.flush()

    def close(self) -> None:
        """Leave the last bar on screen; lines after this come without one."""
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False
        self.state = None
        self.stream.flush()
