"""The four activity timeouts, as a picture: which interval of an activity's life each one measures."""

from __future__ import annotations

from typing import Any

from helpers.plots import COLORS, RETRIED_STYLE

# One activity with two attempts, in made-up time units: (queued, started, ended) per attempt, the retry wait,
# and the heartbeats of each attempt.
ATTEMPTS = [(0.0, 0.7, 3.5), (4.5, 5.0, 8.4)]
HEARTBEATS = [[1.1, 1.6, 2.1], [5.4, 5.9, 6.4, 6.9, 7.4, 7.9]]

# name, colour, the spans it measures, what it catches
TIMEOUTS: list[tuple[str, str, list[tuple[float, float]], str]] = [
    (
        "schedule_to_start_timeout",
        "#8172b2",
        [(0.0, 0.7), (4.5, 5.0)],
        "each attempt's wait in the task queue\ncatches: no worker polls the queue",
    ),
    (
        "start_to_close_timeout",
        "#4c72b0",
        [(0.7, 3.5), (5.0, 8.4)],
        "one attempt, from pick-up to result\ncatches: a hung call, a crashed worker",
    ),
    (
        "heartbeat_timeout",
        "#dd8452",
        [(2.1, 3.5)],
        "the longest silence between heartbeats\ncatches: a dead worker in seconds, mid-task",
    ),
    (
        "schedule_to_close_timeout",
        "#c44e52",
        [(0.0, 8.4)],
        "the whole activity: all attempts and waits\ncatches: retrying for longer than it's worth",
    ),
]


def diagram(ax: Any = None) -> Any:
    """Draw one activity that fails once and succeeds on its second attempt, with the four timeouts below it."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    show = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4.6))
    top = len(TIMEOUTS) + 0.5
    activity_color = COLORS["activity"]
    for i, (queued, started, ended) in enumerate(ATTEMPTS):
        ax.barh(top, started - queued, left=queued, height=0.5, color=activity_color, alpha=0.3)
        color = COLORS["failed"] if i == 0 else activity_color
        ax.barh(top, ended - started, left=started, height=0.5, color=color, edgecolor="black", linewidth=0.4)
        ax.text((started + ended) / 2, top, f"attempt {i + 1}", ha="center", va="center", fontsize=9, color="white")
        for beat in HEARTBEATS[i]:
            ax.plot([beat, beat], [top + 0.3, top + 0.45], color="black", linewidth=1.2)
    retry_from, retry_to = ATTEMPTS[0][2], ATTEMPTS[1][0]
    ax.barh(top, retry_to - retry_from, left=retry_from, height=0.5, edgecolor="#555555", **RETRIED_STYLE)
    ax.text(0, top - 0.32, "scheduled", ha="left", va="top", fontsize=8)
    ax.annotate("attempt 1 silent:\ntimed out", (ATTEMPTS[0][2], top + 0.28), fontsize=8, ha="center", va="bottom")
    ax.annotate("completed", (ATTEMPTS[1][2], top + 0.28), fontsize=8, ha="center", va="bottom")

    for row, (name, color, spans, what) in enumerate(TIMEOUTS):
        y = len(TIMEOUTS) - 1 - row
        for start, end in spans:
            ax.annotate(
                "",
                xy=(start, y),
                xytext=(end, y),
                arrowprops={"arrowstyle": "<->", "color": color, "linewidth": 1.8, "shrinkA": 0, "shrinkB": 0},
            )
            for x in (start, end):
                ax.plot([x, x], [y - 0.15, y + 0.15], color=color, linewidth=1)
        ax.text(spans[0][0], y + 0.18, name, color=color, fontsize=9, fontweight="bold", va="bottom")
        ax.text(9.0, y, what, fontsize=8.5, va="center")

    ax.set_xlim(-0.3, 13.6)
    ax.set_ylim(-0.5, top + 0.9)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_xlabel("time →  (one activity: attempt 1 times out, a retry wait, attempt 2 completes)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.legend(
        handles=[
            Patch(color=activity_color, alpha=0.3, label="waiting in the task queue"),
            Patch(color=activity_color, label="running on a worker"),
            Patch(edgecolor="#555555", label="retry wait (backoff)", **RETRIED_STYLE),
            Line2D([], [], color="black", marker="|", linestyle="none", markersize=9, label="heartbeat"),
        ],
        loc="upper right",
        fontsize=8,
        frameon=False,
    )
    ax.set_title("The four activity timeouts: which interval each one measures")
    if show:
        plt.tight_layout()
        plt.show()  # and return nothing: a returned Axes would print its repr under the picture
        return None
    return ax
