"""Rewards: one module, used by eval scoring and RL alike.

Variants (``RewardConfig.variant``):

- ``compliance`` (default): score x on-time. What the leaderboard reports.
- ``paper``: the Timely-RL shape. On time:
  ``format_credit * formatted + correct_weight * score + bonus_weight * score * shape(t/T)``
  where ``shape`` is ``sin(pi/2 * min(t/T, 1))`` (``bonus_shape="sin"``), ``min(t/T, 1)``
  (``linear``) or ``1`` (``step``). The bonus rewards *using* the time that was given (thinking
  longer when allowed) only when the answer is right. Late (answer after T but recorded under the
  ``late`` overrun policy): ``late_credit * (format + correctness) - overtime_penalty *
  min((t - T) / T, 1)``.

An episode cut off at its budget (no answer) gets 0 under every variant.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from timely.types import EndReason, Trajectory


class RewardConfig(BaseModel):
    """Reward variant and coefficients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Literal["compliance", "paper"] = Field(
        "compliance", description="compliance: score x on-time; paper: the Timely-RL shape."
    )
    format_credit: float = Field(0.1, description="paper: credit for a well-formed final answer.")
    correct_weight: float = Field(1.0, description="paper: weight of task correctness.")
    bonus_weight: float = Field(
        0.2, description="paper: lambda, the on-time budget-use bonus (times correctness)."
    )
    bonus_shape: Literal["sin", "linear", "step"] = Field(
        "sin", description="paper: how the bonus grows with t/T (sin is the published shape)."
    )
    late_credit: float = Field(
        0.5, description="paper: fraction of format+correctness kept by a late answer."
    )
    overtime_penalty: float = Field(
        0.5, description="paper: penalty per budget of overtime, capped at one budget."
    )


def budget_use_bonus(fraction: float, shape: str) -> float:
    """The bonus curve over t/T, in [0, 1]."""
    f = min(max(fraction, 0.0), 1.0)
    if shape == "sin":
        return math.sin(math.pi / 2 * f)
    if shape == "linear":
        return f
    if shape == "step":
        return 1.0
    raise ValueError(f"unknown bonus shape {shape!r}; use sin, linear or step")


def compute_reward(
    score: float,
    *,
    elapsed_s: float,
    budget_s: float,
    on_time: bool,
    answered: bool,
    formatted: bool = True,
    config: RewardConfig | None = None,
) -> float:
    """The reward of one episode.

    Args:
        score: task correctness in [0, 1].
        elapsed_s: time the episode took.
        budget_s: its budget T.
        on_time: whether the answer arrived within the budget (with slack).
        answered: False when the episode ended without a final answer (cut off, max turns).
        formatted: whether the final answer was well formed (the task could parse it).
        config: variant and coefficients; the default is ``compliance``.
    """
    cfg = config or RewardConfig()
    if not answered:
        return 0.0
    if cfg.variant == "compliance":
        return score if on_time else 0.0
    base = cfg.format_credit * float(formatted) + cfg.correct_weight * score
    if on_time:
        bonus = budget_use_bonus(elapsed_s / budget_s, cfg.bonus_shape)
        return base + cfg.bonus_weight * score * bonus
    overtime = min(max(elapsed_s - budget_s, 0.0) / budget_s, 1.0)
    return cfg.late_credit * base - cfg.overtime_penalty * overtime


def outcome(trajectory: Trajectory) -> dict[str, Any]:
    """What a reward reads from a finished trajectory: the keyword arguments of
    :func:`compute_reward` (less the config)."""
    return {
        "score": trajectory.score,
        "elapsed_s": trajectory.elapsed_s,
        "budget_s": trajectory.budget_s,
        "on_time": trajectory.compliant,
        "answered": trajectory.end_reason == EndReason.ANSWERED,
        "formatted": bool(trajectory.metadata.get("formatted", True)),
    }


def trajectory_reward(trajectory: Trajectory, config: RewardConfig | None = None) -> float:
    """Recompute the reward of a finished trajectory (e.g. under another variant)."""
    return compute_reward(**outcome(trajectory), config=config)
