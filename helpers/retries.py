"""Retry policies: the backoff formula, its schedule next to real attempt times, and a widget to explore it.

Temporal waits ``initial_interval × backoff_coefficient^(n-1)``, at most ``maximum_interval`` (default
100 × ``initial_interval``), before retry ``n``; ``maximum_attempts=0`` (the default) means no limit. The server
keeps only an activity's *last* attempt in the history, so to see when every attempt ran, the activity records its
own start times (``activity.info().attempt`` and a clock) and :func:`plot_attempts` draws them over the formula.
"""

from __future__ import annotations

import html
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from helpers.history import text_table
from helpers.widgets import TextFallback

UNLIMITED_SHOWN = 12  # attempts drawn for a policy without maximum_attempts


def maximum_interval(policy: RetryPolicy) -> timedelta:
    return policy.maximum_interval or policy.initial_interval * 100


def delays(policy: RetryPolicy, attempts: int) -> list[float]:
    """Seconds waited before attempts 2 … ``attempts`` (each previous attempt failing at once)."""
    cap = maximum_interval(policy).total_seconds()
    first = policy.initial_interval.total_seconds()
    return [min(first * policy.backoff_coefficient ** (n - 2), cap) for n in range(2, attempts + 1)]


def start_times(policy: RetryPolicy, attempts: int) -> list[float]:
    """When each attempt starts, in seconds after the first, if every attempt fails at once."""
    times = [0.0]
    for delay in delays(policy, attempts):
        times.append(times[-1] + delay)
    return times


def attempts_shown(policy: RetryPolicy, limit: int = UNLIMITED_SHOWN) -> int:
    return policy.maximum_attempts if 0 < policy.maximum_attempts <= limit else limit


def fmt(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def describe(policy: RetryPolicy) -> str:
    """``RetryPolicy(initial_interval=0.1 s, backoff_coefficient=2, maximum_interval=1 s, maximum_attempts=6)``."""
    cap = "default: " + fmt(maximum_interval(policy).total_seconds()) if policy.maximum_interval is None else None
    parts = [
        f"initial_interval={fmt(policy.initial_interval.total_seconds())}",
        f"backoff_coefficient={policy.backoff_coefficient:g}",
        f"maximum_interval={cap or fmt(maximum_interval(policy).total_seconds())}",
        f"maximum_attempts={policy.maximum_attempts or 'unlimited'}",
    ]
    if policy.non_retryable_error_types:
        parts.append(f"non_retryable_error_types={list(policy.non_retryable_error_types)}")
    return f"RetryPolicy({', '.join(parts)})"


@dataclass(frozen=True)
class Schedule:
    """A policy's schedule as a table: attempt, wait before it, start time."""

    policy: RetryPolicy
    attempts: int

    def rows(self) -> list[tuple[str, str, str]]:
        starts = start_times(self.policy, self.attempts)
        waits = [0.0, *delays(self.policy, self.attempts)]
        return [(str(n + 1), fmt(w) if n else "-", fmt(s)) for n, (w, s) in enumerate(zip(waits, starts, strict=True))]

    def ending(self) -> str:
        if self.policy.maximum_attempts and self.policy.maximum_attempts <= self.attempts:
            return f"then it gives up (maximum_attempts={self.policy.maximum_attempts})."
        cap = fmt(maximum_interval(self.policy).total_seconds())
        return f"… and so on, one attempt every {cap} at most, forever (maximum_attempts=0 means no limit)."

    def __repr__(self) -> str:
        return text_table(("attempt", "waits", "starts at"), self.rows()) + "\n" + self.ending()


def schedule(policy: RetryPolicy, attempts: int | None = None) -> Schedule:
    """The schedule of ``policy`` (its first ``attempts``; default: all, or the first 12 if unlimited)."""
    return Schedule(policy, attempts or attempts_shown(policy))


# --------------------------------------------------------------------------- pictures


def plot_attempts(measured: Sequence[float], policy: RetryPolicy, *, title: str | None = None, ax: Any = None) -> Any:
    """Real attempt start times (seconds after the first) on one row, the formula's on another, gaps labelled."""
    import matplotlib.pyplot as plt

    show = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3))
    formula = start_times(policy, len(measured))
    rows = {
        "formula": (1.0, formula, "#4c72b0", "o", 1),
        "measured": (0.0, list(measured), "#c44e52", "s", -1),
    }
    for label, (y, xs, color, marker, side) in rows.items():
        ax.plot(xs, [y] * len(xs), color=color, linewidth=0.8, label=label)
        ax.plot(xs, [y] * len(xs), color=color, marker=marker, linestyle="none", markersize=13)
        for n, x in enumerate(xs, start=1):
            ax.text(x, y, str(n), ha="center", va="center", fontsize=7, color="white", fontweight="bold")
        for n, (a, b) in enumerate(itertools.pairwise(xs)):
            offset = side * (0.2 if n % 2 == 0 else 0.36)
            ax.text((a + b) / 2, y + offset, f"+{b - a:.2g} s", ha="center", va="center", fontsize=7.5, color=color)
    for a, b in zip(formula, measured, strict=True):
        ax.plot([a, b], [0.9, 0.1], color="#999999", linewidth=0.6, linestyle=":")
    ax.set_yticks([0.0, 1.0], ["measured\n(recorded by\nthe activity)", "formula\n(RetryPolicy)"])
    ax.set_ylim(-0.6, 1.6)
    end = max([*formula, *measured, 0.1])
    ax.set_xlim(-0.04 * end, end * 1.05)
    ax.set_xlabel("seconds since attempt 1 started  (circles and squares: attempt numbers; +x s: the gap)")
    ax.grid(axis="x", alpha=0.3)
    heading = title or "When each attempt started: the backoff formula and the real attempts"
    ax.set_title(f"{heading}\n{describe(policy)}", fontsize=9.5)
    if show:
        plt.tight_layout()
        plt.show()  # and return nothing: a returned Axes would print its repr under the picture
        return None
    return ax


