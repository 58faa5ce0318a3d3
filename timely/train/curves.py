"""Training curves: one PNG of a run's metrics JSONL, redrawn at every checkpoint and at the end.

Drawn on a bare :class:`matplotlib.figure.Figure` (the Agg canvas), never through pyplot, so it
picks no GUI backend and touches no global state; written to a temporary file and renamed, so a
reader never sees half a PNG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from timely.train.rl_record import BUDGET_BUCKETS, NO_LIMIT_BUCKET, RATIO_TOLERANCE

BUCKETS = [name for name, _, _ in BUDGET_BUCKETS] + [NO_LIMIT_BUCKET]


def _by_bucket(metric: str) -> list[tuple[str, str]]:
    return [(f"{metric}_{bucket}", bucket) for bucket in BUCKETS]


# (title, [(metric key, label)]) per panel; a key missing from every line leaves its curve out.
# The last row splits rollouts by budget bucket: whether the policy learns time shows there
# (on time in short, more calls and tokens in long), not in the batch means.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "reward",
        [("reward_mean", "mean"), ("reward_std", "std"), ("zero_std_groups", "zero-spread groups")],
    ),
    (
        "outcomes",
        [
            ("score", "score"),
            ("on_time_rate", "on time"),
            ("answered_rate", "answered"),
            ("time_used", "t/T (limited)"),
        ],
    ),
    ("policy", [("entropy", "entropy"), ("kl_old", "KL to sampler"), ("kl_ref", "KL to ref")]),
    ("|ratio - 1| at the first update", [("ratio_dev", "mean")]),
    ("clipped tokens", [("clip_frac", "fraction")]),
    ("tokens per episode", [("completion_tokens", "sampled")]),
    ("per episode", [("turns", "turns"), ("tool_calls", "tool calls")]),
    ("seconds per batch", [("rollout_s", "rollout"), ("update_s", "update")]),
    ("on time, by budget", _by_bucket("on_time_rate")),
    ("score, by budget", _by_bucket("score")),
    ("tool calls, by budget", _by_bucket("tool_calls")),
    ("tokens per episode, by budget", _by_bucket("completion_tokens")),
]
LOG_PANELS = {"|ratio - 1| at the first update"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The metrics lines of a run (a torn last line is skipped)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_curves(metrics: str | Path, png: str | Path) -> Path | None:
    """Draw the panels of :data:`PANELS` from ``metrics`` into ``png``; None without data."""
    from matplotlib.figure import Figure

    rows = read_metrics(metrics)
    if not rows:
        return None
    steps = [r.get("step", i + 1) for i, r in enumerate(rows)]
    fig = Figure(figsize=(18, 12))
    fig.subplots_adjust(left=0.04, right=0.99, top=0.96, bottom=0.05, wspace=0.22, hspace=0.35)
    axes = fig.subplots(3, 4).ravel()
    for ax, (title, curves) in zip(axes, PANELS, strict=True):
        for key, label in curves:
            points = [(s, r[key]) for s, r in zip(steps, rows, strict=True) if _number(r.get(key))]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if title in LOG_PANELS and ax.lines:
            ax.axhline(RATIO_TOLERANCE, color="red", linestyle="--", label="tolerance")
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="upper left")  # "best" costs a search per redraw
    png = Path(png)
    tmp = png.with_name(f".{png.stem}.tmp{png.suffix}")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, png)
    return png


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
