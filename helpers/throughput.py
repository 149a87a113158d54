"""Throughput, measured: how many workflows a setup completes per second, and where the machine's CPU went.

A :class:`Bench` owns a throwaway dev server that keeps its state in memory (no disk to wait for: what it measures
is Temporal's own work), worker processes on it (:func:`helpers.worker.start_process`), and a client in this
kernel that keeps N workflows in flight. Three knobs: workflows in flight (how many the client runs at once),
activity slots (``max_concurrent_activities`` per worker) and worker processes.

:meth:`Bench.measure` runs a closed loop for a fixed window: every client starts a workflow, waits for its result
and starts the next one. Once runs flow (the first completion), a window of 1 s is measured: completions per
second, and the CPU time of the server, the worker processes, this kernel and the whole machine (``psutil``) over
the same window, which says what was busy. Runs still in flight when the window closes are terminated,
so the next measurement starts clean. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from helpers import contract, errors, history, server, worker
from helpers.errors import CourseError

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from helpers.runtime import Course

CPU_PARTS = ("server", "workers", "this notebook", "other programs")
CPU_COLORS = {"server": "#4c72b0", "workers": "#55a868", "this notebook": "#dd8452", "other programs": "#bbbbbb"}
WINDOW_S = 1.0
WARM_UP_MAX_S = 3.0  # how long to wait for the first completion before measuring anyway
SETTLE_S = 0.15  # after the first completion: the rest of the first wave finishes, the flow is steady
RUN_TIMEOUT_S = 20.0  # no single workflow of a benchmark may take longer than this
CPU_BOUND = 0.7  # from this share on, runs wait for a free core more and more (queueing): the CPU is the limit


# --------------------------------------------------------------------------- CPU


def _busy(times: Any) -> float:
    """Seconds a machine's CPUs spent working (not idle, not waiting for I/O)."""
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _process_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


class CpuMeter:
    """CPU seconds of the server, the workers, this process and the whole machine, between two readings."""

    def __init__(self, server_pid: int, worker_pids: Sequence[int]) -> None:
        self.groups = {"server": [server_pid], "workers": list(worker_pids), "this notebook": [psutil.Process().pid]}
        self.cores = psutil.cpu_count() or 1

    def read(self) -> dict[str, float]:
        reading = {name: _process_seconds(pids) for name, pids in self.groups.items()}
        reading["machine"] = _busy(psutil.cpu_times())
        return reading

    def shares(self, before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, float]:
        """Each part's share of all the machine's cores over ``seconds`` (0..1); the rest of the busy time is
        other programs (other notebooks, a browser, …)."""
        capacity = max(seconds, 1e-9) * self.cores
        ours = {name: max(after[name] - before[name], 0.0) / capacity for name in self.groups}
        machine = max(after["machine"] - before["machine"], 0.0) / capacity
        # Readings of different processes are a moment apart: never let the parts add up to more than the machine.
        ours["other programs"] = max(min(machine, 1.0) - sum(ours.values()), 0.0)
        return {part: min(ours[part], 1.0) for part in CPU_PARTS}


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Setup:
    """One combination of the three knobs."""

    in_flight: int
    slots: int
    processes: int

    def __str__(self) -> str:
        procs = "1 worker process" if self.processes == 1 else f"{self.processes} worker processes"
        slots = "1 activity slot" if self.slots == 1 else f"{self.slots} activity slots"
        return f"{self.in_flight} in flight, {slots} each, {procs}"


@dataclass(frozen=True)
class Point:
    """What one setup achieved: ``completed`` runs in the window, at ``rate`` workflows per second."""

    setup: Setup
    completed: int
    rate: float
    cpu: dict[str, float]
    cores: int

    @property
    def busy(self) -> float:
        """Share of all the machine's cores that worked during the window (0..1)."""
        return min(sum(self.cpu.values()), 1.0)

    def line(self) -> str:
        parts = ", ".join(f"{name} {share:.0%}" for name, share in self.cpu.items())
        return (
            f"{self.setup}: {self.rate:5.1f} wf/s ({self.completed} workflow{'s' if self.completed != 1 else ''}; "
            f"CPU {self.busy:.0%} of {self.cores} cores: {parts})"
        )


def rate_between(done_at: Sequence[float], start: float, end: float) -> tuple[int, float]:
    """Completions per second in the window ``start``..``end``: counted from the last completion before the window
    to the last one inside it, so the rate is exact for runs that complete one by one (serial) as for runs that
    complete in batches (5 slots finish 5 runs together). Returns (completions in the window, rate)."""
    inside = sorted(t for t in done_at if start < t <= end)
    earlier = [t for t in done_at if t <= start]
    if earlier:
        since = max(earlier)
    elif len(inside) >= 2:
        since, inside = inside[0], inside[1:]
    else:
        return len(inside), 0.0
    if not inside or inside[-1] <= since:
        return len(inside), 0.0
    return len(inside), len(inside) / (inside[-1] - since)


