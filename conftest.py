"""Every pytest run in this repo (tests/, nbval over solutions/) gets a real Temporal dev server of its own,
on a free port, stopped at the end of the run.

It never touches a learner's server on 7233: TEMPORAL_ADDRESS points every test, notebook kernel and grader
run of this session at the private server, and TEMPORAL_COURSE_DATA at a temporary directory.

``--twice`` (what `make test` uses for solutions/): nbval's own collector runs each solution, strictly (as
``--nbval``), and then runs it all again in the same kernel, as a learner re-running everything would: the second
pass must run without errors and print the same passing verdicts, and every cell of both passes must stay within
its time budget (10 s; 30 s for a cell tagged ``benchmark``; stretched by workers per core when pytest-xdist runs
several notebooks at once: ``contract.budget_stretch``). One kernel, one first pass for both properties.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import contract, server
from helpers.waits import WAIT_SCALE_VAR

ROOT = Path(__file__).resolve().parent.parent
_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller started the server and exported its address to us
    data = Path(tempfile.mkdtemp(prefix="temporal-course-test-"))
    # Everything the run creates in the temp dir (kernels' scratch modules, worker logs, pytest's tmp_path,
    # throwaway servers' databases) lands under `data`, removed at the end: a killed kernel cannot clean up.
    scratch = data / "tmp"
    scratch.mkdir()
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # re-read TMPDIR
    for var in ("TEMPORAL_API_KEY", "TEMPORAL_PROFILE", "TEMPORAL_CONFIG_FILE", "TEMPORAL_TLS", "TEMPORAL_UI_URL"):
        os.environ.pop(var, None)
    os.environ["TEMPORAL_COURSE_DATA"] = str(data)
    os.environ["TEMPORAL_CONFIG_FILE"] = str(data / "no-profile.toml")  # ignore a developer's own profile
    dev = server.DevServer.start(headless=True, log_path=data / "server.log")
    os.environ["TEMPORAL_ADDRESS"] = dev.address
    os.environ["TEMPORAL_NAMESPACE"] = "default"
    _STATE.update(server=dev, data=data)
    # A run stopped with SIGTERM (a CI's time limit, `timeout`) ends like one stopped with Ctrl-C: pytest unwinds and
    # pytest_unconfigure stops the server (it runs in a session of its own, so nothing else would).
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    dev = _STATE.pop("server", None)
    if isinstance(dev, server.DevServer):
        dev.stop()
    data = _STATE.pop("data", None)
    if isinstance(data, Path):
        shutil.rmtree(data, ignore_errors=True)


# --------------------------------------------------------------------------- solutions: strict, then again


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--twice",
        action="store_true",
        help="run each solutions/NN_*.ipynb strictly (as --nbval), then all again in the same kernel",
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if parent.config.getoption("twice") and file_path.suffix == ".ipynb" and file_path.parent == contract.SOLUTIONS:
        return _twice_notebook().from_parent(parent, path=file_path)
    return None


def _twice_notebook() -> type:
    from nbval.plugin import IPyNbCell, IPyNbFile

    class SecondPassVerdicts(pytest.Item):
        """After the second pass: each check printed one passing verdict, the same as the stored one."""

        def __init__(self, *, pairs: list[tuple[Any, Any]], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pairs = pairs

        def runtest(self) -> None:
            from helpers import checks

            for first, again in self.pairs:
                stored = _stdout(first.cell.outputs)
                printed = _stdout(getattr(again, "test_outputs", None) or [])
                verdicts = [checks.parse(line) for line in printed.splitlines() if line.strip()]
                assert len(verdicts) == 1 and verdicts[0] is not None, f"{again.name}: {printed!r}"
                assert verdicts[0].status == "passed" and printed == stored, f"{again.name}: {printed!r}"

        def reportinfo(self) -> tuple[Any, int, str]:
            return self.path, 0, f"{self.name}"

    class TwiceNotebook(IPyNbFile):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.compare_outputs = True  # strict, as --nbval

        def setup(self) -> None:
            # The kernel shares the cores with the other test workers: its bounded waits (a check's 10 s) stretch by
            # as much as the cell budgets do, as the grader's do when it runs several notebooks at once.
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(WAIT_SCALE_VAR, f"{contract.budget_stretch():g}")
                super().setup()  # starts the kernel, which keeps this environment

        def collect(self) -> Any:
            first = list(super().collect())
            yield from first
            quick = nbformat.v4.new_code_cell(
                f"import os\nos.environ[{contract.BENCHMARK_SCALE_VAR!r}] = {QUICK_BENCHMARKS!r}"
            )
            offset = len(first)
            yield IPyNbCell.from_parent(
                self, name="second pass: quick benchmarks", cell_num=offset, cell=quick, options=_lax({})
            )
            pairs = []
            for item in first:
                again = IPyNbCell.from_parent(
                    self,
                    name=f"{item.name} (again)",
                    cell_num=offset + 1 + item.cell_num,
                    cell=item.cell,
                    options=_lax(item.options),
                )
                if contract.CHECK in item.cell.metadata.get("tags", []):
                    pairs.append((item, again))
                yield again
            yield SecondPassVerdicts.from_parent(self, name="second pass: the same passing verdicts", pairs=pairs)

    return TwiceNotebook


QUICK_BENCHMARKS = "0.25"  # the second pass only needs benchmark cells to work (see contract.BENCHMARK_SCALE_VAR)


def _lax(options: Any) -> Any:
    from collections import defaultdict

    again = defaultdict(bool, options)
    again["check"] = False  # the second pass is not compared with the stored outputs: ids and counts move on
    return again


def _stdout(outputs: Any) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A solution cell (either pass) over its time budget fails, like a cell that raised."""
    started = time.monotonic()
    result = yield
    cell = getattr(item, "cell", None)
    if item.config.getoption("twice") and cell is not None and Path(str(item.path)).parent == contract.SOLUTIONS:
        budget = (
            contract.BENCHMARK_CELL_BUDGET_S
            if contract.BENCHMARK in cell.metadata.get("tags", [])
            else contract.CELL_BUDGET_S
        ) * contract.budget_stretch()
        took = time.monotonic() - started
        if took > budget:
            pytest.fail(f"{item.name} took {took:.1f} s, over its {budget:g} s budget", pytrace=False)
    return result


