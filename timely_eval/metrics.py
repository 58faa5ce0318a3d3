"""Per-cell metrics of a Timely-Eval run, computed from trajectories alone.

The headline number is the **on-time score**: an episode's score if its answer arrived within the
budget (with the suite's slack), else 0 — a late answer is a failure, which is the benchmark's
premise. Next to it: a 95% confidence interval (Wilson for 0/1 scores, Student t otherwise; see
:mod:`timely_eval.stats`), the compliance rate (answered on time, with its Wilson interval), the
raw score ignoring time (how much a budget-blind policy *would* have got), elapsed time mean (t
interval) and p95 (bootstrap interval) (BFCL-style latency columns), tool calls,
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
from timely_eval.stats import p95_ci, rate_ci, score_ci, t_ci
from timely_eval.suite import family_of


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% CI of scores: Wilson when every value is 0 or 1, a t-interval otherwise.

    The interval is clipped to [0, 1] (scores live there); with fewer than two non-binary values
    it is the whole range, which is what one observation honestly says. See
    :mod:`timely_eval.stats` for why each interval.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, 0.0, 1.0)
    ci = score_ci(x)
    return (float(x.mean()), float(ci.lo), float(ci.hi))  # type: ignore[arg-type]


def on_time_score(traj: Trajectory) -> float:
    """The score that counts: the task score if answered within the budget, else 0."""
    return traj.score if traj.compliant else 0.0


def pass_at_k(trajs: Sequence[Trajectory]) -> tuple[int, float | None]:
    """pass@k over the instances of a group, for binary tasks played several times (epochs).

    An instance is a task, difficulty, seed, latency and budget; its samples are the epochs.
    With n samples of which c solved it on time, pass@k = 1 - C(n-c, k) / C(n, k) (the unbiased
    estimator of Chen et al., 2021), averaged over instances, at k = the fewest samples any
    instance has.

    Returns:
        (k, pass@k); pass@k is None when k is 1 or an on-time score is neither 0 nor 1.
    """
    by_instance: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for t in trajs:
        instance = (t.task_id, t.metadata.get("difficulty"), t.seed, t.latency, FIELDS["budget"](t))
        by_instance[instance].append(on_time_score(t))
    k = min((len(v) for v in by_instance.values()), default=0)
    binary = all(s in (0.0, 1.0) for v in by_instance.values() for s in v)
    if k < 2 or not binary:
        return k, None
    rates = [
        1.0 - math.comb(len(v) - int(sum(v)), k) / math.comb(len(v), k)
        for v in by_instance.values()
    ]
    return k, float(np.mean(rates))


def cell_metrics(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Metrics of one cell (any group of episodes).

    Args:
        trajs: the cell's trajectories (at least one).

    Returns:
        A JSON-safe dict: n, score, score_lo, score_hi, score_ci (the interval's method),
        raw_score, compliance, compliance_lo, compliance_hi, mean_elapsed_s, mean_elapsed_lo,
        mean_elapsed_hi, p95_elapsed_s, p95_elapsed_lo, p95_elapsed_hi (the elapsed intervals
        are None for a single episode), mean_budget_s, mean_gen_s, mean_tool_s, tool_calls,
        turns, gen_tokens, gen_share, tool_share, reward, errors, end_reasons, and epochs
        and pass_at_k (see :func:`pass_at_k`; None unless binary and played several times).
    """
    if not trajs:
        raise ValueError("a cell needs at least one trajectory")
    scores = [on_time_score(t) for t in trajs]
    score = score_ci(scores)
    on_time = sum(t.compliant for t in trajs)
    compliance = rate_ci(on_time, len(trajs))
    elapsed = np.array([t.elapsed_s for t in trajs])
    mean_elapsed, p95_elapsed = t_ci(elapsed, bounds=(0.0, math.inf)), p95_ci(elapsed)
    gen = float(sum(t.gen_s for t in trajs))
    tool = float(sum(t.tool_s for t in trajs))
    busy = gen + tool
    ends: dict[str, int] = defaultdict(int)
    for t in trajs:
        ends[str(t.end_reason)] += 1
    return {
        "n": len(trajs),
        "score": float(np.mean(scores)),
        "score_lo": score.lo,
        "score_hi": score.hi,
        "score_ci": score.method,
        "raw_score": float(np.mean([t.score for t in trajs])),
        "compliance": on_time / len(trajs),
        "compliance_lo": compliance.lo,
        "compliance_hi": compliance.hi,
        "mean_elapsed_s": float(elapsed.mean()),
        "mean_elapsed_lo": mean_elapsed.lo if mean_elapsed.method != "none" else None,
        "mean_elapsed_hi": mean_elapsed.hi if mean_elapsed.method != "none" else None,
        "p95_elapsed_s": float(np.percentile(elapsed, 95)),
        "p95_elapsed_lo": p95_elapsed.lo,
        "p95_elapsed_hi": p95_elapsed.hi,
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
        **dict(zip(("epochs", "pass_at_k"), pass_at_k(trajs), strict=True)),
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
