"""Fixtures shared by the tests (the session's dev server itself is started by the root conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from helpers import runtime, server


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A per-test scratch module directory on sys.path (what ``%%module`` writes into)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    # A kernel keeps one scratch dir; tests each get their own, so forget the modules this one held.
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def make_course(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Awaitable[runtime.Course]]:
    """``course = await make_course()`` inside a test's event loop; it becomes ``runtime.current()``."""

    async def make(notebook: str = "t") -> runtime.Course:
        where = server.target()
        course = runtime.Course(notebook=notebook, client=await runtime.connect(where), target=where, scratch=scratch)
        monkeypatch.setattr(runtime, "_current", course)
        return course

    return make
