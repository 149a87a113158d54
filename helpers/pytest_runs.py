"""Tests run from a notebook cell: a real ``python -m pytest`` over a test module written with ``%%module``.

:func:`run` copies the test module into a folder of its own and runs pytest on it in a subprocess, bounded by a
timeout, with the course's plugin (:mod:`helpers.pytest_plugin`: ``async def`` tests, a quiet SDK, a report of each
test's outcome). The modules the test imports come from the kernel's scratch directory (what the ``%%module`` cells
wrote), unless ``versions`` replaces some: ``versions={"dunning": source}`` writes that source as ``dunning.py`` in
the run's folder, where the test's ``from dunning import ...`` finds it first. That is how a check runs a learner's
test against a correct and a broken workflow, and how the replay gate meets a new version of the code.

Like a CI job, the run finds the Temporal server in its environment: ``TEMPORAL_ADDRESS`` and
``TEMPORAL_NAMESPACE`` (Temporal's own client configuration, read by ``ClientConfig.load_client_connect_config()``)
and ``TASK_QUEUE`` (the notebook's task queue, unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from helpers import runtime
from helpers.errors import CourseError
from helpers.history import text_table
from helpers.pytest_plugin import PARENT_ENV, REPORT_ENV

RUN_TIMEOUT_S = 20.0
CI_MARKERS = ("CI", "BUILD_NUMBER")  # the variables that switch pytest to its CI mode (_pytest.compat.running_on_ci)
COLUMNS = "88"  # the width pytest formats its report for (a fixed one: the same report in every run)
PYTEST_ARGS = ("-q", "-rfEp", "--tb=short", "--no-header", "-p", "no:cacheprovider")

_runs = itertools.count(1)


@dataclass(frozen=True)
class TestResult:
    """One test's outcome: ``passed``, ``failed``, ``error`` (in a fixture or at import) or ``skipped``."""

    test: str
    outcome: str
    message: str = ""

    __test__ = False  # not a pytest test class, whatever its name


@dataclass
class PytestRun:
    """What a pytest run printed and each test's outcome."""

    command: str
    output: str
    exit_code: int | None
    results: list[TestResult] = field(default_factory=list)
    timed_out: bool = False
    label: str = ""

    @property
    def passed(self) -> bool:
        """Every test passed, and there was at least one."""
        return not self.timed_out and self.exit_code == 0 and bool(self.results)

    @property
    def failures(self) -> list[TestResult]:
        return [r for r in self.results if r.outcome in ("failed", "error")]

    def summary(self) -> str:
        """One line: ``2 passed`` / ``1 failed: AssertionError: …`` / ``no test ran`` / ``stopped after 20 s``."""
        if self.timed_out:
            return "stopped: pytest did not finish in time"
        if not self.results:
            return "no test ran (a test is a function named test_…)"
        if self.failures:
            first = self.failures[0].message.strip().split("\n")[0]
            return f"{len(self.failures)} of {len(self.results)} failed: {first}".rstrip(": ")
        return f"{len(self.results)} passed"

    def __repr__(self) -> str:
        return f"$ {self.command}\n{self.output.rstrip()}"


class PytestRuns(dict[str, PytestRun]):
    """Several runs of one test module (one per version of the code), shown as a table."""

    def __repr__(self) -> str:
        return text_table(("code under test", "pytest says"), [(k, r.summary()) for k, r in self.items()])


def _source(version: ModuleType | str) -> str:
    if isinstance(version, str):
        return version
    path = getattr(version, "__file__", None)
    if path is None:
        raise CourseError(f"{version!r} is not a module written by a %%module cell.")
    return Path(path).read_text()


def _test_file(module: ModuleType | Path) -> Path:
    path = module if isinstance(module, Path) else getattr(module, "__file__", None)
    if path is None or not Path(path).exists():
        raise CourseError(f"{module!r}: pass the test module a %%module cell wrote (e.g. test_billing).")
    return Path(path)


def _environment(folder: Path, scratch: Path, task_queue: str, target: object) -> dict[str, str]:
    # A run of the learner's tests must not inherit the pytest options of whoever runs this notebook (a CI's
    # PYTEST_ADDOPTS would change what the report prints), nor pytest's CI mode (CI or BUILD_NUMBER set: the short
    # summary stops truncating messages): the same report everywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k not in CI_MARKERS}
    paths = [str(folder), str(scratch), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        {
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # only the plugins the course names: a faster, quieter start
            "COLUMNS": COLUMNS,
            "NO_COLOR": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join(paths),
            # `shutil.which("temporal-test-server")` finds the binary installed next to this Python
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "TEMPORAL_ADDRESS": target.address,  # type: ignore[attr-defined]
            "TEMPORAL_NAMESPACE": target.namespace,  # type: ignore[attr-defined]
            "TASK_QUEUE": task_queue,
            REPORT_ENV: str(folder / "report.json"),
            PARENT_ENV: str(os.getpid()),
        }
    )
    return env


async def run(
    module: ModuleType | Path,
    *,
    versions: Mapping[str, ModuleType | str] | None = None,
    task_queue: str | None = None,
    timeout: float = RUN_TIMEOUT_S,
    label: str = "",
) -> PytestRun:
    """Run pytest over ``module`` (a test module written by ``%%module``) in a subprocess; at most ``timeout`` s."""
    course = runtime.current()
    test_file = _test_file(module)
    folder = course.scratch / "pytest-runs" / f"{test_file.stem}-{next(_runs)}"
    folder.mkdir(parents=True)
    shutil.copy(test_file, folder / test_file.name)
    for name, version in (versions or {}).items():
        (folder / f"{name}.py").write_text(_source(version))
    (folder / "pytest.ini").write_text("[pytest]\n")  # this folder is the project: no config from elsewhere
    args = [*PYTEST_ARGS, "-p", "helpers.pytest_plugin", "-c", "pytest.ini", "--rootdir", ".", "--confcutdir", "."]
    args += ["--basetemp", "tmp", test_file.name]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        *args,
        cwd=folder,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_environment(folder, course.scratch, task_queue or course.task_queue, course.target),
        start_new_session=True,  # its own process group: a timeout stops pytest and the test server it started
    )
    output = asyncio.ensure_future(process.communicate())
    done, _ = await asyncio.wait({output}, timeout=timeout)
    timed_out = not done
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    try:
        text = (await output)[0].decode(errors="replace")
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    if timed_out:
        text += f"\n(stopped after {timeout:g} s: pytest did not finish)"
    results: list[TestResult] = []
    with contextlib.suppress(OSError, ValueError):
        report = json.loads((folder / "report.json").read_text())
        results = [TestResult(t["test"], t["outcome"], t["message"]) for t in report["tests"]]
    command = f"python -m pytest -q -rfEp --tb=short {test_file.name}"
    return PytestRun(command, text, process.returncode, results, timed_out, label)


async def run_versions(
    module: ModuleType | Path,
    versions: Mapping[str, Mapping[str, ModuleType | str]],
    *,
    task_queue: str | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> PytestRuns:
    """Run ``module``'s tests once per version of the code (``{label: {module name: module or source}}``), all at
    once; the runs in the order of ``versions``."""
    runs = await asyncio.gather(
        *(run(module, versions=v, task_queue=task_queue, timeout=timeout, label=label) for label, v in versions.items())
    )
    return PytestRuns(zip(versions, runs, strict=True))
