"""Benchmark the grader on a synthetic class (run by hand; not part of the test suite).

    .venv/bin/python tests/bench_grade.py [--learners 30] [--jobs 1 2] [--notebook NN ...]

Builds a class from solutions/ and notebooks/ (a third all correct, a third untouched, a third half done), grades
it once per --jobs value in this one run (each a grading run of its own on Temporal, this process grading with
JOBS slots, as ``make grade`` does), checks every grade is what it should be, and prints the wall-clock times, the
mean seconds per notebook, the CPU time used and the speed-up. ``make grade``'s default JOBS is twice the number of
cores. By default it grades against a private dev server (SQLite, like the course's own), so the numbers do not
depend on what else runs on localhost:7233; --existing-server uses TEMPORAL_ADDRESS / the course server instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import build, server
from helpers.grading import references, run


def make_class(root: Path, learners: int, refs: list[references.Reference]) -> dict[tuple[str, str], int]:
    """Write ``root/<learner>/<NN_topic>.ipynb``; return the expected points per (learner, notebook)."""
    expected = {}
    for n in range(learners):
        kind = ("correct", "untouched", "half")[n % 3]
        folder = root / f"learner{n + 1:02d}-{kind}"
        folder.mkdir(parents=True)
        for ref in refs:
            solution = json.loads((build.SOLUTIONS / f"{ref.name}.ipynb").read_text(encoding="utf-8"))
            learner = json.loads((build.NOTEBOOKS / f"{ref.name}.ipynb").read_text(encoding="utf-8"))
            if kind == "correct":
                nb, points = solution, ref.max_points
            elif kind == "untouched":
                nb, points = learner, 0
            else:
                nb = copy.deepcopy(learner)
                done = ref.exercises[: len(ref.exercises) // 2]
                sol_cells = {c.get("id"): c for c in solution["cells"]}
                for cell in nb["cells"]:
                    if any(cell.get("id") in ex.work_ids for ex in done):
                        cell["source"] = sol_cells[cell["id"]]["source"]
                points = sum(ex.points for ex in done)
            (folder / f"{ref.name}.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")
            expected[(folder.name, ref.name)] = points
    return expected


def _cpu(dev: server.DevServer | None) -> float:
    """CPU seconds used so far by this process, its finished children (nbval runs and their kernels) and the server."""
    import resource

    import psutil

    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    used = sum(u.ru_utime + u.ru_stime for u in usages)
    if dev is not None:
        times = psutil.Process(dev.pid).cpu_times()
        used += times.user + times.system
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--learners", type=int, default=30)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--notebook", action="append", default=[], help="only these notebooks (default: all)")
    parser.add_argument("--existing-server", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the class and gradebooks")
    args = parser.parse_args()

    refs = references.load_references()
    if args.notebook:
        refs = [r for r in refs if r.prefix in args.notebook]
    base = Path(tempfile.mkdtemp(prefix="grade-bench-"))
    dev = None
    if not args.existing_server:
        dev = server.DevServer.start(headless=True, db_path=base / "temporal.db", log_path=base / "server.log")
        os.environ["TEMPORAL_ADDRESS"] = dev.address
        os.environ["TEMPORAL_NAMESPACE"] = "default"
    try:
        subs = base / "submissions"
        expected = make_class(subs, args.learners, refs)
        names = ", ".join(r.name for r in refs)
        print(f"{args.learners} learners × {len(refs)} notebooks ({names}) = {len(expected)} notebooks to grade")
        default = run.default_jobs()
        print(f"machine: {os.cpu_count()} cores (make grade's default JOBS: {default}); load average before: "
              f"{os.getloadavg()[0]:.2f}")  # fmt: skip
        times = {}
        for jobs in args.jobs:
            out = base / f"out-jobs{jobs}"
            t0, cpu0 = time.monotonic(), _cpu(dev)
            book = run.grade(subs, out, jobs=jobs, only_notebooks=[r.prefix for r in refs], quiet=True)
            times[jobs] = time.monotonic() - t0
            cpu = _cpu(dev) - cpu0
            got: dict[tuple[str, str], int] = {}
            for row in book.rows:
                got[(row.learner, row.notebook)] = got.get((row.learner, row.notebook), 0) + row.points
            wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
            per_nb = {
                r.name: sum(s for k, (s, _) in book.meta["timings"].items() if k.endswith(r.name)) / args.learners
                for r in refs
            }
            print(
                f"JOBS={jobs}: {times[jobs]:.1f} s ({times[jobs] / 60:.1f} min); grades "
                + ("all as expected" if not wrong else f"WRONG for {len(wrong)}: {dict(list(wrong.items())[:5])}")
                + "; mean seconds per notebook: "
                + ", ".join(f"{k} {v:.1f}" for k, v in per_nb.items())
                + f"; CPU {cpu:.0f} s ({cpu / len(expected):.1f} s per notebook: grader, nbval, kernels, server)"
                + f"; load average {os.getloadavg()[0]:.2f}"
            )
        if len(times) > 1:
            first = min(times)
            for jobs, seconds in times.items():
                if jobs != first:
                    print(f"speed-up JOBS={jobs} vs JOBS={first}: {times[first] / seconds:.2f}×")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if dev is not None:
            dev.stop()
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    server.exit_now(main())
