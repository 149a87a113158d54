"""``make check``: the learner's "how far am I" — their own ``notebooks/`` graded by the instructor's grader (every
check re-run in a fresh kernel, the demonstrations left out), shown as a table of notebook × exercise with each
verdict and its hint.

    python -m helpers.grading.check [--notebook NN ...] [--jobs N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from helpers import contract, server
from helpers.grading.gradebook import Gradebook, Row, UsageError
from helpers.grading.notebook import Settings
from helpers.grading.run import GradingInterrupted, grade
from helpers.grading.worker import default_jobs

LEARNER = "you"
WORDS = {
    "passed": "✅ passed",
    "not_done": "⏳ not done yet",
    "failed": "❌ not right yet",
    "timeout": "⌛ too slow",
    "missing": "∅ no notebook",
    "error": "⚠️ not checked",
}


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: emoji are two wide (a variation selector makes ⚠ one)."""
    wide = sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if c == "\ufe0f" else 1 for c in text)
    return wide + text.count("\ufe0f")


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def table(book: Gradebook, width: int = 120) -> str:
    """Notebook × exercise: the verdict, and the check's hint for every exercise not passed yet."""
    rows = [r for r in book.rows if r.learner == LEARNER]
    nb_w = max([len("notebook"), *(len(r.notebook) for r in rows)])
    ex_w = len("exercise")
    verdict_w = max(_width(w) for w in WORDS.values())
    lead = nb_w + 2 + ex_w + 2 + verdict_w + 2
    hint_w = max(30, width - lead)
    header = f"{'notebook':{nb_w}}  {'exercise':{ex_w}}  {_pad('verdict', verdict_w)}  hint"
    lines = [header, "-" * min(width, lead + 40)]
    last = None
    for r in rows:
        name = r.notebook if r.notebook != last else ""
        last = r.notebook
        hint = "" if r.status == "passed" else r.message
        wrapped = textwrap.wrap(hint, hint_w) or [""]
        verdict = _pad(WORDS.get(r.status, r.status), verdict_w)
        lines.append(f"{name:{nb_w}}  {r.exercise:{ex_w}}  {verdict}  {wrapped[0]}".rstrip())
        lines += [" " * lead + more for more in wrapped[1:]]
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    mine = [r for r in rows if r.learner == LEARNER]
    passed = sum(1 for r in mine if r.status == "passed")
    todo = next((r for r in mine if r.status != "passed"), None)
    line = f"{passed} of {len(mine)} exercises passed."
    if todo is not None:
        line += f" Next: {todo.exercise} ({todo.notebook}): {todo.message}"
    else:
        line += " All done: well done!"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.grading.check", description=__doc__.split("\n")[0])
    parser.add_argument("--notebook", action="append", default=[], help="only notebook NN (repeatable)")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks checked at once (default: 2 × cores)")
    parser.add_argument("--folder", type=Path, default=contract.NOTEBOOKS, help="your notebooks (default: notebooks/)")
    args = parser.parse_args(argv)
    out = server.data_dir() / "check"  # the gradebook of your last check, outside the course folder
    shutil.rmtree(out, ignore_errors=True)
    try:
        book = grade(
            args.folder,
            out,
            jobs=args.jobs if args.jobs is not None else default_jobs(),
            only_notebooks=args.notebook,
            # Your own notebooks, on your machine: no watch on the course folder (JupyterLab saves into it).
            settings=Settings(watch=(), watch_flat=(), watch_environment=False),
            learners=[(LEARNER, args.folder.resolve())],
            handle_signals=True,
        )
    except UsageError as err:
        print(err.message, file=sys.stderr)
        return 2
    except server.ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except GradingInterrupted:
        print("interrupted", file=sys.stderr)
        return 130
    width = shutil.get_terminal_size((120, 20)).columns
    print()
    print(table(book, width))
    print()
    print(summary(book.rows))
    print(f"The full report, with what each cell printed: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    server.exit_now(main())