@pytest.fixture(scope="session")
def dev_server() -> server.Target:
    """The session's dev server (started by this process, or by the xdist controller for its workers)."""
    return server.target()


# --------------------------------------------------------------------------- running in parallel (pytest-xdist)
# `make test` runs the suite on several workers. Whatever shares a kernel (nbval: a notebook's cells) or an
# expensive module fixture (the grader's class) must stay on one worker, everything else is spread test by test,
# and the longest work starts first so that no worker is left alone with a long notebook at the end.
# (xdist's `--dist loadgroup` would do the grouping with marks, but with pytest 9 its node-id suffix no longer
# takes: a scheduler of our own decides the groups instead.)

KEEP_TOGETHER = (".ipynb", "test_grade.py", "test_grade_demos.py")
LONG = ("test_grade_scale.py",)  # tests of half a minute each, independent of each other: spread, but started early


def _cost(item: pytest.Item) -> int:
    path = Path(str(item.fspath))
    if path.suffix == ".ipynb":  # a solution, run twice in its kernel (--twice)
        return 3
    if path.name == "test_notebooks.py":
        return 2 if "learner" in item.name else 0
    if path.name in KEEP_TOGETHER or path.name in LONG:
        return 2
    return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_cost(item))  # stable: the order within a notebook (and a cost) is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        """Load scheduling by scope: a notebook (or test_grade.py) is one scope, any other test its own."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(KEEP_TOGETHER) else nodeid

    config.option.loadscopereorder = False  # keep the collection's longest-first order
    return CourseScheduling(config, log)