def plot_schedule(policy: RetryPolicy, *, ax: Any = None) -> Any:
    """Bars: the wait before each attempt; a line: when it starts."""
    import matplotlib.pyplot as plt

    show = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    n = attempts_shown(policy)
    waits = [0.0, *delays(policy, n)]
    starts = start_times(policy, n)
    xs = list(range(1, n + 1))
    ax.bar(xs, waits, color="#4c72b0", alpha=0.8, label="wait before the attempt")
    ax.set_xlabel("attempt" + (" (unlimited: first 12 shown)" if not policy.maximum_attempts else ""))
    ax.set_ylabel("wait (s)")
    ax.set_xticks(xs)
    other = ax.twinx()
    other.plot(xs, starts, color="#c44e52", marker="o", label="starts at")
    other.set_ylabel("starts at (s after attempt 1)")
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    ax.set_title(describe(policy), fontsize=9)
    if show:
        plt.tight_layout()
        plt.show()  # and return nothing: a returned Axes would print its repr under the picture
        return None
    return ax


# --------------------------------------------------------------------------- explorer


class RetryExplorer(TextFallback):
    """Sliders for a policy's four numbers; shows its schedule as a chart and the ``RetryPolicy(...)`` to paste.

    Its plain-text form (what nbval compares and a terminal shows) is a fixed sentence: nothing needs a click.
    """

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._widget: Any = None

    def summary(self) -> str:
        return (
            "Retry policy explorer: sliders for initial_interval, backoff_coefficient, maximum_interval and "
            "maximum_attempts; the chart shows when each attempt would start, the code line below it the policy."
        )

    def __repr__(self) -> str:
        return self.summary()

    def code(self) -> str:
        p = self.policy
        parts = [
            f"initial_interval=timedelta(seconds={p.initial_interval.total_seconds():g})",
            f"backoff_coefficient={p.backoff_coefficient:g}",
            f"maximum_interval=timedelta(seconds={maximum_interval(p).total_seconds():g})",
            f"maximum_attempts={p.maximum_attempts}",
        ]
        return f"RetryPolicy({', '.join(parts)})"

    def png(self) -> bytes:
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.5, 2.8))
        ax = fig.subplots()
        plot_schedule(self.policy, ax=ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()

    def set(self, **changes: Any) -> None:
        """Change the policy (what moving a slider does), e.g. ``set(backoff_coefficient=3)``."""
        for key in ("initial_interval", "maximum_interval"):
            if isinstance(changes.get(key), int | float):
                changes[key] = timedelta(seconds=changes[key])
        self.policy = replace(self.policy, **changes)
        self._refresh()

    def _build(self) -> Any:
        import ipywidgets as w

        p = self.policy
        style = {"description_width": "150px"}
        layout = w.Layout(width="480px")
        self._sliders = {
            "initial_interval": w.FloatLogSlider(
                value=p.initial_interval.total_seconds(), base=10, min=-1, max=1.5, step=0.05, readout_format=".2g"
            ),
            "backoff_coefficient": w.FloatSlider(value=p.backoff_coefficient, min=1.0, max=4.0, step=0.1),
            "maximum_interval": w.FloatLogSlider(
                value=maximum_interval(p).total_seconds(), base=10, min=-0.5, max=3, step=0.05, readout_format=".3g"
            ),
            "maximum_attempts": w.IntSlider(value=p.maximum_attempts, min=0, max=12),
        }
        for name, slider in self._sliders.items():
            slider.description = name + (" (0 = no limit)" if name == "maximum_attempts" else "")
            slider.style = style
            slider.layout = layout
            slider.observe(lambda change, name=name: self.set(**{name: change["new"]}), names="value")
        self._image = w.Image(format="png")
        self._text = w.HTML()
        self._refresh()
        return w.VBox([*self._sliders.values(), self._image, self._text])

    def _refresh(self) -> None:
        if self._widget is None and not hasattr(self, "_image"):
            return
        self._image.value = self.png()
        rows = schedule(self.policy).rows()
        last = rows[-1]
        self._text.value = (
            f"<div>attempt {last[0]} starts {last[2]} after the first; "
            f"{html.escape(schedule(self.policy).ending())}</div>"
            f"<pre>{html.escape(self.code())}</pre>"
        )


def last_attempts(history: Any) -> str:
    """Per activity in a history: the attempt number and last failure its ``ActivityTaskStarted`` event records.

    That is all a history keeps of earlier attempts: one started event, for the last attempt.
    """
    from temporalio.api.enums.v1 import EventType

    names: dict[int, str] = {}
    lines = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            text = f"{names.get(attrs.scheduled_event_id, 'activity')}: started event of attempt {attrs.attempt}"
            if attrs.HasField("last_failure"):
                text += f", last failure: {attrs.last_failure.message!r}"
            lines.append(text)
    return "\n".join(lines)
