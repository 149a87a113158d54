"""The course files a grade depends on, held in the grader's memory from the moment grading starts.

Each nbval run gets a fresh copy of ``helpers/`` and ``tests/nbval.cfg`` (``lib/``, first on the kernel's
``PYTHONPATH``), written from this snapshot, never from the live repository, which a notebook could rewrite for the
notebooks graded after it."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import py_compile
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from helpers import contract
from helpers.grading.references import Reference, references_from


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class CourseFiles:
    """``helpers/`` and ``tests/nbval.cfg`` as they were when grading started.

    The copy includes byte-code compiled with hash checks, so kernels need not write any; after the run the copy is
    compared with what was written (content, and inode/ctime, which a process cannot set back), to catch one notebook
    editing the copy of another (or its own before importing it)."""

    CODE = (".py", ".pyc", ".pth", ".so", ".cfg")

    def __init__(self, source: Path) -> None:
        files: dict[str, bytes] = {}
        for path in sorted((source / "helpers").rglob("*")):
            rel = path.relative_to(source)
            if "__pycache__" in rel.parts or path.suffix in (".pyc", ".tmp") or not path.is_file():
                continue
            files[rel.as_posix()] = path.read_bytes()
        files["nbval.cfg"] = (source / "tests" / "nbval.cfg").read_bytes()
        with tempfile.TemporaryDirectory(prefix="course-grade-pyc-") as tmp:
            for rel, data in list(files.items()):
                if rel.endswith(".py"):
                    src = Path(tmp) / rel
                    src.parent.mkdir(parents=True, exist_ok=True)
                    src.write_bytes(data)
                    pyc = Path(importlib.util.cache_from_source(str(src)))
                    with contextlib.suppress(py_compile.PyCompileError):
                        mode = py_compile.PycInvalidationMode.CHECKED_HASH
                        py_compile.compile(str(src), cfile=str(pyc), doraise=True, invalidation_mode=mode)
                        files[pyc.relative_to(tmp).as_posix()] = pyc.read_bytes()
        self.files = files

    def write(self, lib: Path) -> dict[str, tuple[int, int, int]]:
        for rel, data in self.files.items():
            path = lib / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return self._scan(lib)

    @staticmethod
    def _scan(lib: Path) -> dict[str, tuple[int, int, int]]:
        found = {}
        for dirpath, _, filenames in os.walk(lib):
            for name in filenames:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    found[Path(dirpath, name).relative_to(lib).as_posix()] = (st.st_ino, st.st_ctime_ns, st.st_size)
        return found

    def changes(self, lib: Path, written: Mapping[str, tuple[int, int, int]]) -> list[str]:
        """Files of the copy changed or removed since ``write``, and code files added to it."""
        now = self._scan(lib)
        changed = [
            rel for rel in written if now.get(rel) != written[rel] or read_bytes(lib / rel) != self.files.get(rel)
        ]
        added = [rel for rel in now if rel not in written and (rel.endswith(self.CODE) or "__pycache__" in rel)]
        return sorted(changed + added)


# Software whose version can change a grade: a worker with other versions has another fingerprint.
GRADING_SOFTWARE = ("temporalio", "nbval", "pytest", "ipykernel", "jupyter_client", "nbformat", "ipython")


@dataclass(frozen=True)
class Course:
    """Everything a grade depends on, read once when grading starts: the kernels' copy of ``helpers/`` and
    ``tests/nbval.cfg``, the solutions and the learner templates (as references), and the Python and package
    versions. Its :attr:`fingerprint` names the task queue a grading run's notebooks wait on, so a worker whose
    course files differ (another commit of solutions/ or helpers/) never sees them."""

    files: CourseFiles
    references: tuple[Reference, ...]
    fingerprint: str

    @classmethod
    def snapshot(
        cls, source: Path = contract.ROOT, solutions: Path = contract.SOLUTIONS, templates: Path = contract.NOTEBOOKS
    ) -> Course:
        files = CourseFiles(source)
        sols = {p.stem: p.read_bytes() for p in contract.discover(solutions)}
        tmpls = {p.stem: p.read_bytes() for p in contract.discover(templates)}
        digest = hashlib.sha256()
        parts = [(f"lib/{rel}", data) for rel, data in files.files.items() if not rel.endswith(".pyc")]
        parts += [(f"solutions/{n}", d) for n, d in sols.items()] + [(f"notebooks/{n}", d) for n, d in tmpls.items()]
        parts.append(("versions", json.dumps(software_versions(), sort_keys=True).encode()))
        for name, data in sorted(parts):
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return cls(files, tuple(references_from(sols, tmpls)), digest.hexdigest())


def software_versions() -> dict[str, str]:
    """Python's and the grading packages' versions (byte-code is left out of the fingerprint: it can differ
    between processes for the same source)."""
    found = {"python": f"{sys.implementation.name} {sys.version.split()[0]}"}
    for name in GRADING_SOFTWARE:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found
