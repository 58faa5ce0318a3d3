"""Per-cell metrics of a Timely-Eval run, computed from trajectories alone (numpy only).

The headline number is the **on-time score**: an episode's score if its answer arrived within the
budget (with the suite's slack), else 0 — a late answer is a failure, which is the benchmark's
premise. Next to it: a 95% confidence interval (Wilson for 0/1 scores, Student t otherwise),
the compliance rate (answered on time), the raw score ignoring time (how much a budget-blind
policy *would* have got), elapsed time mean and p95 (BFCL-style latency columns), tool calls,
turns, generated tokens and the share of time spent generating vs waiting on tools. Metrics are
always recomputed from ``trajectories.jsonl``, so a report never depends on a stale summary.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from timely.types import EndReason, Trajectory
from timely_eval.suite import family_of

Z95 = 1.959963984540054
# Two-sided 95% Student t quantiles by degrees of freedom (1..30), then a few anchors; numpy has
# no t distribution and the table is exact to three decimals.
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
_T95_TAIL = [(40, 2.021), (60, 2.000), (120, 1.980)]


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    if df <= len(_T95):
        return _T95[df - 1]
    prev_df, prev_t = len(_T95), _T95[-1]
    for anchor_df, anchor_t in _T95_TAIL:
        if df <= anchor_df:  # linear in 1/df between anchors is accurate to ~1e-3
            w = (1 / df - 1 / anchor_df) / (1 / prev_df - 1 / anchor_df)
            return anchor_t + w * (prev_t - anchor_t)
        prev_df, prev_t = anchor_df, anchor_t
    return Z95 + (prev_t - Z95) * prev_df / df


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval (95%) for a proportion; (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + Z95**2 / n
    center = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% CI: Wilson when every value is 0 or 1, a t-interval otherwise.

    The interval is clipped to [0, 1] (scores live there); with fewer than two non-binary values
    it is the whole range, which is what one observation honestly says.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return (math.nan, 0.0, 1.0)
    mean = float(x.mean())
    if np.all((x == 0) | (x == 1)):
        lo, hi = wilson(float(x.sum()), n)
        return (mean, lo, hi)
    if n < 2:
        return (mean, 0.0, 1.0)
    half = t95(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return (mean, max(0.0, mean - half), min(1.0, mean + half))


def on_time_score(traj: Trajectory) -> float:
    """The score that counts: the task score if answered within the budget, else 0."""
    return traj.score if traj.compliant else 0.0


def cell_metrics(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Metrics of one cell (any group of episodes).

    Args:
        trajs: the cell's trajectories (at least one).

    Returns:
        A JSON-safe dict: n, score, score_lo, score_hi, raw_score, compliance, mean_elapsed_s,
        p95_elapsed_s, mean_budget_s, mean_gen_s, mean_tool_s, tool_calls, turns, gen_tokens,
        gen_share, tool_share, reward, errors and end_reasons.
    """
    if not trajs:
        raise ValueError("a cell needs at least one trajectory")
    score, lo, hi = mean_ci([on_time_score(t) for t in trajs])
    elapsed = np.array([t.elapsed_s for t in trajs])
    gen = float(sum(t.gen_s for t in trajs))
    tool = float(sum(t.tool_s for t in trajs))
    busy = gen + tool
    ends: dict[str, int] = defaultdict(int)
    for t in trajs:
        ends[str(t.end_reason)] += 1
    return {
        "n": len(trajs),
        "score": score,
        "score_lo": lo,
        "score_hi": hi,
        "raw_score": float(np.mean([t.score for t in trajs])),
        "compliance": float(np.mean([t.compliant for t in trajs])),
        "mean_elapsed_s": float(elapsed.mean()),
        "p95_elapsed_s": float(np.percentile(elapsed, 95)),
        "mean_budget_s": float(np.mean([t.budget_s for t in trajs])),
        "mean_gen_s": gen / len(trajs),
        "mean_tool_s": tool / len(trajs),
        "tool_calls": float(np.mean([t.n_tool_calls for t in trajs])),
        "turns": float(np.mean([len(t.steps) for t in trajs])),
        "gen_tokens": float(np.mean([sum(s.completion_tokens for s in t.steps) for t in trajs])),
        "gen_share": gen / busy if busy > 0 else None,
        "tool_share": tool / busy if busy > 0 else None,
        "reward": float(np.mean([t.reward for t in trajs])),
        "errors": sum(
            t.end_reason in (EndReason.POLICY_ERROR, EndReason.TOOL_SERVER_ERROR) for t in trajs
        ),
        "end_reasons": dict(sorted(ends.items())),
    }


# How a trajectory is placed in a cell; the runner writes these fields into its metadata.
FIELDS: dict[str, Callable[[Trajectory], str]] = {
    "policy": lambda t: str(t.metadata.get("label", t.policy)),
    "family": lambda t: family_of(t.task_id),
    "task": lambda t: t.task_id,
    "latency": lambda t: t.latency,
    "budget": lambda t: str(t.metadata.get("budget_label", f"{t.budget_s:g}s")),
}
CELL = ("policy", "task", "latency", "budget")


def aggregate(trajs: Iterable[Trajectory], by: Sequence[str] = CELL) -> list[dict[str, Any]]:
    """Group trajectories by ``by`` (names in :data:`FIELDS`) and compute each group's metrics.

    Returns:
        One dict per group: the group fields followed by :func:`cell_metrics`, in sorted order.
    """
    unknown = [f for f in by if f not in FIELDS]
    if unknown:
        raise ValueError(f"unknown grouping field(s) {unknown}; use {sorted(FIELDS)}")
    groups: dict[tuple[str, ...], list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[tuple(FIELDS[f](t) for f in by)].append(t)
    return [
        {**dict(zip(by, key, strict=True)), **cell_metrics(groups[key])} for key in sorted(groups)
    ]
