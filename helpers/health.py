"""A running system's health, live: the SDK's own metrics in-process, visibility queries, and a dashboard.

Four signals, and where each comes from:

* **pending (running) workflows**: a visibility query, ``count_workflows("... GROUP BY ExecutionStatus")``;
* **workflow execution durations**: the SDK's histogram ``temporal_workflow_endtoend_latency`` (one value per
  finished run);
* **activity failure rate**: ``temporal_activity_execution_failed`` (a counter: each update is a delta) against
  ``temporal_activity_execution_latency`` (a histogram: one value per attempt, failed or not);
* **retry attempts**: the same failed attempts over time (each one is retried after its backoff, unless it was
  the last).

:func:`metered_client` connects a client whose runtime keeps the SDK's metrics in a buffer in this process
(``Runtime(telemetry=TelemetryConfig(metrics=MetricBuffer(...)))``); a worker on that client records what it does.
:class:`Dashboard` drains that buffer and asks visibility every quarter second while a load runs, and redraws a
2×2 figure in place (a display handle) every second and a half: headless, the cell ends with the final picture.
:func:`prometheus_client` gives the same metrics to Prometheus instead (``/metrics`` on a loopback port).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client
from temporalio.runtime import (
    LoggingConfig,
    MetricBuffer,
    MetricBufferDurationFormat,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Worker

from helpers import runtime, server
from helpers.errors import CourseError
from helpers.waits import wait_scale

# The metric names the signals are computed from (Temporal's SDK prefixes every metric with ``temporal_``).
ATTEMPTS = "temporal_activity_execution_latency"  # histogram: one value per attempt
FAILED_ATTEMPTS = "temporal_activity_execution_failed"  # counter: failed attempts
WORKFLOW_DURATION = "temporal_workflow_endtoend_latency"  # histogram: one value per finished run
SIGNAL_METRICS = (ATTEMPTS, FAILED_ATTEMPTS, WORKFLOW_DURATION)

BUFFER_SIZE = 500_000  # updates kept between two drains; a dashboard drains four times a second
SAMPLE_S = 0.25  # how often the dashboard reads the metrics and asks visibility
DRAW_S = 1.5  # how often it redraws
SETTLE_S = 5.0  # how long status_counts(running=n) waits for visibility to catch up
STATUSES = ("Running", "Completed", "Failed")
STATUS_COLORS = {"Running": "#4c72b0", "Completed": "#55a868", "Failed": "#c44e52"}
ACTIVITY_COLORS = ("#dd8452", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")
QUIET = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))

# --------------------------------------------------------------------------- metrics in-process

_buffered: dict[str, tuple[Runtime, MetricBuffer]] = {}


def _runtime(purpose: str) -> tuple[Runtime, MetricBuffer]:
    """One runtime with a metric buffer per purpose, kept for the kernel's life (re-running a cell reuses it)."""
    if purpose not in _buffered:
        buffer = MetricBuffer(BUFFER_SIZE, duration_format=MetricBufferDurationFormat.SECONDS)
        _buffered[purpose] = (Runtime(telemetry=TelemetryConfig(logging=QUIET, metrics=buffer)), buffer)
    return _buffered[purpose]


@dataclass
class MeteredClient:
    """A client whose runtime records the SDK's metrics in ``buffer`` (drain it with ``retrieve_updates()``)."""

    client: Client
    buffer: MetricBuffer

    def retrieve_updates(self) -> Sequence[Any]:
        return self.buffer.retrieve_updates()


async def metered_client(target: server.Target, purpose: str = "dashboard") -> MeteredClient:
    """A client for ``target`` whose runtime keeps the SDK's metrics in a buffer in this process; updates left from
    an earlier run of the cell are drained first."""
    runtime, buffer = _runtime(purpose)
    client = await asyncio.wait_for(
        Client.connect(target.address, namespace=target.namespace, runtime=runtime, **target.connect_kwargs), 10
    )
    buffer.retrieve_updates()
    return MeteredClient(client, buffer)


