"""``python -m helpers.grade SUBMISSIONS --out OUT`` (``make grade``): the grader's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers import server
from helpers.grading.gradebook import UsageError
from helpers.grading.notebook import CELL_TIMEOUT_S, INTERRUPTED, NOTEBOOK_TIMEOUT_S, Settings
from helpers.grading.run import GradingInterrupted, grade


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.grade",
        description="Grade SUBMISSIONS/<learner>/<NN_topic>.ipynb against solutions/ with nbval.",
    )
    parser.add_argument("submissions", type=Path, help="folder with one folder per learner")
    parser.add_argument("--out", type=Path, default=Path("grading-out"), help="gradebook folder (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks graded at once in this process (default: "
                        "2 × cores; 0: none, workers started with make grade-worker grade them)")  # fmt: skip
    parser.add_argument("--learner", action="append", default=[], help="grade only this learner (repeatable); "
                        "merges into an existing gradebook in --out")  # fmt: skip
    parser.add_argument("--notebook", action="append", default=[], help="grade only notebook NN (repeatable)")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, help="seconds per cell (%(default)g)")
    parser.add_argument(
        "--notebook-timeout", type=float, default=NOTEBOOK_TIMEOUT_S, help="seconds per notebook, re-runs included"
    )
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming an unfinished grading")
    parser.add_argument("--run-demos", action="store_true", help="also run the demo cells (graded the same)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the graded copies (for debugging the grader)")
    args = parser.parse_args(argv)
    settings = Settings(
        cell_timeout=args.cell_timeout,
        notebook_timeout=args.notebook_timeout,
        skip_demos=not args.run_demos,
        keep_temp=args.keep_temp,
    )
    try:
        grade(
            args.submissions,
            args.out,
            jobs=args.jobs,
            only_learners=args.learner,
            only_notebooks=args.notebook,
            settings=settings,
            fresh=args.fresh,
            handle_signals=True,  # Ctrl-C and `kill` stop the notebooks running here; the gradebook is still written
        )
    except UsageError as err:
        print(err.message, file=sys.stderr)
        return 2
    except server.ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except GradingInterrupted as err:
        what = f"stopped: {err.reason}" if err.reason else "interrupted"
        print(
            f"{what}: the running notebooks were stopped; the gradebook was written with {err.unfinished} "
            f"notebook(s) not graded ('{INTERRUPTED}', or their earlier grades in a regrade): "
            f"{args.out.resolve() / 'report.html'}. The same command resumes the grading run: what finished is not "
            "graded again.",
            file=sys.stderr,
        )
        return 1 if err.reason else 130
    except KeyboardInterrupt:
        print("interrupted before any notebook was graded; no gradebook written", file=sys.stderr)
        return 130
    return 0
