"""What the course adds to a Jupyter kernel: the ``%%module`` cell magic and short error messages.

``%%module NAME`` writes a cell to ``NAME.py`` in the kernel's scratch directory and imports it: workflow code must
live in a real file for the Temporal sandbox (which stays ON) to load it, and re-running the cell updates it.
Line numbers in errors are the cell's own (the ``%%module`` line is line 1).

The course's errors (and Temporal's) print as a few lines with a hint instead of a 60-line traceback; so does a
``NameError``, the usual sign of a cell above that was skipped (after a kernel restart, say).

Loaded as an IPython extension at kernel start (``make`` writes ``.venv/etc/ipython/ipython_kernel_config.py``),
the magic exists before the setup cell runs and says what to do instead of "Cell magic not found".
:func:`helpers.runtime.start` registers it too, so a kernel without that config works the same after setup.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import importlib.util
import linecache
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from helpers.errors import CourseError, short_failure

SETUP_FIRST = (
    "Run the notebook's cells from the top first (Run → Run All Above, or Restart Kernel and Run All): the setup "
    "cell (course = await runtime.start(...)) and the cells this one uses."
)


def write_module(scratch: Path, name: str, source: str, *, first_line: int = 1) -> Any:
    """Write ``source`` as ``<scratch>/<name>.py`` and (re)import it fresh.

    ``first_line``: the line number ``source``'s first line has where the learner sees it (2 in a ``%%module``
    cell), so that errors and tracebacks point at the cell's own lines.
    """
    if not name.isidentifier():
        raise CourseError(f"%%module needs a Python module name, e.g. `%%module orders` (got {name!r}).")
    if _taken_elsewhere(name, scratch):
        raise CourseError(f"%%module {name}: `{name}` is already a Python module; pick another name.")
    path = scratch / f"{name}.py"
    path.write_text("\n" * (first_line - 1) + source)
    # A rewrite within the same second can keep the size and mtime: drop bytecode so the new code is used.
    shutil.rmtree(scratch / "__pycache__", ignore_errors=True)
    importlib.invalidate_caches()
    linecache.checkcache(str(path))  # tracebacks and warnings quote the new source, not the old
    sys.modules.pop(name, None)
    try:
        return importlib.import_module(name)
    except SyntaxError as err:
        raise CourseError(f"SyntaxError in %%module {name}, line {err.lineno}: {err.msg}") from None
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        line = next((f.lineno for f in reversed(frames) if f.filename == str(path)), None)
        where = f" (line {line})" if line else ""
        raise CourseError(f"%%module {name} failed to import: {short_failure(err)}{where}") from None


def _in_scratch(module: Any, scratch: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).parent == scratch


def _taken_elsewhere(name: str, scratch: Path) -> bool:
    """True if ``name`` is a module outside the scratch dir: shadowing ``time`` or ``json`` would break the kernel."""
    if (module := sys.modules.get(name)) is not None:
        return not _in_scratch(module, scratch)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and (spec.origin is None or Path(spec.origin).parent != scratch)


# --------------------------------------------------------------------------- IPython


def in_ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class BrokenModule:
    """Stands in for a ``%%module`` whose latest version did not import: using it says so, instead of silently
    running the version before (a check would judge the old code)."""

    def __init__(self, name: str, problem: str) -> None:
        self._name = name
        self._problem = problem

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise CourseError(
            f"%%module {self._name} did not import the last time its cell ran ({self._problem}); "
            "fix that cell and run it again."
        )

    def __repr__(self) -> str:
        return f"<%%module {self._name}: did not import: {self._problem}>"


def _scratch_module(name: str) -> bool:
    """Is ``name`` a module written by ``%%module`` in this kernel?"""
    runtime = sys.modules.get("helpers.runtime")
    current = getattr(runtime, "_current", None)
    module = sys.modules.get(name)
    return current is not None and module is not None and _in_scratch(module, current.scratch)


def register(shell: Any, scratch: Path | None) -> None:
    """``%%module`` (writing into ``scratch``; without one, it asks for the setup cell) and short errors.

    Without ``scratch`` (kernel start, before setup) nothing heavy is imported: the kernel starts as fast as ever.
    """

    def module(line: str, cell: str) -> None:
        name = line.strip()
        if scratch is None:
            raise CourseError(f"%%module {name}: the course is not set up in this kernel yet. {SETUP_FIRST}")
        try:
            loaded = write_module(scratch, name, cell, first_line=2)
        except CourseError as err:
            if name.isidentifier():
                shell.user_ns[name] = BrokenModule(name, str(err).split(": ", 1)[-1])
            raise
        shell.user_ns[name] = loaded

    shell.register_magic_function(module, magic_kind="cell", magic_name="module")
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _warn_workflow_outside_module)
    shell.events.register("post_run_cell", _warn_workflow_outside_module)
    quick = (CourseError, NameError, AttributeError, asyncio.CancelledError, KeyboardInterrupt)
    if scratch is None:
        shell.set_custom_exc(quick, _render_short)
        return
    from temporalio import workflow
    from temporalio.exceptions import TemporalError

    shell.set_custom_exc((*quick, TemporalError, workflow.NondeterminismError), _render_short)


def _warn_workflow_outside_module(result: Any) -> None:
    """A cell that defines a workflow without ``%%module`` (its first line deleted, say): the sandbox cannot load
    it from the notebook, and cells below would go on using the module's older version."""
    source = getattr(getattr(result, "info", None), "raw_cell", "") or ""
    if source.lstrip().startswith("%%") or "workflow.defn" not in source:
        return
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any("workflow.defn" in ast.unparse(d) for d in node.decorator_list):
            print(
                f"Note: {node.name} is a workflow defined in the notebook itself. Temporal's sandbox loads workflows "
                "from a module file: make `%%module <name>` the first line of this cell (as it was), and run it again."
            )
            return


