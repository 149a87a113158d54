"""Who ran what: each activity attempt writes down which worker process ran it, and when, in a file all processes share.

The history keeps only an activity's last attempt, so an attempt cut off by a crashed worker leaves no trace there.
To see how work spreads over several worker processes on one task queue, and what happened to the work of one that
was killed, every attempt records itself: :meth:`WorkLog.started` when it begins and :meth:`WorkLog.done` when it
has finished, with the process id and the wall clock (comparable across processes on one machine).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.history import text_table

STARTED, DONE = "started", "done"
COLORS = {"finished": "#55a868", "re-run": "#dd8452", "cut off": "#c44e52"}


@dataclass(frozen=True)
class Attempt:
    """One attempt at ``item`` by process ``pid``, from ``start`` to ``end`` (None: it never finished)."""

    item: str
    pid: int
    start: float
    end: float | None


class WorkLog:
    """An append-only file of ``time<TAB>pid<TAB>item<TAB>event`` lines (one ``write`` per line, from any process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"WorkLog({self.path.name}, {len(self._lines())} entries)"

    def _record(self, item: str, event: str) -> None:
        with self.path.open("a") as f:
            f.write(f"{time.time():.6f}\t{os.getpid()}\t{item}\t{event}\n")

    def started(self, item: str) -> None:
        self._record(item, STARTED)

    def done(self, item: str) -> None:
        self._record(item, DONE)

    def _lines(self) -> list[tuple[float, int, str, str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                rows.append((float(parts[0]), int(parts[1]), parts[2], parts[3]))
        return rows

    def attempts(self, items: Sequence[str] | None = None) -> list[Attempt]:
        """Every attempt (of ``items`` only, if given), in the order they started."""
        wanted = None if items is None else set(items)
        open_: dict[tuple[int, str], list[float]] = {}
        out: list[Attempt] = []
        for t, pid, item, event in self._lines():
            if wanted is not None and item not in wanted:
                continue
            if event == STARTED:
                open_.setdefault((pid, item), []).append(t)
            elif event == DONE and open_.get((pid, item)):
                out.append(Attempt(item, pid, open_[(pid, item)].pop(0), t))
        out += [Attempt(item, pid, t, None) for (pid, item), starts in open_.items() for t in starts]
        return sorted(out, key=lambda a: a.start)

    def running(self, pid: int, items: Sequence[str] | None = None) -> int:
        """How many attempts process ``pid`` has started and not finished (yet)."""
        return sum(1 for a in self.attempts(items) if a.pid == pid and a.end is None)

    def finished(self, items: Sequence[str] | None = None) -> set[str]:
        return {a.item for a in self.attempts(items) if a.end is not None}

    def table(self, workers: Mapping[str, int], items: Sequence[str]) -> WorkTable:
        """Per worker: attempts started, finished, cut off (``workers`` maps a label to a process id)."""
        return WorkTable(self.attempts(items), dict(workers), list(items))

    def chart(
        self,
        workers: Mapping[str, int],
        items: Sequence[str],
        *,
        marks: Mapping[str, float] | None = None,
        title: str | None = None,
    ) -> None:
        """One row per worker, one bar per attempt; ``marks``: ``{label: unix time}`` drawn as vertical lines."""
        self.table(workers, items).plot(marks=marks, title=title)


class WorkTable:
    def __init__(self, attempts: list[Attempt], workers: dict[str, int], items: list[str]) -> None:
        self.attempts = attempts
        self.workers = workers
        self.items = items

    def _kind(self, a: Attempt) -> str:
        if a.end is None:
            return "cut off"
        earlier = [b for b in self.attempts if b.item == a.item and b.start < a.start]
        return "re-run" if earlier else "finished"

    def rows(self) -> list[tuple[str, str, str, str]]:
        out = []
        for label, pid in self.workers.items():
            mine = [a for a in self.attempts if a.pid == pid]
            done = sum(1 for a in mine if a.end is not None)
            out.append((label, str(len(mine)), str(done), str(len(mine) - done)))
        return out

    def summary(self) -> str:
        finished = {a.item for a in self.attempts if a.end is not None}
        lost = [i for i in self.items if i not in finished]
        cut = sum(1 for a in self.attempts if a.end is None)
        parts = [f"{len(self.items) - len(lost)} of {len(self.items)} items finished"]
        if cut:
            parts.append(f"{cut} attempt(s) cut off by the crash")
        parts.append(f"never finished: {', '.join(lost)}" if lost else "nothing lost")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return text_table(("worker", "attempts", "finished", "cut off"), self.rows()) + "\n" + self.summary()

    def _repr_html_(self) -> str:
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in ("worker", "attempts", "finished", "cut off"))
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:left">{html.escape(v)}</td>' for v in r) + "</tr>"
            for r in self.rows()
        )
        return (
            f'<table style="font-family:monospace;font-size:12px"><thead><tr>{head}</tr></thead><tbody>{body}'
            f"</tbody></table><p>{html.escape(self.summary())}</p>"
        )

    def plot(self, *, marks: Mapping[str, float] | None = None, title: str | None = None, ax: Any = None) -> None:
        """A band per worker; inside it, a lane per slot in use, one bar per attempt from its start to its end
        (a cut-off attempt ends at the first mark after it started: when its process was killed)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        if not self.attempts:
            raise ValueError("no attempts recorded for these items yet")
        marks = dict(marks or {})
        t0 = min(a.start for a in self.attempts)
        end = max([a.end or a.start for a in self.attempts] + list(marks.values()))

        def stop(a: Attempt) -> float:
            return a.end or min((t for t in marks.values() if t >= a.start), default=end)

        lanes: dict[str, list[tuple[Attempt, int]]] = {}
        for label, pid in self.workers.items():
            free_at: list[float] = []  # per lane: when its last bar ends
            placed = []
            for a in sorted((a for a in self.attempts if a.pid == pid), key=lambda a: a.start):
                lane = next((i for i, t in enumerate(free_at) if t <= a.start), len(free_at))
                if lane == len(free_at):
                    free_at.append(0.0)
                free_at[lane] = stop(a)
                placed.append((a, lane))
            lanes[label] = placed
        show = ax is None
        if ax is None:
            _, ax = plt.subplots(figsize=(10, 0.75 * len(self.workers) + 1.6))
        labels = list(self.workers)
        for row, label in enumerate(labels):
            base = len(labels) - 1 - row
            n = max((lane for _, lane in lanes[label]), default=0) + 1
            height = 0.8 / n
            for a, lane in lanes[label]:
                kind = self._kind(a)
                style: dict[str, Any] = {"color": COLORS[kind], "edgecolor": "white", "linewidth": 0.5}
                if kind == "cut off":
                    style = {"facecolor": "white", "edgecolor": COLORS[kind], "hatch": "////", "linewidth": 0.8}
                y = base + 0.4 - (lane + 0.5) * height
                ax.barh(y, max(stop(a) - a.start, 0.01), left=a.start - t0, height=height * 0.85, **style)
        for label, t in marks.items():
            ax.axvline(t - t0, color="black", linestyle="--", linewidth=1)
            ax.text(t - t0, len(labels) - 0.55, f" {label}", fontsize=8, va="bottom")
        ax.set_yticks(range(len(labels)), list(reversed(labels)))
        ax.set_ylim(-0.6, len(labels) - 0.05)
        ax.set_xlabel("seconds since the first attempt started")
        ax.set_xlim(0, (end - t0) * 1.05)
        handles = [
            Patch(color=COLORS["finished"], label="attempt finished"),
            Patch(facecolor="white", edgecolor=COLORS["cut off"], hatch="////", label="cut off by the crash"),
            Patch(color=COLORS["re-run"], label="run again after the crash"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_title(title or "Who ran what: one bar per activity attempt")
        ax.grid(axis="x", alpha=0.3)
        if show:
            plt.tight_layout()
            plt.show()
