"""The workflow sandbox stays ON: turning it off is allowed only in a notebook cell that demonstrates it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from helpers import build

ROOT = Path(__file__).resolve().parent.parent
UNSANDBOXED = re.compile(r"sandboxed\s*=\s*False|UnsandboxedWorkflowRunner")
DEMO_TAG = "sandbox-off-demo"


def test_helpers_never_turn_the_sandbox_off():
    offenders = [p.name for p in (ROOT / "helpers").rglob("*.py") if UNSANDBOXED.search(p.read_text())]
    assert not offenders, offenders


def test_notebook_cells_turn_it_off_only_when_tagged_as_the_demo():
    for folder in (build.SOLUTIONS, build.NOTEBOOKS):
        for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            for cell in nbformat.read(path, as_version=4).cells:
                if cell.cell_type == "code" and UNSANDBOXED.search(cell.source):
                    tags = cell.metadata.get("tags", [])
                    assert DEMO_TAG in tags, f"{path.name} cell {cell.id}: tag it {DEMO_TAG!r} or keep the sandbox on"
