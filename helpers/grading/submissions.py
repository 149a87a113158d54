"""The class folder: ``SUBMISSIONS/<learner>/<NN_topic>.ipynb``. Finding a learner's notebook and reading it,
read-only, with a one-line reason for anything that is not a gradable notebook (a FIFO never blocks the grader)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024


class SubmissionError(ValueError):
    """A learner's file that cannot be graded; the message says why, in one line."""


def read_submission(path: Path) -> dict[str, Any]:
    """The notebook JSON of a learner's file, or SubmissionError with a one-line reason."""
    if path.is_symlink() and not path.exists():
        raise SubmissionError(f"the file is a broken symbolic link (to {os.readlink(path)})")
    try:
        # Read only (the file is never written); O_NONBLOCK so that a FIFO cannot block the grader.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise SubmissionError("it is a folder, not a notebook file")
            if not stat.S_ISREG(st.st_mode):
                kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
                raise SubmissionError(f"it is {kind}, not a regular file")
            if st.st_size > MAX_NOTEBOOK_BYTES:
                raise SubmissionError(f"the file is {st.st_size / 1e6:.0f} MB, over the grader's limit of 64 MB")
            raw = f.read(MAX_NOTEBOOK_BYTES + 1)
        if len(raw) > MAX_NOTEBOOK_BYTES:
            raise SubmissionError("the file is over the grader's limit of 64 MB")
    except IsADirectoryError:
        raise SubmissionError("it is a folder, not a notebook file") from None
    except OSError as err:
        raise SubmissionError(f"could not read the file: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SubmissionError("the file is not UTF-8 text, so not a notebook") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SubmissionError(f"the file is not valid notebook JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("worksheets"), list) and "cells" not in data:
        import nbformat  # an nbformat 3 notebook: upgrade it

        try:
            data = json.loads(nbformat.writes(nbformat.convert(nbformat.from_dict(data), 4)))
        except Exception as err:
            raise SubmissionError(f"an old (nbformat 3) notebook that could not be upgraded: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise SubmissionError("the file is JSON but not a Jupyter notebook (it has no list of cells)")
    if not any(isinstance(c, dict) and c.get("cell_type") == "code" for c in data["cells"]):
        raise SubmissionError("the notebook has no code cells")
    return data


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "learner"


def learner_slug(name: str) -> str:
    """A folder name / HTML anchor for a learner, distinct for distinct names: a name that is not already a plain
    lower-case slug gets a short hash (``a b`` and ``a_b``, or ``Ada`` and ``ada`` on a case-blind disk)."""
    plain = slug(name)
    if plain == name and name == name.lower():
        return plain
    return f"{plain[:40]}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def find_submission(learner_dir: Path, name: str) -> tuple[Path | None, str | None]:
    """``<learner>/<NN_topic>.ipynb`` for notebook ``name``; else one ``NN_*.ipynb`` / ``NN-*.ipynb`` /
    ``NN *.ipynb`` (noted). Something there that is not a readable file (a FIFO, a broken link) is returned too: it
    becomes an error row."""
    exact = learner_dir / f"{name}.ipynb"
    if os.path.lexists(exact):
        return exact, None
    pattern = re.compile(rf"^{name[:2]}[ _-].*\.ipynb$", re.IGNORECASE)
    found = sorted((not p.is_file(), p) for p in learner_dir.iterdir() if pattern.match(p.name))
    paths = [p for _, p in found]  # regular files first
    if not paths:
        return None, None
    if len(paths) > 1:
        return paths[0], f"several files for {name} ({', '.join(p.name for p in paths)}); graded {paths[0].name}"
    return paths[0], f"graded {paths[0].name} as {name}.ipynb"


def learners(submissions: Path) -> list[Path]:
    """The learner folders (names starting with ``.`` or ``_`` are skipped)."""
    return sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def outside(path: Path, *folders: Path) -> bool:
    """Whether ``path`` (symbolic links followed) lies outside every one of ``folders``."""
    try:
        real = path.resolve()
        return not any(real == f or f in real.parents for f in (f.resolve() for f in folders))
    except (OSError, RuntimeError):  # a symbolic link loop: reading it fails later, with a message
        return False