@dataclass
class Bench:
    """A throughput bench: a throwaway in-memory server, worker processes on it, and this kernel as the client.

    ``run`` is the benchmark workflow's run method; it takes one ``int``. ``workflows`` / ``activities`` are the
    ``"module:attr"`` names the worker processes load. ``activity_seconds`` is how long its activity waits.
    """

    course: Course
    dev: server.DevServer
    client: Client
    run: Any
    workflows: Sequence[str]
    activities: Sequence[str]
    activity_seconds: float
    points: list[Point] = field(default_factory=list)
    # (slots, processes) -> (task queue, its worker processes): started on first use or by prepare()
    _sets: dict[tuple[int, int], tuple[str, list[worker.WorkerProcess]]] = field(default_factory=dict)
    _queue: str = ""
    _procs: list[worker.WorkerProcess] = field(default_factory=list)
    _n: int = 0

    @classmethod
    async def start(
        cls,
        course: Course,
        run: Any,
        *,
        workflows: Sequence[str],
        activities: Sequence[str],
        activity_seconds: float,
    ) -> Bench:
        global _current
        if _current is not None:  # the cell ran before: one bench at a time, or they would measure each other
            await _current.stop()
        dev = await worker.start_server(course, None)
        client = await server.connect(dev.target, 10.0)
        bench = cls(course, dev, client, run, workflows, activities, activity_seconds)
        _current = bench
        return bench

    def __repr__(self) -> str:
        state = "running" if self.dev.alive() else "stopped"
        return f"Benchmark server (in memory, {state}) with {len(self.points)} measurement(s)"

    # ---- workers -----------------------------------------------------------------------------------------
    async def prepare(self, setups: Sequence[tuple[int, int]]) -> None:
        """Start the worker processes of several ``(slots, processes)`` setups at once, each set on a task queue
        of its own (they wait there until measured), instead of one setup after the other."""
        await asyncio.gather(*(self._set(slots, processes) for slots, processes in dict.fromkeys(setups)))

    async def _set(self, slots: int, processes: int) -> tuple[str, list[worker.WorkerProcess]]:
        key = (slots, processes)
        if key in self._sets and all(p.alive for p in self._sets[key][1]):
            return self._sets[key]
        queue = self.course.new_task_queue(f"bench-{slots}x{processes}-{len(self._sets)}-{self._n}")
        started = await asyncio.gather(
            *(
                worker.start_process(
                    self.course,
                    workflows=self.workflows,
                    activities=self.activities,
                    task_queue=queue,
                    target=self.dev.target,
                    max_concurrent_activities=slots,
                    replace=False,
                )
                for _ in range(processes)
            )
        )
        self._sets[key] = (queue, list(started))
        return self._sets[key]

    async def _stop_workers(self) -> None:
        await asyncio.gather(*(p.stop() for _, procs in self._sets.values() for p in procs))
        self._sets.clear()
        self._procs = []

    async def _start(self) -> WorkflowHandle[Any, Any]:
        self._n += 1
        return await self.client.start_workflow(
            self.run, self._n, id=f"bench-{self.course.session}-{self._n}", task_queue=self._queue
        )

    # ---- measuring ---------------------------------------------------------------------------------------
    async def measure(
        self,
        *,
        in_flight: int,
        slots: int = 100,
        processes: int = 1,
        window: float | None = None,
        show: bool = True,
    ) -> Point:
        """Keep ``in_flight`` workflows running on ``processes`` worker processes with ``slots`` activity slots
        each: first until they flow (the first completion, then :data:`SETTLE_S`), then for ``window`` seconds,
        the measurement. Print and return the :class:`Point`."""
        if min(in_flight, slots, processes) < 1:
            raise CourseError("in_flight, slots and processes must each be at least 1.")
        window = WINDOW_S * contract.benchmark_scale() if window is None else window
        # The first, slow runs on new worker processes fall into the warm-up below.
        self._queue, self._procs = await self._set(slots, processes)
        meter = CpuMeter(self.dev.pid, [p.pid for p in self._procs])
        loop = asyncio.get_running_loop()
        done_at: list[float] = []
        first_done = asyncio.Event()
        stop = asyncio.Event()
        open_runs: set[WorkflowHandle[Any, Any]] = set()

        async def client() -> None:
            while not stop.is_set():
                handle = await self._start()
                open_runs.add(handle)
                await asyncio.wait_for(handle.result(), RUN_TIMEOUT_S)
                open_runs.discard(handle)
                done_at.append(loop.time())
                first_done.set()

        clients = [asyncio.create_task(client()) for _ in range(in_flight)]
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(first_done.wait(), WARM_UP_MAX_S)
            await asyncio.sleep(SETTLE_S)
            start, before = loop.time(), meter.read()
            await asyncio.wait(clients, timeout=window)  # returns early only if every client failed
            end, after = loop.time(), meter.read()
        finally:
            stop.set()
            failed = [t.exception() for t in clients if t.done() and not t.cancelled() and t.exception() is not None]
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            # Runs still in flight would load the next measurement (50 in flight through 1 slot is a long backlog).
            await asyncio.gather(*(_terminate(h) for h in list(open_runs)))
        if failed:
            raise CourseError(f"A benchmark run failed: {errors.short_failure(failed[0])}")
        completed, rate = rate_between(done_at, start, end)
        point = Point(
            Setup(in_flight, slots, processes), completed, rate, meter.shares(before, after, end - start), meter.cores
        )
        self.points.append(point)
        if show:
            print(point.line(), flush=True)
        return point

    async def stop(self) -> None:
        """Stop the worker processes and the benchmark server."""
        global _current
        await self._stop_workers()
        await asyncio.to_thread(self.dev.stop)
        if _current is self:
            _current = None

    # ---- results -----------------------------------------------------------------------------------------
    @property
    def serial(self) -> Point:
        """The baseline: one workflow at a time (the first such measurement)."""
        for p in self.points:
            if p.setup.in_flight == 1:
                return p
        raise CourseError("Measure the serial baseline first: bench.measure(in_flight=1, ...).")

    @property
    def best(self) -> Point:
        if not self.points:
            raise CourseError("Nothing measured yet.")
        return max(self.points, key=lambda p: p.rate)

    def summary(self) -> Summary:
        return Summary(self.serial, self.best)

    def plot(self, *, title: str | None = None) -> None:
        plot(self.points, activity_seconds=self.activity_seconds, title=title)


