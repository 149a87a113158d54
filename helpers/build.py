"""Learner notebooks from solutions, and solutions' reference outputs.

``python -m helpers.build notebooks``  regenerates ``notebooks/`` from ``solutions/`` (``make notebooks``).
``python -m helpers.build execute [NN …]``  re-executes solutions in place (``make solutions``).

The contract (its facts live in ``helpers.contract``; README, "For course authors", tells authors):

* A solution's exercise part sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, preceded in the
  same cell by ``# TODO(NN.k): <what to do>``. Inside a function the region becomes
  ``raise NotImplementedError("Exercise NN.k: <what to do>")``; at top level, each name it assigns becomes
  ``name = ...`` and each function it defines keeps its signature and raises, so Run All keeps going.
* Check cells carry tags ``check`` and ``ex-NN.k``; the learner copy keeps their source byte for byte and
  locks them (``editable``/``deletable`` false). Cells tagged ``solution-only`` are left out.
* Cell ids are kept. Learner notebooks carry no outputs: a learner sees their own run, and the solutions
  hold the reference outputs.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from helpers import contract
from helpers.contract import BEGIN, END, NOTEBOOKS, ROOT, SOLUTIONS, TODO
from helpers.contract import check_exercise as exercise_of  # the name the tests and checks use


class BuildError(ValueError):
    """A solution notebook breaks the authoring contract."""


@dataclass(frozen=True)
class Region:
    exercise: str
    task: str


# --------------------------------------------------------------------------- stubs


def _top_level_stub(region: list[str], message: str, ex_id: str, where: str) -> list[str]:
    code = "\n".join(region)
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError as err:
        raise BuildError(f"{where}: solution region of {ex_id} is not valid Python: {err}") from None
    lines = code.splitlines()
    out: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if not isinstance(target, ast.Name):
                    raise BuildError(f"{where}: {ex_id}: only plain names can be assigned in a top-level region")
                out.append(f"{target.id} = ...  # your answer ({ex_id})")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            header = lines[first - 1 : node.body[0].lineno - 1]
            if isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
                header = lines[first - 1 : node.body[0].end_lineno]  # keep the docstring
            indent = re.match(r"\s*", lines[node.body[0].lineno - 1])[0]  # type: ignore[index]
            out += [*header, f"{indent}raise NotImplementedError({message!r})"]
        else:
            continue  # statements that only act (calls, awaits) simply vanish from the learner copy
    return out or [f"pass  # {message}"]


def stub_source(source: str, where: str) -> tuple[str, list[Region]]:
    """Replace every solution region in a cell's source by its stub."""
    lines = source.split("\n")
    out: list[str] = []
    regions: list[Region] = []
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if not m:
            if END.match(lines[i]):
                raise BuildError(f"{where}: '### END SOLUTION' without a BEGIN")
            out.append(lines[i])
            i += 1
            continue
        indent = m[1]
        j = next((k for k in range(i + 1, len(lines)) if END.match(lines[k])), None)
        if j is None:
            raise BuildError(f"{where}: '### BEGIN SOLUTION' without an END")
        todo = next((TODO.search(line) for line in reversed(out) if TODO.search(line)), None)
        if todo is None:
            raise BuildError(f"{where}: a solution region needs a '# TODO(NN.k): what to do' line above it")
        region = Region(todo[1], todo[2])
        message = f"Exercise {region.exercise}: {region.task}"
        if indent:
            out.append(f"{indent}raise NotImplementedError({message!r})")
        else:
            out += _top_level_stub(lines[i + 1 : j], message, region.exercise, where)
        regions.append(region)
        i = j + 1
    return "\n".join(out), regions


# --------------------------------------------------------------------------- notebooks


def normalize(nb: Any) -> Any:
    """Tidy JSON: kernelspec python3, minimal language_info, cell metadata = tags (+ locks), no timings."""
    nb.metadata = contract.notebook_metadata()
    nb.nbformat, nb.nbformat_minor = contract.NBFORMAT, contract.NBFORMAT_MINOR
    for cell in nb.cells:
        meta = {k: v for k, v in cell.metadata.items() if k in ("tags", "editable", "deletable")}
        cell.metadata = meta
    return nb


def learner_copy(solution: Any, name: str) -> Any:
    """The learner notebook for one solution notebook (a new object; the input is not changed)."""
    nb = copy.deepcopy(solution)
    todo_ids: list[str] = []
    check_ids: list[str] = []
    cells = []
    for cell in nb.cells:
        if contract.SOLUTION_ONLY in contract.tags(cell):
            continue
        if not cell.get("id"):
            raise BuildError(f"{name}: every cell needs an id (nbformat 4.5)")
        if cell.cell_type == "code":
            source, regions = stub_source(cell.source, f"{name} cell {cell.id}")
            cell.source = source
            todo_ids += [r.exercise for r in regions]
            cell.outputs = []
            cell.execution_count = None
            if (ex := exercise_of(cell)) is not None:
                check_ids.append(ex)
                cell.metadata["editable"] = False
                cell.metadata["deletable"] = False
        cells.append(cell)
    nb.cells = cells
    prefix = name[:2]
    for ex in [*todo_ids, *check_ids]:
        if not ex.startswith(prefix + "."):
            raise BuildError(f"{name}: exercise {ex} does not belong to notebook {prefix}")
    dupes = [ex for ex, n in Counter(check_ids).items() if n > 1]
    if dupes:
        raise BuildError(f"{name}: more than one check cell for {', '.join(dupes)}")
    if missing := sorted(set(todo_ids) - set(check_ids)):
        raise BuildError(f"{name}: exercise(s) {', '.join(missing)} have no check cell")
    return normalize(nb)


def dumps(nb: Any) -> str:
    """Stable JSON text (what git stores)."""
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def build_notebooks(src: Path = SOLUTIONS, dst: Path = NOTEBOOKS) -> list[Path]:
    """Write ``dst/NN_*.ipynb`` for every ``src/NN_*.ipynb``; remove learner notebooks with no solution."""
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    names = set()
    for path in contract.discover(src):
        nb = nbformat.read(path, as_version=4)
        learner = learner_copy(nb, path.name)
        nbformat.validate(learner)
        target = dst / path.name
        text = dumps(learner)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        written.append(target)
        names.add(path.name)
    for stale in contract.discover(dst):
        if stale.name not in names:
            stale.unlink()
    return written


def execute(paths: list[Path], timeout: int = 120) -> None:
    """Re-execute solution notebooks in place (cwd = their folder) and store them normalized."""
    from nbclient import NotebookClient

    from helpers import server

    server.ensure()  # outputs say "found it running", as they will under the tests
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.record_timing = False
        client.execute()
        path.write_text(dumps(normalize(nb)))
        print(f"executed {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.build")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("notebooks", help="regenerate notebooks/ from solutions/")
    ex = sub.add_parser("execute", help="re-execute solutions in place")
    ex.add_argument("which", nargs="*", help="notebook numbers or paths (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.command == "notebooks":
            for path in build_notebooks():
                print(f"wrote {path.relative_to(ROOT)}")
        else:
            chosen = contract.discover(SOLUTIONS)
            if args.which:
                chosen = [p for p in chosen if any(p.name.startswith(w) or str(p).endswith(w) for w in args.which)]
            execute(chosen)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from helpers.server import exit_now

    exit_now(main())
