"""The gradebook for people: ``report.md`` and ``report.html`` (class overview, per-exercise statistics, then every
learner's verdicts, points, hints and notes; warnings that affect the whole run on top)."""

from __future__ import annotations

import html
from collections import Counter

from helpers.grading.gradebook import STATUSES, SYMBOLS, Gradebook, exercise_key, totals
from helpers.grading.submissions import learner_slug


def _md(text: object) -> str:
    """Text for a Markdown table cell or heading: one line, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _exercise_stats(book: Gradebook) -> list[tuple[str, str, Counter[str]]]:
    stats: dict[tuple[str, str], Counter[str]] = {}
    for r in book.rows:
        stats.setdefault((r.notebook, r.exercise), Counter())[r.status] += 1
    return [(nb, ex, c) for (nb, ex), c in sorted(stats.items(), key=lambda kv: (kv[0][0], exercise_key(kv[0][1])))]


def _overview(book: Gradebook) -> tuple[list[str], dict[str, int], dict[str, dict[str, tuple[int, int]]], int]:
    """What both reports lay out: notebook names, their max points, per-learner totals, the course max."""
    maxes = dict(book.notebooks)
    return [n for n, _ in book.notebooks], maxes, totals(book), sum(maxes.values())


def _notes_of(book: Gradebook, learner: str) -> list[tuple[str, str]]:
    """(notebook, note) pairs for one learner; notes are keyed ``learner/notebook``."""
    return [(k.split("/", 1)[1], n) for k, v in book.notes.items() if k.split("/", 1)[0] == learner for n in v]


def report_markdown(book: Gradebook) -> str:
    names, maxes, per, total_max = _overview(book)
    lines = [
        "# Gradebook",
        "",
        f"Graded {book.meta.get('graded_at', '')}: {len(per)} learner(s), notebooks {', '.join(names)}; "
        f"per-cell timeout {book.meta.get('cell_timeout', '?'):g} s. Statuses: "
        + ", ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES)
        + ".",
        "",
        *[f"> ⚠️ **Warning:** {_md(w)}\n" for w in book.meta.get("warnings", [])],
        "## Class overview",
        "",
        "| learner | " + " | ".join(f"{n} (/{maxes[n]})" for n in names) + f" | total (/{total_max}) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines.append(f"| {_md(learner)} | " + " | ".join(str(nbs.get(n, (0, 0))[0]) for n in names) + f" | {got} |")
    lines += ["", "## Exercises", "", "| notebook | exercise | " + " | ".join(STATUSES) + " |"]
    lines.append("|---|---|" + "---|" * len(STATUSES))
    for nb, ex, c in _exercise_stats(book):
        lines.append(f"| {nb} | {ex} | " + " | ".join(str(c.get(s, 0)) for s in STATUSES) + " |")
    lines += ["", "## Learners", ""]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        lines += [f"### {_md(learner)}: {got}/{total_max}", ""]
        notes = _notes_of(book, learner)
        for nb, note in notes:
            lines.append(f"- note ({nb}): {_md(note)}")
        if notes:
            lines.append("")
        lines += ["| notebook | exercise | verdict | points | hint |", "|---|---|---|---|---|"]
        for r in (r for r in book.rows if r.learner == learner):
            lines.append(f"| {_md(r.notebook)} | {_md(r.exercise)} | {SYMBOLS[r.status]} {r.status} | "
                         f"{r.points}/{r.max_points} | {_md(r.message)} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.passed{background:#e7f6e7}.failed{background:#fde8e8}
.not_done{background:#fff7e0}.timeout,.error{background:#f6e0f6}.missing{background:#eee;color:#666}
.note{color:#7a4b00}td.num{text-align:right}td.verdict{white-space:nowrap}h3{margin-top:2em}
.warn{background:#fde8e8;border:2px solid #c00;padding:.5em 1em}
"""


def report_html(book: Gradebook) -> str:
    e = html.escape
    names, maxes, per, total_max = _overview(book)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Gradebook</title>",
        f"<style>{_CSS}</style></head><body><h1>Gradebook</h1>",
        f"<p>Graded {e(str(book.meta.get('graded_at', '')))}: {len(per)} learner(s); per-cell timeout "
        f"{book.meta.get('cell_timeout', 0):g} s. " + " · ".join(f"{SYMBOLS[s]} {s}" for s in STATUSES) + "</p>",
        *[f"<p class='warn'>⚠️ <b>Warning:</b> {e(w)}</p>" for w in book.meta.get("warnings", [])],
        "<h2>Class overview</h2><table><tr><th>learner</th>"
        + "".join(f"<th>{e(n)} (/{maxes[n]})</th>" for n in names)
        + f"<th>total (/{total_max})</th></tr>",
    ]
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        row = "".join(f"<td class='num'>{nbs.get(n, (0, 0))[0]}</td>" for n in names)
        out.append(
            f"<tr><td><a href='#{e(learner_slug(learner))}'>{e(learner)}</a></td>{row}<td class='num'>{got}</td></tr>"
        )
    out.append("</table><h2>Exercises</h2><table><tr><th>notebook</th><th>exercise</th>")
    out.append("".join(f"<th>{SYMBOLS[s]} {s}</th>" for s in STATUSES) + "</tr>")
    for nb, ex, c in _exercise_stats(book):
        cells = "".join(f"<td class='num'>{c.get(s, 0)}</td>" for s in STATUSES)
        out.append(f"<tr><td>{e(nb)}</td><td>{e(ex)}</td>{cells}</tr>")
    out.append("</table><h2>Learners</h2>")
    for learner, nbs in per.items():
        got = sum(p for p, _ in nbs.values())
        out.append(f"<h3 id='{e(learner_slug(learner))}'>{e(learner)}: {got}/{total_max}</h3>")
        notes = _notes_of(book, learner)
        if notes:
            out.append("<ul>" + "".join(f"<li class='note'>{e(nb)}: {e(n)}</li>" for nb, n in notes) + "</ul>")
        out.append("<table><tr><th>notebook</th><th>exercise</th><th>verdict</th><th>points</th><th>hint</th></tr>")
        for r in (r for r in book.rows if r.learner == learner):
            out.append(
                f"<tr class='{r.status}'><td>{e(r.notebook)}</td><td>{e(r.exercise)}</td>"
                f"<td class='verdict'>{SYMBOLS[r.status]} {r.status}</td><td class='num'>{r.points}/{r.max_points}</td>"
                f"<td>{e(r.message)}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