async def _terminate(handle: WorkflowHandle[Any, Any]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.terminate(reason="benchmark window closed"), 5)


_current: Bench | None = None


@dataclass(frozen=True)
class Summary:
    """Serial baseline, best setup, the gain, and what the CPU did at the best point."""

    serial: Point
    best: Point

    @property
    def gain(self) -> float:
        return self.best.rate / self.serial.rate if self.serial.rate else 0.0

    @property
    def cpu_bound(self) -> bool:
        return self.best.busy >= CPU_BOUND

    def rows(self) -> list[tuple[str, str]]:
        best = self.best
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in best.cpu.items())
        if self.cpu_bound:
            limit = (
                f"CPU: {best.busy:.0%} of the {best.cores} cores were busy; the server, the workers and this "
                "notebook share them, so more in flight only wait longer for a core"
            )
        else:
            limit = f"not the CPU: the cores were only {best.busy:.0%} busy (try more in flight or more slots)"
        return [
            ("serial", f"{self.serial.rate:.1f} wf/s (one workflow at a time)"),
            ("best", f"{best.rate:.1f} wf/s ({best.setup})"),
            ("gain", f"{self.gain:.1f}×"),
            ("CPU at best", cpu),
            ("the limit", limit),
        ]

    def __repr__(self) -> str:
        return history.text_table(("", "measured on this machine, now"), self.rows())


# --------------------------------------------------------------------------- the picture


def _slots(n: int) -> str:
    return "1 slot" if n == 1 else f"{n} slots"


def _groups(points: Sequence[Point]) -> tuple[list[Point], list[Point]]:
    """The in-flight sweep (most slots, one process) and the slots/processes comparison (at one in-flight)."""
    top = max(p.setup.slots for p in points)
    sweep: dict[int, Point] = {}
    for p in points:
        if p.setup.processes == 1 and p.setup.slots == top:
            sweep.setdefault(p.setup.in_flight, p)
    varied = [p for p in points if p.setup.slots < top or p.setup.processes > 1]
    at = varied[0].setup.in_flight if varied else max(sweep, default=1)
    knobs = sorted(
        (p for p in points if p.setup.in_flight == at and (p in varied or p is sweep.get(at))),
        key=lambda p: (p.setup.slots * p.setup.processes, p.setup.processes),
    )
    return [sweep[k] for k in sorted(sweep)], knobs


