"""The kernel extension (loaded at kernel start by .venv/etc/ipython): what a learner sees after a kernel restart,
before running the setup cell, and the short error display."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from helpers import kernel


def _run(*sources: str) -> list[str]:
    """Run cells in a fresh kernel of this venv (errors allowed); each cell's error text, or its stdout."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True).execute()
    out = []
    for cell in nb.cells:
        texts = []
        for o in cell.outputs:
            if o.output_type == "error":
                texts.append("\n".join(o.traceback))
            elif o.output_type == "stream":
                texts.append(o.text)
        out.append("\n".join(texts))
    return out


def test_before_setup_the_magic_and_name_errors_say_run_the_cells_above():
    """Issue 7.5: 'Cell magic `%%module` not found' and a bare NameError after a kernel restart."""
    magic, name = _run("%%module orders\nx = 1", "await nb01.check_timeouts(TIMEOUTS)")
    assert "not found" not in magic
    assert "the course is not set up in this kernel yet" in magic and "setup cell" in magic
    assert "NameError: name 'nb01' is not defined (line 1 of this cell)" in name
    assert kernel.SETUP_FIRST in name
    assert "Traceback" not in name and "Traceback" not in magic


def test_after_setup_module_lines_match_the_cell():
    """Issue 7.12: %%module errors pointed one line above the cell's line."""
    setup = "from helpers import runtime\ncourse = await runtime.start('t', quiet=True)"
    broken = "%%module lines_mod\nx = 1\ny = undefined_name\n"
    _, err = _run(setup, broken)
    assert 'lines_mod.py", line 3' in err or "line 3" in err, err
