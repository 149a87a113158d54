"""What the outside world saw: a file every step appends to, whichever process (kernel, script, worker) ran it.

A step records ``started`` when it begins and ``done`` when it has finished its effect, so after a crash the
ledger tells what really happened: which steps ran, which ran twice, which were cut off halfway. Histories say
what Temporal *recorded*; the ledger says what the world *experienced*. Both are needed to see durability.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STARTED, DONE = "started", "done"


class Ledger:
    """An append-only text file of ``key<TAB>step<TAB>event`` lines (safe to append from several processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Ledger({self.path.name}, {len(self.entries())} entries)"

    def record(self, key: str, step: str, event: str) -> None:
        with self.path.open("a") as f:
            f.write(f"{key}\t{step}\t{event}\n")

    def entries(self, key: str | None = None) -> list[tuple[str, str, str]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = [tuple(line.split("\t")) for line in lines if line.count("\t") == 2]
        return [r for r in rows if key is None or r[0] == key]  # type: ignore[misc]

    def counts(self, key: str) -> Counter[tuple[str, str]]:
        """``{(step, event): n}`` for one key (an order id, say)."""
        return Counter((step, event) for _, step, event in self.entries(key))

    def has(self, key: str, step: str, event: str = DONE) -> bool:
        return self.counts(key)[(step, event)] > 0

    def steps(self, key: str) -> list[str]:
        """The steps of ``key`` in the order they first started."""
        seen: list[str] = []
        for _, step, _ in self.entries(key):
            if step not in seen:
                seen.append(step)
        return seen

    def table(self, runs: Mapping[str, str], steps: Sequence[str] | None = None) -> LedgerTable:
        """How often each step started / finished, one column per run (``{"column label": key}``)."""
        steps = list(steps or dict.fromkeys(s for key in runs.values() for s in self.steps(key)))
        columns = {label: self.counts(key) for label, key in runs.items()}
        return LedgerTable(steps, columns)

    def plot(self, runs: Mapping[str, str], steps: Sequence[str] | None = None, *, title: str | None = None) -> None:
        """Bar chart: how many times each step *started*, per run; hatched = started but never finished."""
        self.table(runs, steps).plot(title=title)


class LedgerTable:
    def __init__(self, steps: list[str], columns: dict[str, Counter[tuple[str, str]]]) -> None:
        self.steps = steps
        self.columns = columns

    @staticmethod
    def cell(counts: Counter[tuple[str, str]], step: str) -> str:
        started, done = counts[(step, STARTED)], counts[(step, DONE)]
        if started == 0:
            return "never ran"
        if done == 0:
            return f"ran {started}×, cut off"
        text = f"ran {started}×" + (f", finished {done}×" if done != started else "")
        return text + ({0: "", 1: "", 2: "  ⚠ twice!"}.get(done, f"  ⚠ {done} times!"))

    def rows(self) -> list[list[str]]:
        return [[step, *(self.cell(c, step) for c in self.columns.values())] for step in self.steps]

    def __repr__(self) -> str:
        cells = [["step", *self.columns], *self.rows()]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["step", *self.columns])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.rows())
        style = "text-align:left;font-family:monospace;font-size:12px"
        return f'<table style="{style}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def plot(self, *, title: str | None = None, ax: Any = None) -> None:
        import matplotlib.pyplot as plt

        show = ax is None
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        n = len(self.columns)
        width = 0.8 / max(n, 1)
        colors = ["#c44e52", "#55a868", "#4c72b0", "#dd8452"]
        for i, (label, counts) in enumerate(self.columns.items()):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(self.steps))]
            done = [counts[(s, DONE)] for s in self.steps]
            cut = [counts[(s, STARTED)] - counts[(s, DONE)] for s in self.steps]
            color = colors[i % len(colors)]
            ax.bar(xs, done, width, color=color, label=f"{label}: finished")
            ax.bar(xs, cut, width, bottom=done, color="white", edgecolor=color, hatch="//", label=f"{label}: cut off")
        ax.set_xticks(range(len(self.steps)), self.steps)
        ax.set_ylabel("times the step ran")
        top = max((c[(s, STARTED)] for c in self.columns.values() for s in self.steps), default=1)
        ax.set_yticks(range(top + 2))
        ax.set_ylim(0, top + 0.6)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        if title:
            ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if show:
            plt.tight_layout()
            plt.show()
