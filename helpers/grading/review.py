"""Learner code that could fool the checks: a heuristic that reads a cell (it never runs it) for a human review note.

The grader restores every check cell, but a learner's own cells run in the same kernel as the checks, so a
determined learner could monkeypatch a check function or print a verdict. :func:`review_flags` names what in a
learner-written cell deserves the instructor's look; it never changes points.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from helpers import contract

# In learner-written cells that Python cannot parse, these regexes deserve a human look.
SUSPICIOUS = {
    "helpers.checks": re.compile(r"helpers\s*\.\s*checks|from\s+helpers\s+import\s+checks"),
    "assigns to a check module": re.compile(r"\bnb\d\d\s*\.\s*\w+\s*=(?!=)"),
    "verdict symbols": re.compile(r"[✅⏳❌]"),
    "importlib.reload": re.compile(r"importlib\s*\.\s*reload|\breload\("),
    "sys.modules": re.compile(r"sys\s*\.\s*modules"),
    "__file__": re.compile(r"__file__"),
    "builtins": re.compile(r"\bbuiltins\b"),
}
VERDICT_CHARS = "✅⏳❌"
VERDICT_CODES = frozenset({0x2705, 0x23F3, 0x274C})
VERDICT_TEXT = re.compile(r"2705|23f3|274c|heavy check mark|hourglass|cross mark", re.IGNORECASE)
PYTHON_CELL_MAGICS = frozenset({"module", "time", "timeit", "capture", "prun"})  # their body is Python
RISKY_LINE_MAGICS = frozenset({"run", "load", "load_ext", "reload_ext", "autoreload", "aimport", "macro", "reset"})
RISKY_NAMES = frozenset({"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint",
                         "__builtins__", "builtins", "get_ipython"})  # fmt: skip
NAMESPACE_CALLS = frozenset({"globals", "locals", "vars"})  # reading them (.get, [k], `in`) is fine; writing is not
DICT_READS = frozenset({"get", "keys", "items", "values", "copy", "__contains__"})
RISKY_MODULES = frozenset({"builtins", "ctypes", "gc", "importlib", "imp", "runpy", "unicodedata"})
RISKY_ATTRS = frozenset({"__file__", "__globals__", "__code__", "__closure__", "__builtins__", "__subclasses__",
                         "__defaults__", "__kwdefaults__", "f_globals", "f_locals", "f_builtins", "f_back",
                         "gi_frame", "cr_frame", "tb_frame", "reload", "redirect_stdout", "redirect_stderr",
                         "dup2"})  # fmt: skip
IPYTHON_ATTRS = frozenset({"ast_transformers", "input_transformers_cleanup", "input_transformers_post",
                           "input_transformer_manager", "user_ns", "user_global_ns", "register_magic_function",
                           "register_magics", "magics_manager", "set_custom_exc", "display_pub", "run_cell",
                           "run_cell_async", "run_line_magic", "run_cell_magic", "showtraceback"})  # fmt: skip
EVENT_HOOKS = frozenset({"register", "unregister", "callbacks", "trigger"})  # get_ipython().events.register(…)
SYS_ATTRS = frozenset({"modules", "meta_path", "path_hooks", "path_importer_cache", "settrace", "setprofile",
                       "addaudithook", "_getframe", "displayhook", "excepthook"})  # fmt: skip
ALWAYS_ROOTS = frozenset({"sys", "builtins", "__builtins__", "checks", "helpers"})
_MAGIC_ASSIGN = re.compile(r"^(\s*[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*)[%!](%?)(\w*)")
_AST_FLAGS = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def python_of_cell(source: str, protected: Collection[str] = (), flag: Any = lambda _: None) -> str | None:
    """The cell as Python: a cell magic's first line dropped (``%%module`` and the magics whose body is Python),
    line magics and shell escapes replaced by ``pass``/``None``. None when the body is not Python."""
    lines = source.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic, _, arg = lines[first].strip()[2:].partition(" ")
        if magic == "module" and arg.strip() in protected:
            flag(f"%%module {arg.strip()}")
        elif magic not in PYTHON_CELL_MAGICS:
            flag(f"cell magic %%{magic}")
            return None
        lines[first] = ""
    for i, line in enumerate(lines):
        body = line.lstrip()
        if body.startswith(("%", "!")):
            if (m := re.match(r"%+(\w+)", body)) and m[1] in RISKY_LINE_MAGICS:
                flag(f"%{m[1]}")
            lines[i] = line[: len(line) - len(body)] + "pass"
        elif m := _MAGIC_ASSIGN.match(line):
            if m[3] in RISKY_LINE_MAGICS:
                flag(f"%{m[3]}")
            lines[i] = m[1] + "None"
    return "\n".join(lines)


def parse_cell(source: str, protected: Collection[str] = (), flag: Any = lambda _: None) -> ast.Module | None:
    """The cell's syntax tree (see :func:`python_of_cell`), or None when it is not Python."""
    code = python_of_cell(source, protected, flag)
    if code is None:
        return None
    try:
        return compile(code, "<cell>", "exec", _AST_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None


def dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):  # get_ipython().events: the call's name
        node = node.func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def imported_names(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    """Names a cell binds by ``import`` (in the whole tree, or only at its top level)."""
    nodes = getattr(tree, "body", []) if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names if a.name != "*"}
    return names


