"""What cold-start data and Timely-RL share about episodes: drawing a setting and calibrating
budgets against the expert (through the :class:`~timely.rollout.Runtime` they play in).

A training episode is the eval's episode with a drawn *setting*: a tool latency, a time-status
mode, a budget (a multiple of the scripted expert's unconstrained time on the same instance, or
no limit at all) and, for RL, a generation speed factor. Both the data synthesiser and the RL
trainer draw settings here, from a seeded numpy Generator, and play them through
:func:`timely.loop.run_episode`; there is no second loop.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from timely.budget import Budget
from timely.clock import SpeedProfile
from timely.loop import EpisodeOptions
from timely.reward import RewardConfig, compute_reward, outcome
from timely.rollout import (
    NO_LIMIT_S,
    EpisodeSpec,
    Runtime,
    draw_speed_factor,
    episode_options,
    log_uniform,
    scaled_speed,
    time_awareness,
)
from timely.task import Task, make_task
from timely.train.config import RLConfig
from timely.types import Trajectory

# (task, latency, time mode) -> the unconstrained seconds a relative budget multiplies.
Unconstrained = Callable[[Task, str, str], Awaitable[float]]


@dataclass(frozen=True)
class Setting:
    """The drawn conditions of one training episode."""

    latency: str
    time_mode: str  # push | pull | both | none (no limit)
    budget_s: float
    multiplier: float | None  # budget / expert time; None without a limit
    speed: SpeedProfile

    @property
    def limited(self) -> bool:
        return self.multiplier is not None

    def budget(self) -> Budget:
        return Budget(seconds=self.budget_s)

    def options(self, reward: RewardConfig, max_turns: int | None = None) -> EpisodeOptions:
        return episode_options(
            time=self.time_mode, speed=self.speed, reward=reward, max_turns=max_turns
        )

    def episode(
        self,
        task: Task,
        *,
        task_options: dict[str, Any] | None = None,
        budget: Budget | None = None,
        speed: SpeedProfile | None = None,
        sample: int = 0,
    ) -> EpisodeSpec:
        """The episode of ``task`` under this setting.

        Args:
            task: the instance (built with ``task_options``).
            task_options: the options it was built with (recorded in the spec).
            budget: default :meth:`budget` (the RL ablation passes its own).
            speed: default the setting's (a rollout's own speed factor replaces it).
            sample: which member of its group.
        """
        return EpisodeSpec(
            task_id=task.id,
            seed=task.spec.seed,
            split=task.spec.split,
            task_options=dict(task_options or {}),
            latency=self.latency,
            budget=budget or self.budget(),
            time=time_awareness(self.time_mode),
            speed=speed or self.speed,
            sample=sample,
        )


async def draw_setting(
    rng: np.random.Generator,
    runtime: Runtime,
    task: Task,
    *,
    latencies: Sequence[str],
    time_modes: Sequence[str],
    multipliers: tuple[float, float],
    no_limit_share: float,
    speed: str | SpeedProfile,
    speed_factor: tuple[float, float] = (1.0, 1.0),
    unconstrained: Unconstrained | None = None,
    stratum: tuple[int, int] | None = None,
) -> Setting:
    """Draw one episode's setting; the budget is ``multiplier x`` the expert's time there.

    The draws always consume the same random numbers in the same order, so a run's data order
    does not depend on which branch a draw took.

    Args:
        runtime: its calibrator measures the unconstrained time.
        unconstrained: ``(task, latency, time_mode) -> seconds``, the unconstrained time the
            budget is a multiple of; default the scripted oracle at ``speed``
            (:meth:`timely.rollout.Calibrator.oracle_seconds`). Training passes the
            tokenizer-charged oracle (:func:`timely.train.experts.tokenized_calibrator`), so
            budgets match the clock the model's turns are charged on.
        stratum: ``(k, n)``: draw the multiplier log-uniformly inside the k-th of n equal
            log-space slices of ``multipliers`` (an RL batch's few groups then cover short and
            long budgets every batch instead of by luck); None: the whole range.
    """
    latency = str(latencies[int(rng.integers(len(latencies)))])
    mode = str(time_modes[int(rng.integers(len(time_modes)))])
    multiplier = log_uniform(rng, *slice_of(multipliers, stratum))
    unlimited = bool(rng.random() < no_limit_share)
    profile = scaled_speed(speed, draw_speed_factor(rng, speed_factor))
    if unlimited:
        return Setting(latency, "none", NO_LIMIT_S, None, profile)
    # Calibrated at the base speed: a slowed-down sample must notice it from the clock.
    if unconstrained is None:
        expert_s = await runtime.calibrator.oracle_seconds(task, latency, speed, mode)
    else:
        expert_s = await unconstrained(task, latency, mode)
    return Setting(latency, mode, round(multiplier * expert_s, 3), multiplier, profile)


def slice_of(bounds: tuple[float, float], stratum: tuple[int, int] | None) -> tuple[float, float]:
    """The k-th of n equal log-space slices of ``bounds`` (all of it when ``stratum`` is None)."""
    if stratum is None:
        return bounds
    k, n = stratum
    if not 0 <= k < n:
        raise ValueError(f"stratum {k} of {n}: k must be in [0, n)")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    width = (high - low) / n
    return math.exp(low + k * width), math.exp(low + (k + 1) * width)


def episode_budget(setting: Setting, config: RLConfig) -> Budget:
    """The setting's hard budget; for the no-time-reward ablation one that never stops or cuts."""
    if config.time_reward:
        return setting.budget()
    late_limit = max(1.0, NO_LIMIT_S / setting.budget_s)
    return Budget(seconds=setting.budget_s, overrun="late", late_limit_factor=late_limit)


def rl_reward(
    score: float,
    *,
    elapsed_s: float,
    budget_s: float,
    on_time: bool,
    answered: bool,
    formatted: bool,
    reward: RewardConfig,
    time_reward: bool,
) -> float:
    """The Timely-RL training reward: ``reward`` of the episode, or plain correctness (the
    ablation, ``time_reward=False``): the score of an answered episode, whatever its timing."""
    if not time_reward:
        return score if answered else 0.0
    return compute_reward(
        score,
        elapsed_s=elapsed_s,
        budget_s=budget_s,
        on_time=on_time,
        answered=answered,
        formatted=formatted,
        config=reward,
    )


def episode_reward(trajectory: Trajectory, config: RLConfig) -> float:
    """:func:`rl_reward` of a finished trajectory under ``config``."""
    return rl_reward(**outcome(trajectory), reward=config.reward, time_reward=config.time_reward)


def train_task(task_id: str, seed: int) -> Task:
    """A train-split instance (training never sees the test split)."""
    return make_task(task_id, seed=seed, split="train")