async def start_worker(
    course: runtime.Course,
    metered: MeteredClient,
    *,
    task_queue: str,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
) -> runtime.RunningWorker:
    """A background worker on ``metered``'s client (so the SDK records its metrics in the buffer), kept with the
    course's workers: ``course.start_worker``/``stop_worker`` on the same task queue replace or stop it."""
    await course.stop_worker(task_queue)
    worker = Worker(metered.client, task_queue=task_queue, workflows=list(workflows), activities=list(activities))
    task = asyncio.create_task(worker.run(), name=f"metered-worker:{task_queue}")
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure stays in the task, not in stderr
    names = tuple(getattr(x, "__name__", str(x)) for x in [*workflows, *activities])
    running = runtime.RunningWorker(worker, task, task_queue, names, {"workflows": workflows, "activities": activities})
    course.workers[task_queue] = running
    return running


# --------------------------------------------------------------------------- the signals


@dataclass
class Signals:
    """The four signals of one task queue, accumulated from metric updates and visibility counts."""

    task_queue: str
    attempts: Counter[str] = field(default_factory=Counter)  # activity type -> attempts
    failures: Counter[str] = field(default_factory=Counter)  # activity type -> failed attempts
    failed_at: list[tuple[float, str, float]] = field(default_factory=list)  # (when, activity type, how many)
    durations: list[float] = field(default_factory=list)  # seconds, one per finished run
    statuses: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (when, status -> count)

    def add(self, at: float, updates: Iterable[Any], counts: Mapping[str, int] | None = None) -> None:
        for u in updates:
            if u.attributes.get("task_queue") != self.task_queue:
                continue
            name, activity = u.metric.name, u.attributes.get("activity_type", "")
            if name == ATTEMPTS:
                self.attempts[activity] += 1
            elif name == FAILED_ATTEMPTS:
                self.failures[activity] += u.value
                self.failed_at.append((at, activity, u.value))
            elif name == WORKFLOW_DURATION:
                self.durations.append(float(u.value))
        if counts is not None:
            self.statuses.append((at, dict(counts)))

    @property
    def counts(self) -> dict[str, int]:
        """The latest visibility counts, by status."""
        return self.statuses[-1][1] if self.statuses else {}

    def failure_rate(self, activity: str) -> float:
        return self.failures[activity] / self.attempts[activity] if self.attempts[activity] else 0.0

    def activities(self) -> list[str]:
        return sorted(self.attempts, key=lambda a: (-self.attempts[a], a))


async def status_counts(client: Client, query: str, *, running: int | None = None) -> dict[str, int]:
    """``{status: count}`` of the runs ``query`` matches (``GROUP BY ExecutionStatus``, the one grouping a dev
    server's visibility store supports).

    Visibility is eventually consistent: a run whose result you just got can still be listed as Running for a
    moment. With ``running=n`` (you know how many still run, e.g. 0 after awaiting them all) it asks again until it
    lists ``n`` running runs, for at most :data:`SETTLE_S` seconds, then returns what it says."""
    deadline = time.monotonic() + SETTLE_S * wait_scale()
    while True:
        result = await asyncio.wait_for(client.count_workflows(f"{query} GROUP BY ExecutionStatus"), 5)
        counts = {str(g.group_values[0]): g.count for g in result.groups}
        if running is None or counts.get("Running", 0) == running or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    order = {status: n for n, status in enumerate(STATUSES)}  # the same order every time
    return dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


# --------------------------------------------------------------------------- the dashboard