def plot(points: Sequence[Point], *, activity_seconds: float, title: str | None = None) -> None:
    """Three panels: rate against workflows in flight; rate per slots × processes setup, with the cap the slots
    allow; and where the CPU went during every measurement."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not points:
        raise CourseError("Nothing measured yet.")
    serial = next((p for p in points if p.setup.in_flight == 1), points[0])
    sweep, knobs = _groups(points)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1.05, 1, 1.25]})
    top = max([p.rate for p in points] + [5 * serial.rate])

    # 1. workflows in flight
    xs = [p.setup.in_flight for p in sweep]
    ax1.plot(xs, [p.rate for p in sweep], "o-", color="#4c72b0", linewidth=2, label="measured")
    ax1.plot(xs, [serial.rate * x for x in xs], "--", color="#999999", label="if every run took as long as alone")
    ax1.axhline(5 * serial.rate, color="#c44e52", linestyle=":", label="5× the serial baseline")
    ax1.set_xscale("log")
    ax1.set_xticks(xs, [str(x) for x in xs])
    ax1.set_ylim(0, top * 1.3)
    ax1.set_xlabel("workflows in flight (the client runs them at once)")
    ax1.set_ylabel("workflows completed per second")
    ax1.set_title(f"Knob 1: workflows in flight\n({_slots(sweep[0].setup.slots) if sweep else ''}, 1 worker process)")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)

    # 2. activity slots × worker processes
    for i, p in enumerate(knobs):
        ax2.bar(i, p.rate, color="#55a868" if p.setup.processes == 1 else "#8172b2")
        ax2.text(i, p.rate, f"{p.rate:.0f}", ha="center", va="bottom", fontsize=8)
        cap = p.setup.slots * p.setup.processes / activity_seconds
        if cap < top * 1.25:
            ax2.hlines(cap, i - 0.42, i + 0.42, color="#c44e52", linestyle="--")
    ax2.set_xticks(range(len(knobs)), [f"{_slots(p.setup.slots)}\n× {p.setup.processes}" for p in knobs], fontsize=8)
    ax2.set_xlabel("activity slots per worker × worker processes")
    ax2.set_ylabel("workflows completed per second")
    at = knobs[0].setup.in_flight if knobs else 0
    ax2.set_title(f"Knobs 2 and 3: activity slots and worker processes\n({at} in flight)")
    ax2.set_ylim(0, top * 1.3)
    ax2.legend(
        handles=[
            Patch(color="#55a868", label="1 worker process"),
            Patch(color="#8172b2", label="2 worker processes"),
            Line2D([], [], color="#c44e52", linestyle="--", label="slot cap = slots × processes ÷ activity time"),
        ],
        fontsize=8,
        loc="upper left",
    )
    ax2.grid(axis="y", alpha=0.3)

    # 3. where the CPU went
    rows = list(reversed(points))
    left = [0.0] * len(rows)
    for part in CPU_PARTS:
        vals = [100 * p.cpu[part] for p in rows]
        ax3.barh(range(len(rows)), vals, left=left, color=CPU_COLORS[part], label=part)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for i, p in enumerate(rows):
        ax3.text(100 * p.busy + 1, i, f"{p.rate:.0f} wf/s", va="center", fontsize=7)
    labels = [
        f"{p.setup.in_flight} in flight"
        if p in sweep
        else f"{p.setup.in_flight} in flight, {_slots(p.setup.slots)} × {p.setup.processes}"
        for p in rows
    ]
    ax3.set_yticks(range(len(rows)), labels, fontsize=8)
    ax3.axvline(100, color="black", linewidth=0.8)
    ax3.set_xlim(0, 125)
    ax3.set_xlabel(f"CPU busy, % of all the machine's {points[0].cores} cores")
    ax3.set_title("Where the CPU went during each measurement")
    ax3.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.45, -0.14), ncols=4, frameon=False)
    ax3.grid(axis="x", alpha=0.3)

    fig.suptitle(title or "Throughput of a workflow with one I/O-bound activity, measured on this machine")
    plt.tight_layout()
    plt.show()


def plot_pacing(times: Sequence[float], per_second: float, *, title: str | None = None) -> None:
    """How many calls had started by each moment (seconds since the first), against the pace a rate limit allows."""
    import matplotlib.pyplot as plt

    if not times:
        raise CourseError("No calls recorded.")
    t0 = min(times)
    xs = sorted(t - t0 for t in times)
    _, ax = plt.subplots(figsize=(7, 3.4))
    ax.step(xs, range(1, len(xs) + 1), where="post", color="#4c72b0", linewidth=2, label="calls started")
    ax.plot([0, xs[-1]], [1, 1 + per_second * xs[-1]], "--", color="#c44e52", label=f"{per_second:g} per second")
    ax.set_xlabel("seconds since the first call")
    ax.set_ylabel("calls started so far")
    ax.set_title(title or "Calls started over time")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    plt.tight_layout()
    plt.show()
