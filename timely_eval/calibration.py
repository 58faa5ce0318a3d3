"""Relative budgets: the reference release's protocol of budgets as multiples of a policy's time.

A calibration pass plays each policy on each item (task, seed) at each tool latency with a
budget so large it never binds, through the same runner and loop as the eval (its trajectories
are recorded in the run directory and resumed like any other). A relative budget ``xM`` for that
item is then ``M x`` the measured elapsed time, floored at ``calibration.min_budget_s``. Games use
the walkthrough instead: ``M x reference_steps x`` the policy's mean time per step at that
latency, because an unconstrained game episode is not a meaningful time (a model may wander until
its turn limit); tasks that expose no ``reference_steps`` fall back to the elapsed rule.

The shared-reference protocol (``budgets.reference: oracle``, labels ``x2@oracle``) uses the same
pass with one player: the reference policy (the scripted oracle) plays each (task, seed,
latency) once under the label ``reference``, and every policy's ``xM@oracle`` budget on that item
is ``M x`` its elapsed time, so all rows get the same seconds. The oracle follows the
walkthrough, so its elapsed time is the meaningful one in every family (the steps rule would
only drop its answer turn), and it is rounded *up* to the microsecond so that the reference
itself is on time at ``x1``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from timely.types import Trajectory
from timely_eval.plan import BudgetResolver, EpisodeItem
from timely_eval.suite import REFERENCE_LABEL, Suite, by_family


def _cell(traj: Trajectory) -> tuple[str, str, str]:
    return (str(traj.metadata.get("label", traj.policy)), traj.task_id, traj.latency)


def mean_step_seconds(records: Iterable[Trajectory]) -> dict[tuple[str, str, str], float]:
    """Mean seconds per model turn, by (policy label, task id, latency)."""
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for t in records:
        if t.steps:
            per[_cell(t)].append(t.elapsed_s / len(t.steps))
    return {k: float(np.mean(v)) for k, v in per.items()}


def relative_budgets(suite: Suite, records: dict[str, Trajectory]) -> BudgetResolver:
    """A resolver for :func:`timely_eval.plan.plan_eval` over the calibration records.

    Args:
        suite: the suite (calibration settings).
        records: calibration trajectories by episode key.

    Returns:
        ``(calibration item, multiplier) -> seconds``, or None when the item was not calibrated.
    """
    step_s = mean_step_seconds(records.values())
    floor = suite.calibration.min_budget_s

    def resolve(item: EpisodeItem, multiplier: float) -> float | None:
        traj = records.get(item.key)
        if traj is None:
            return None
        base = traj.elapsed_s
        if item.policy == REFERENCE_LABEL:
            return max(floor, math.ceil(multiplier * base * 1e6) / 1e6)
        mode = by_family(suite.calibration.mode, item.task_id, "elapsed")
        ref_steps = traj.metadata.get("reference_steps")
        if mode == "steps" and isinstance(ref_steps, int | float) and ref_steps > 0:
            per_step = step_s.get(_cell(traj))
            if per_step:
                base = float(ref_steps) * per_step
        return round(max(floor, multiplier * base), 6)

    return resolve


def calibration_summary(records: Iterable[Trajectory]) -> list[dict[str, object]]:
    """Calibrated time by (policy, task, latency): mean and max elapsed, mean step time, n."""
    per: dict[tuple[str, str, str], list[Trajectory]] = defaultdict(list)
    for t in records:
        per[_cell(t)].append(t)
    out: list[dict[str, object]] = []
    for (label, task, latency), trajs in sorted(per.items()):
        elapsed = [t.elapsed_s for t in trajs]
        steps = [t.elapsed_s / len(t.steps) for t in trajs if t.steps]
        out.append(
            {
                "policy": label,
                "task": task,
                "latency": latency,
                "n": len(trajs),
                "mean_elapsed_s": float(np.mean(elapsed)),
                "max_elapsed_s": float(np.max(elapsed)),
                "mean_step_s": float(np.mean(steps)) if steps else None,
                "answered": sum(t.end_reason == "answered" for t in trajs),
            }
        )
    return out