class Dashboard:
    """The four signals of ``task_queue``, redrawn in place while ``async with dashboard:`` runs.

    Every :data:`SAMPLE_S` it drains the metric buffer and asks visibility for the counts by status; every
    :data:`DRAW_S` it redraws, in a thread (the kernel's workers share its event loop). After the block, the figure
    shows the final state, so a headless run (or nbval) keeps the last picture.
    """

    def __init__(self, metered: MeteredClient, task_queue: str, *, title: str) -> None:
        self.metered = metered
        self.task_queue = task_queue
        self.title = title
        self.signals = Signals(task_queue)
        self._task: asyncio.Task[None] | None = None
        self._drawing: asyncio.Task[None] | None = None
        self._handle: Any = None
        self._t0 = 0.0
        self._last_draw = float("-inf")
        self.frames = 0

    @property
    def query(self) -> str:
        return f"TaskQueue = '{self.task_queue}'"

    async def __aenter__(self) -> Dashboard:
        self._t0 = time.monotonic()
        self.metered.retrieve_updates()  # only what happens from now on
        self._task = asyncio.create_task(self._poll())  # the first frame is drawn there: the block starts at once
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._drawing is not None:
            with contextlib.suppress(BaseException):
                await self._drawing
        with contextlib.suppress(Exception):
            await self.sample()
        await self._redraw()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    async def sample(self) -> None:
        counts = await status_counts(self.metered.client, self.query)
        self.signals.add(self._now(), self.metered.retrieve_updates(), counts)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sample()
                drawing = self._drawing is not None and not self._drawing.done()
                if not drawing and self._now() - self._last_draw >= DRAW_S:
                    self._drawing = asyncio.create_task(self._redraw())  # sampling goes on while a frame is drawn
            await asyncio.sleep(SAMPLE_S)

    async def settle(self, *, quiet_for: float = 1.0, stuck_after: int = 5, timeout: float = 25.0) -> bool:
        """Wait (at most ``timeout`` s) until the load is over: no run has closed for ``quiet_for`` s, and every run
        still running is retrying an activity that has failed ``stuck_after - 1`` times in a row (asked of the
        server with ``describe()``, as the UI's pending activities show it). True if it settled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last, since = -1, loop.time()
        while loop.time() < deadline:
            closed = sum(n for status, n in self.signals.counts.items() if status != "Running")
            if closed != last:
                last, since = closed, loop.time()
            elif loop.time() - since >= quiet_for and await self._only_stuck_runs_left(stuck_after):
                return True
            await asyncio.sleep(SAMPLE_S)
        return False

    async def _only_stuck_runs_left(self, stuck_after: int) -> bool:
        client = self.metered.client
        try:
            async for run in client.list_workflows(f"{self.query} AND ExecutionStatus = 'Running'", limit=20):
                desc = await asyncio.wait_for(client.get_workflow_handle(run.id, run_id=run.run_id).describe(), 5)
                if not any(a.attempt >= stuck_after for a in desc.raw_description.pending_activities):
                    return False
        except Exception:
            return False
        return True

    def status_line(self) -> str:
        counts = self.signals.counts
        parts = [f"{counts.get(s, 0)} {s.lower()}" for s in STATUSES] + [
            f"{n} {s.lower()}" for s, n in sorted(counts.items()) if s not in STATUSES
        ]
        return f"{sum(counts.values())} runs on the task queue (visibility): " + ", ".join(parts)

    # ---- drawing -------------------------------------------------------------------------------------------
    async def _redraw(self) -> None:
        """Draw a copy of the signals in a thread: the workers of this kernel share its event loop, and a frame
        takes a moment."""
        self._last_draw = self._now()
        signals, now = copy.deepcopy(self.signals), self._now()
        self._show(await asyncio.to_thread(self.png, signals, now))

    def _show(self, png: bytes | None = None) -> None:
        from helpers import kernel

        if kernel.in_ipython() is None:
            return
        from IPython.display import Image, display

        image = Image(data=png if png is not None else self.png())
        self.frames += 1
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def png(self, signals: Signals | None = None, now: float | None = None) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = self.figure(signals, now)
        FigureCanvasAgg(fig)
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=72)
        return out.getvalue()

    def figure(self, signals: Signals | None = None, now: float | None = None) -> Any:
        """The four panels, for ``signals`` (default: the dashboard's own) at ``now`` s since the start."""
        from matplotlib.figure import Figure

        s = signals if signals is not None else self.signals
        now = now if now is not None else self._now()
        fig = Figure(figsize=(12, 7.6), layout="constrained")
        (runs, durations), (attempts, retries) = fig.subplots(2, 2)
        _draw_statuses(runs, s)
        _draw_durations(durations, s)
        _draw_attempts(attempts, s)
        _draw_retries(retries, s, now)
        fig.suptitle(f"{self.title}  ·  t = {now:.0f} s", fontsize=12)
        return fig


def _draw_statuses(ax: Any, s: Signals) -> None:
    from matplotlib.ticker import MaxNLocator

    times = [t for t, _ in s.statuses]
    for status in STATUSES:
        ax.plot(times, [c.get(status, 0) for _, c in s.statuses], label=status, color=STATUS_COLORS[status], lw=2)
    ax.set_title("Workflows by status · visibility: count_workflows … GROUP BY ExecutionStatus", fontsize=9)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("workflow runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    if s.counts.get("Running"):
        ax.annotate(
            f"{s.counts['Running']} still running",
            (times[-1], s.counts["Running"]),
            xytext=(-150, 40),
            textcoords="offset points",
            fontsize=8,
            color=STATUS_COLORS["Running"],
            arrowprops={"arrowstyle": "->", "color": STATUS_COLORS["Running"]},
        )


def _draw_durations(ax: Any, s: Signals) -> None:
    from matplotlib.ticker import MaxNLocator

    if s.durations:
        width = max(0.1, max(s.durations) / 30)  # 0.1 s bins show the runs' tries apart; at most 30 of them
        ax.hist(s.durations, bins=[i * width for i in range(int(max(s.durations) / width) + 2)], color="#4c72b0")
    ax.set_title(f"Workflow execution duration · SDK: {WORKFLOW_DURATION}", fontsize=9)
    ax.set_xlabel("seconds from start to close (finished runs)")
    ax.set_ylabel("runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8}
    ax.text(
        0.98, 0.95, f"{len(s.durations)} finished", transform=ax.transAxes, ha="right", va="top", fontsize=8, bbox=box
    )


def _draw_attempts(ax: Any, s: Signals) -> None:
    names = s.activities()
    ok = [s.attempts[a] - s.failures[a] for a in names]
    failed = [s.failures[a] for a in names]
    ax.barh(names, ok, color="#55a868", label="succeeded")
    ax.barh(names, failed, left=ok, color="#c44e52", label="failed (retried unless it was the last)")
    for y, a in enumerate(names):
        ax.text(s.attempts[a], y, f"  {s.failure_rate(a):.0%} failed", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_title("Activity failure rate · SDK: …_execution_failed ÷ …_execution_latency", fontsize=9)
    ax.set_xlabel("attempts")
    ax.set_ylabel("activity type")
    ax.set_xlim(0, max((s.attempts[a] for a in names), default=1) * 1.3)
    ax.legend(loc="lower right", fontsize=8)


def _draw_retries(ax: Any, s: Signals, now: float) -> None:
    from matplotlib.ticker import MaxNLocator

    seconds = list(range(int(max(now, 1.0)) + 1))
    bottom = [0.0] * len(seconds)
    for color, activity in zip(ACTIVITY_COLORS, sorted({a for _, a, _ in s.failed_at}), strict=False):
        per_second = [0.0] * len(seconds)
        for t, a, n in s.failed_at:
            if a == activity:
                per_second[min(int(t), len(seconds) - 1)] += n
        ax.bar(seconds, per_second, bottom=bottom, width=0.9, align="edge", color=color, label=activity)
        bottom = [b + n for b, n in zip(bottom, per_second, strict=True)]
    ax.set_title("Retry attempts · SDK: failed activity attempts per second", fontsize=9)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("failed attempts in that second")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(now, 1.0))
    if s.failed_at:
        ax.legend(loc="upper right", fontsize=8)


# --------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class PrometheusEndpoint:
    runtime: Runtime
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


_prometheus: PrometheusEndpoint | None = None


def prometheus_endpoint() -> PrometheusEndpoint:
    """A runtime that serves the SDK's metrics for Prometheus on ``127.0.0.1:<free port>`` (loopback only), kept for
    the kernel's life."""
    global _prometheus
    if _prometheus is None:
        address = f"127.0.0.1:{server.free_port()}"
        runtime = Runtime(telemetry=TelemetryConfig(logging=QUIET, metrics=PrometheusConfig(bind_address=address)))
        _prometheus = PrometheusEndpoint(runtime, address)
    return _prometheus


async def prometheus_client(target: server.Target) -> tuple[Client, PrometheusEndpoint]:
    endpoint = prometheus_endpoint()
    client = await asyncio.wait_for(
        Client.connect(target.address, namespace=target.namespace, runtime=endpoint.runtime, **target.connect_kwargs),
        10,
    )
    return client, endpoint


async def scrape(url: str, *, keep: Callable[[str], bool] = lambda line: True) -> list[str]:
    """``GET url`` (a Prometheus endpoint) and the lines of its text format ``keep`` accepts, sorted."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.read().decode()

    try:
        text = await asyncio.to_thread(get)
    except OSError as err:
        raise CourseError(f"Could not read {url}: {err}") from None
    return sorted(line for line in text.splitlines() if line and keep(line))
