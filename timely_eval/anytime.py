"""The anytime view and the Figure-3 view of a budget sweep.

A policy that is aware of time should do well at every budget, not only at the one it was tuned
for. AnytimeReasoner summarises a sweep over token budgets by the area under the score-vs-budget
curve; Timely-Eval does the same over **budget multipliers** (a budget of ``x2`` is twice a
reference time in seconds), so one number says how well a policy turns extra time into score.
Next to it sits the paper's Figure 3: tool calls and generated tokens against the multiplier,
with a Spearman rank correlation per policy, which says whether a policy *does more* when given
more time.

Definitions (docs/timely-eval.md repeats them):

* **Curve.** For a group of episodes (a policy in a family, or a policy on one task) under one
  budget protocol, the point at multiplier ``m`` is the mean on-time score of the group's
  episodes at ``m`` (pooled over tasks, latencies, seeds and samples).
* **AUC.** The trapezoid area under the curve over the multipliers present, divided by their
  range: ``AUC = sum_i (m_{i+1} - m_i) (s_i + s_{i+1}) / 2 / (m_k - m_1)``. It lies in [0, 1]
  (1: full score at every budget) and is the curve's mean height, so multipliers that are not
  evenly spaced are weighted by the span they cover. Fewer than two multipliers give no AUC
  (``None``, shown as no column), never a zero.
* **AUC interval.** An *instance* is one (task, difficulty, seed, latency, sample); its own AUC
  uses the same formula on its own scores. When every instance was played at every multiplier,
  the group AUC is exactly the mean of the instance AUCs, and the 95% interval is
  :func:`timely_eval.stats.score_ci` over them (Wilson when all are 0 or 1, t otherwise); only
  complete instances enter the interval.
* **Rank correlation.** ``rho`` is Spearman's rank correlation (``scipy.stats.spearmanr``)
  between the multiplier and the curve's mean tool calls (or tokens): 1 when the mean rises at
  every step. ``rho_episodes`` (with its p-value) correlates the multiplier with each
  episode's own count, which instance-to-instance variance dilutes. A quantity that does not
  change at all has no rank correlation (``None``).

Budget protocols are told apart by the budget label (:func:`timely_eval.plan.parse_budget`):
``x2`` is a multiple of each policy's own unconstrained time (the reference release's
protocol), ``x2@oracle`` a multiple of the scripted oracle's time on the same instance and
latency, the same seconds for every policy. Absolute budgets (``30s``) are not on a multiplier
axis and are left out of both views.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from timely.types import Trajectory
from timely_eval.metrics import FIELDS, on_time_score
from timely_eval.plan import parse_budget
from timely_eval.stats import score_ci

# What each protocol's multiplier is a multiple of, for legends and report notes.
PROTOCOL_NOTES: dict[str, str] = {
    "policy": "multiples of each policy's own unconstrained time on the item (per-policy)",
    "oracle": "multiples of the scripted oracle's time on the same instance and latency "
    "(one shared reference: the same seconds for every policy)",
}


def normalized_auc(points: Iterable[tuple[float, float]]) -> float | None:
    """Area under a piecewise-linear curve divided by its x range (its mean height).

    Args:
        points: (multiplier, score) pairs; a multiplier given twice keeps its mean score.

    Returns:
        The normalised trapezoid area, or None with fewer than two distinct multipliers.
    """
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, y in points:
        by_x[float(x)].append(float(y))
    xs = sorted(by_x)
    if len(xs) < 2:
        return None
    ys = [float(np.mean(by_x[x])) for x in xs]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its p-value; (None, None) when either side is constant or too short.

    scipy returns NaN with a warning on constant input; a report says "undefined" instead.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def _instance(t: Trajectory) -> tuple[Any, ...]:
    return (t.task_id, t.metadata.get("difficulty"), t.seed, t.latency, t.sample)


def _multiplier(t: Trajectory) -> float:
    parsed = parse_budget(FIELDS["budget"](t))
    if parsed is None:
        raise ValueError(f"budget {FIELDS['budget'](t)!r} is not a multiplier")
    return parsed[1]


def _tokens(t: Trajectory) -> float:
    return float(sum(s.completion_tokens for s in t.steps))


def _curve(trajs: list[Trajectory]) -> list[dict[str, Any]]:
    """One point per multiplier: mean on-time score (with its interval), compliance, effort."""
    by_m: dict[float, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        by_m[_multiplier(t)].append(t)
    out = []
    for m in sorted(by_m):
        group = by_m[m]
        scores = [on_time_score(t) for t in group]
        ci = score_ci(scores)
        out.append(
            {
                "multiplier": m,
                "budget": FIELDS["budget"](group[0]),
                "n": len(group),
                "score": float(np.mean(scores)),
                "score_lo": ci.lo,
                "score_hi": ci.hi,
                "compliance": float(np.mean([t.compliant for t in group])),
                "mean_budget_s": float(np.mean([t.budget_s for t in group])),
                "tool_calls": float(np.mean([t.n_tool_calls for t in group])),
                "gen_tokens": float(np.mean([_tokens(t) for t in group])),
            }
        )
    return out


def _auc_interval(trajs: list[Trajectory], multipliers: list[float]) -> dict[str, Any]:
    """The interval of the AUC over complete instances (see the module docstring)."""
    per: dict[tuple[Any, ...], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        per[_instance(t)][_multiplier(t)].append(on_time_score(t))
    wanted = set(multipliers)
    aucs = [
        normalized_auc((m, float(np.mean(v))) for m, v in curve.items())
        for curve in per.values()
        if set(curve) == wanted
    ]
    values = [a for a in aucs if a is not None]
    if not values:
        return {"auc_lo": None, "auc_hi": None, "auc_ci": "none", "instances": 0}
    ci = score_ci(values)
    return {"auc_lo": ci.lo, "auc_hi": ci.hi, "auc_ci": ci.method, "instances": len(values)}


def _effort(curve: list[dict[str, Any]], trajs: list[Trajectory]) -> dict[str, Any]:
    """Figure-3 numbers: rank correlations of tool calls and tokens with the multiplier."""
    ms = [p["multiplier"] for p in curve]
    xs = [_multiplier(t) for t in trajs]
    counts: dict[str, Callable[[Trajectory], float]] = {
        "tool_calls": lambda t: float(t.n_tool_calls),
        "gen_tokens": _tokens,
    }
    out: dict[str, Any] = {}
    for name, per_episode in counts.items():
        rho, _ = rank_correlation(ms, [p[name] for p in curve])
        rho_e, p_e = rank_correlation(xs, [per_episode(t) for t in trajs])
        out[name] = {"rho": rho, "rho_episodes": rho_e, "p_episodes": p_e}
    return out


def anytime_rows(
    trajs: Iterable[Trajectory], by: Sequence[str] = ("policy",)
) -> list[dict[str, Any]]:
    """The anytime and Figure-3 rows of a set of episodes, one per group and budget protocol.

    Args:
        trajs: episodes (any budgets; only multiplier budgets are used).
        by: grouping fields of :data:`timely_eval.metrics.FIELDS` (``policy``; ``policy, task``).

    Returns:
        Sorted dicts: the group fields, ``protocol`` (policy | oracle), ``multipliers``,
        ``curve`` (points, see :func:`_curve`), ``auc`` (None below two multipliers) with
        ``auc_lo``, ``auc_hi``, ``auc_ci`` and ``instances``, ``n``, and ``effort``
        (``tool_calls`` and ``gen_tokens``: ``rho``, ``rho_episodes``, ``p_episodes``).
    """
    groups: dict[tuple[str, ...], list[Trajectory]] = defaultdict(list)
    for t in trajs:
        parsed = parse_budget(FIELDS["budget"](t))
        if parsed is None:
            continue
        groups[(*(FIELDS[f](t) for f in by), parsed[0])].append(t)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        curve = _curve(group)
        ms = [p["multiplier"] for p in curve]
        auc = normalized_auc((p["multiplier"], p["score"]) for p in curve)
        interval = (
            _auc_interval(group, ms)
            if auc is not None
            else {"auc_lo": None, "auc_hi": None, "auc_ci": "none", "instances": 0}
        )
        rows.append(
            {
                **dict(zip(by, key[:-1], strict=True)),
                "protocol": key[-1],
                "multipliers": ms,
                "n": len(group),
                "auc": auc,
                **interval,
                "curve": curve,
                "effort": _effort(curve, group),
            }
        )
    return rows


def instance_aucs(
    trajs: Iterable[Trajectory],
) -> dict[tuple[Any, ...], tuple[tuple[float, ...], float]]:
    """Each instance's own AUC, for pairing two runs (``timely compare``).

    Returns:
        (family, protocol, task, difficulty, seed, latency, sample) -> (the multipliers it was
        played at, its AUC); instances played at fewer than two multipliers are left out.
    """
    per: dict[tuple[Any, ...], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        parsed = parse_budget(FIELDS["budget"](t))
        if parsed is not None:
            per[(FIELDS["family"](t), parsed[0], *_instance(t))][parsed[1]].append(on_time_score(t))
    out = {}
    for key, curve in per.items():
        auc = normalized_auc((m, float(np.mean(v))) for m, v in curve.items())
        if auc is not None:
            out[key] = (tuple(sorted(curve)), auc)
    return out


def has_auc(rows: Iterable[dict[str, Any]]) -> bool:
    """Whether any row has an AUC (a sweep of at least two multipliers)."""
    return any(r.get("auc") is not None for r in rows)


def protocols(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The budget protocols with an AUC among ``rows``: policy first, then oracle."""
    found = {r["protocol"] for r in rows if r.get("auc") is not None}
    return [p for p in ("policy", "oracle") if p in found]


def auc_by_protocol(rows: Iterable[dict[str, Any]], policy: str) -> dict[str, dict[str, Any]]:
    """One policy's AUC per protocol: ``{protocol: {auc, auc_lo, auc_hi}}`` (overview rows)."""
    return {
        r["protocol"]: {"auc": r["auc"], "auc_lo": r["auc_lo"], "auc_hi": r["auc_hi"]}
        for r in rows
        if r["policy"] == policy and r.get("auc") is not None
    }