def check_names(cells: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The names check cells call through: ``nb00`` in ``await nb00.check_greet_team(...)``."""
    names: set[str] = set()
    for cell in cells:
        tree = parse_cell(contract.source(cell))
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Call) and (chain := dotted(node.func)) and len(chain) > 1:
                names.add(chain[0])
    return frozenset(names)


def _locals_by_node(tree: ast.AST) -> dict[int, frozenset[str]]:
    """For every node inside a function: the names local to the innermost function around it (its parameters and
    the names it assigns, less those it declares global). ``meter.readings += 1`` on a parameter ``meter`` is not
    an assignment to a module ``meter`` of the same name."""
    found: dict[int, frozenset[str]] = {}
    for fn in (n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS)):  # outer functions first: inner ones win
        args = fn.args
        names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
        declared: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                declared |= set(node.names)
        local = frozenset(names - declared)
        for node in ast.walk(fn):
            found[id(node)] = local
    return found


def review_flags(source: str, protected: Collection[str], roots: Collection[str] = ()) -> list[str]:
    """What in a learner-written cell deserves the instructor's look: code that could fool the checks.

    ``protected``: names the check cells call through (``nb00``; ``checks`` and ``helpers`` are added). ``roots``:
    names whose attributes a learner has no reason to assign (modules the notebook imports, names the solution binds
    at top level). A heuristic for a human review note, never a grade: it reads the code, it does not run it."""
    protected = {*protected, "checks", "helpers"}
    roots = {*roots, *protected, *ALWAYS_ROOTS}
    found: dict[str, None] = {}

    def flag(label: str) -> None:
        found.setdefault(label)

    code = python_of_cell(source, protected, flag)
    if code is None:
        return list(found)
    try:
        tree = compile(code, "<cell>", "exec", _AST_FLAGS, dont_inherit=True)
    except (SyntaxError, ValueError):  # IPython may still run it (e.g. `obj?`): fall back to plain text
        for label, rx in SUSPICIOUS.items():
            if rx.search(source) or (label == "verdict symbols" and VERDICT_TEXT.search(source)):
                flag(label)
        return list(found)
    rebindable = protected | {"print"}
    local = _locals_by_node(tree)
    reads: set[int] = set()  # globals()/vars()/locals() calls that only read
    for node in ast.walk(tree):
        inner = None
        if (isinstance(node, ast.Attribute) and node.attr in DICT_READS) or (
            isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
        ):
            inner = node.value
        elif isinstance(node, ast.Compare) and all(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            inner = node.comparators[-1]
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id in NAMESPACE_CALLS:
            reads.add(id(inner.func))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in rebindable and isinstance(node.ctx, (ast.Store, ast.Del)):
                flag(f"rebinds {node.id}")
            if node.id in RISKY_NAMES and id(node) not in reads:
                flag(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in rebindable:
                flag(f"rebinds {node.name}")
        elif isinstance(node, ast.ExceptHandler) and node.name in rebindable:
            flag(f"rebinds {node.name}")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in set(node.names) & rebindable:
                flag(f"rebinds {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                bound = alias.asname or (alias.name if module else alias.name.split(".")[0])
                # The setup cell's own import (from helpers.checks import nb00) is not worth a note.
                setup_import = module == "helpers.checks" and bound == alias.name and bound in protected
                if alias.name == "*":
                    flag(f"from {module} import *")
                elif bound in rebindable and not setup_import:
                    flag(f"rebinds {bound}")
                if full.startswith("helpers.checks") and not setup_import:
                    flag("helpers.checks")
                if full.split(".")[0] in RISKY_MODULES:
                    flag(f"imports {full.split('.')[0]}")
        elif isinstance(node, ast.Attribute):
            chain = dotted(node)
            outer = chain is not None and chain[0] in roots and chain[0] not in local.get(id(node), ())
            if outer and isinstance(node.ctx, (ast.Store, ast.Del)):
                flag(f"assigns to {'.'.join(chain or ())}")
            if node.attr in IPYTHON_ATTRS:
                flag(f"IPython internals (.{node.attr})")
            elif node.attr in EVENT_HOOKS and isinstance(node.value, ast.Attribute) and node.value.attr == "events":
                flag("IPython internals (.events)")  # `.events` alone is a common name (a run's events)
            if node.attr in RISKY_ATTRS:
                flag(node.attr)
            if chain and chain[0] == "sys" and node.attr in SYS_ATTRS:
                flag(f"sys.{node.attr}")
            if chain and chain[:2] == ["helpers", "checks"]:
                flag("helpers.checks")
            if node.attr == "__dict__" and outer and chain:
                flag(f"{chain[0]}.__dict__")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            builtin = isinstance(func, ast.Name) or (dotted(func) or [""])[0] in ("builtins", "__builtins__")
            if name in ("setattr", "delattr") and builtin and node.args:  # not a method: monkeypatch.setattr(…)
                target = dotted(node.args[0])
                if target and target[0] in roots and target[0] not in local.get(id(node), ()):
                    flag(f"{name}() on {target[0]}")
            elif name == "chr" and node.args:
                arg = node.args[0]
                if not isinstance(arg, ast.Constant):
                    flag("chr() of a computed value")
                elif arg.value in VERDICT_CODES:
                    flag("verdict symbols")
        elif isinstance(node, ast.Constant) and _verdict_constant(node.value):
            flag("verdict symbols")
    return list(found)


def _verdict_constant(value: Any) -> bool:
    """A literal that spells a verdict symbol: the character, its escape/code point in text, bytes or a number."""
    if isinstance(value, bytes):
        return any(c.encode() in value for c in VERDICT_CHARS) or bool(VERDICT_TEXT.search(value.decode("latin-1")))
    if isinstance(value, str):
        return any(c in value for c in VERDICT_CHARS) or bool(VERDICT_TEXT.search(value))
    return isinstance(value, int) and not isinstance(value, bool) and value in VERDICT_CODES