_MISSING_ATTR = re.compile(r"^module '(\w+)' has no attribute '(\w+)'")


def _render_short(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
    """IPython hook: course and workflow errors print as a few lines, not a 60-line traceback."""
    from helpers.errors import is_unavailable

    if isinstance(value, AttributeError):
        m = _MISSING_ATTR.match(str(value))
        if m is None or not _scratch_module(m[1]):  # not about a %%module: the normal traceback
            stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
            shell._showtraceback(etype, value, stb)
            return stb
        text = (
            f"AttributeError: {value}{_cell_line(tb)}.\nHint: the cells below a %%module cell use the names it "
            f"defined: keep {m[2]} as it was named in %%module {m[1]}, and run that cell again."
        )
    elif isinstance(value, asyncio.CancelledError | KeyboardInterrupt):
        text = "Interrupted: the cell was stopped before it finished. Run it again when you are ready."
    elif isinstance(value, NameError):
        text = f"NameError: {value}{_cell_line(tb)}.\nHint: {SETUP_FIRST}"
    elif not isinstance(value, CourseError) and is_unavailable(value):
        text = _unavailable_text()
    else:
        from temporalio.client import WorkflowFailureError

        text = short_failure(value)
        if isinstance(value, WorkflowFailureError):
            text += "\nHint: the workflow failed (it did not hang). Read the innermost cause above."
    stb = [f"\x1b[0;31m{text}\x1b[0m"]
    shell._showtraceback(etype, value, stb)
    return stb


def _unavailable_text() -> str:
    """A raw connection error from some client: which server it was is not in the error, so say both cases."""
    runtime = sys.modules.get("helpers.runtime")
    current = getattr(runtime, "_current", None)
    course = f" (the course's is at {current.target.address})" if current is not None else ""
    return (
        "A Temporal server is not answering (connection refused). This is not a problem with your code.\n"
        f"Hint: if it is the course's server{course}, re-run the setup cell at the top of the notebook; if it is a "
        "server this notebook started itself (a throwaway demo server), re-run the cell that starts it."
    )


def _cell_line(tb: Any) -> str:
    """`` (line N of this cell)`` for the innermost frame that is a notebook cell."""
    line = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("<ipython-input") or "/ipykernel_" in filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line} of this cell)" if line else ""


def load_ipython_extension(shell: Any) -> None:
    """At kernel start: ``%%module`` and short errors exist before the setup cell has run."""
    runtime = sys.modules.get("helpers.runtime")
    current = getattr(runtime, "_current", None)
    register(shell, current.scratch if current is not None else None)


__all__ = ["SETUP_FIRST", "in_ipython", "load_ipython_extension", "register", "write_module"]
