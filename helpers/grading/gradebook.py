"""The gradebook: one row per learner × notebook × exercise, merged on a regrade, written atomically as
``grades.csv``, ``summary.csv``, ``report.md``, ``report.html``, ``gradebook.json`` and ``logs/``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helpers.grading.submissions import learner_slug

STATUSES = ("passed", "failed", "not_done", "timeout", "missing", "error")
FIELDS = ("learner", "notebook", "exercise", "points", "max_points", "status", "message")
SYMBOLS = {"passed": "✅", "failed": "❌", "not_done": "⏳", "timeout": "⌛", "missing": "∅", "error": "⚠️"}


@dataclass
class Row:
    learner: str
    notebook: str
    exercise: str
    points: int
    max_points: int
    status: str
    message: str


@dataclass
class Gradebook:
    rows: list[Row]
    notes: dict[str, list[str]]  # "learner/notebook" -> notes
    notebooks: list[tuple[str, int]]  # (name, max points)
    meta: dict[str, Any]


class UsageError(SystemExit):
    """A problem with the command line found before grading starts: exit status 2 and a one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def prepare_out(out: Path) -> None:
    """Create ``out`` and prove it is writable, before any notebook runs (not after all the work)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"error: --out {out} is a file, not a folder; choose a folder for the gradebook")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"error: cannot write the gradebook into {out}: {err.strerror or err}") from None


def previous_gradebook(out: Path) -> Gradebook | None:
    """The gradebook a regrade of some learners/notebooks merges into; refuses when it exists but cannot be read
    (else everyone else's grades would silently disappear)."""
    book_file = out / "gradebook.json"
    others = [n for n in ("grades.csv", "summary.csv", "report.html", "report.md") if (out / n).exists()]
    if not book_file.exists() and not others:
        return None  # a first grading into a new folder
    old = load_gradebook(out)
    if old is None:
        what = "cannot be read" if book_file.exists() else f"is missing (but {', '.join(others)} is there)"
        raise UsageError(
            f"error: {book_file} {what}, so a regrade with --learner/--notebook cannot be merged into it and "
            "everyone else's grades would be lost. Restore it, or regrade everyone (without --learner/--notebook) "
            "or into a new --out folder."
        )
    return old


def load_gradebook(out: Path) -> Gradebook | None:
    try:
        data = json.loads((out / "gradebook.json").read_text(encoding="utf-8"))
        return Gradebook(
            rows=[Row(**r) for r in data["rows"]],
            notes={k: list(v) for k, v in data["notes"].items()},
            notebooks=[(n, int(m)) for n, m in data["notebooks"]],
            meta=dict(data["meta"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def exercise_key(ex: str) -> tuple[int, ...]:
    """``03.10`` sorts after ``03.9``."""
    return tuple(int(p) for p in re.findall(r"\d+", ex))


def merge(old: Gradebook | None, new: Gradebook) -> Gradebook:
    """``new`` replaces the (learner, notebook) pairs it graded; everything else of ``old`` stays."""
    if old is None:
        return new
    redone = {(r.learner, r.notebook) for r in new.rows}
    rows = [r for r in old.rows if (r.learner, r.notebook) not in redone] + new.rows
    names = dict(old.notebooks) | dict(new.notebooks)
    learner_order = list(dict.fromkeys([r.learner for r in old.rows] + [r.learner for r in new.rows]))
    nb_order = sorted(names)
    rows.sort(key=lambda r: (learner_order.index(r.learner), nb_order.index(r.notebook), exercise_key(r.exercise)))
    notes = {k: v for k, v in old.notes.items() if tuple(k.split("/", 1)) not in redone} | new.notes
    meta = dict(old.meta) | {k: v for k, v in new.meta.items() if k != "timings"}
    meta["timings"] = dict(old.meta.get("timings", {})) | new.meta.get("timings", {})
    meta["learners"] = len(learner_order)
    return Gradebook(rows, notes, sorted(names.items()), meta)


def totals(book: Gradebook) -> dict[str, dict[str, tuple[int, int]]]:
    """learner -> notebook -> (points, max points)."""
    per: dict[str, dict[str, tuple[int, int]]] = {}
    for r in book.rows:
        got, most = per.setdefault(r.learner, {}).get(r.notebook, (0, 0))
        per[r.learner][r.notebook] = (got + r.points, most + r.max_points)
    return per


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=…``, ``+…``, ``-…``, ``@…``) gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def write_gradebook(out: Path, book: Gradebook, logs: Mapping[tuple[str, str], str] | None = None) -> None:
    """grades.csv, summary.csv, report.md, report.html, gradebook.json (each atomically) and logs/."""
    from helpers.grading.reports import report_html, report_markdown

    out.mkdir(parents=True, exist_ok=True)
    for (learner, notebook), text in (logs or {}).items():
        folder = out / "logs" / learner_slug(learner)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{notebook}.txt", text)
    names = [n for n, _ in book.notebooks]
    per = totals(book)
    summary = []
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        most = sum(m for _, m in book.notebooks)
        cells = [nbs.get(n, (0, 0))[0] for n in names]
        summary.append([learner, *cells, got, most, f"{100 * got / most:.0f}" if most else ""])
    data = {
        "rows": [asdict(r) for r in book.rows],
        "notes": book.notes,
        "notebooks": book.notebooks,
        "meta": book.meta,
    }
    atomic_write(out / "gradebook.json", json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    atomic_write(out / "summary.csv", _csv(summary, ["learner", *names, "total", "max_total", "percent"]))
    atomic_write(out / "report.md", report_markdown(book))
    atomic_write(out / "report.html", report_html(book))
    atomic_write(out / "grades.csv", _csv(([getattr(r, f) for f in FIELDS] for r in book.rows), FIELDS))
