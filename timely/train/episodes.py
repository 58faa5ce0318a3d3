"""What cold-start data and Timely-RL share about episodes: drawing a setting, calibrating budgets
against the expert, and a pool of in-process tool servers, one per latency.

A training episode is the eval's episode with a drawn *setting*: a tool latency, a time-status
mode, a budget (a multiple of the scripted expert's unconstrained time on the same instance, or
no limit at all) and, for RL, a generation speed factor. Both the data synthesiser and the RL
trainer draw settings here, from a seeded numpy Generator, and play them through
:func:`timely.loop.run_episode`; there is no second loop.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from timely.budget import Budget, TimeAwareness
from timely.clock import SpeedProfile, VirtualClock, speed_profile
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import make_policy
from timely.reward import RewardConfig, compute_reward, outcome
from timely.task import Task, make_task
from timely.tool_servers import in_process_app
from timely.toolclient import ToolBackend, ToolClient
from timely.train.config import RLConfig
from timely.types import Trajectory

# "No time limit" is a budget that never binds; the model is told nothing about time.
NO_LIMIT_S = 1e6


# (task, latency, time mode) -> the unconstrained seconds a relative budget multiplies.
Calibrator = Callable[[Task, str, str], Awaitable[float]]


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
        time = (
            TimeAwareness(mode=self.time_mode)  # type: ignore[arg-type]
            if self.limited
            else TimeAwareness(mode="none", show_budget=False)
        )
        return EpisodeOptions(time=time, reward=reward, speed=self.speed, max_turns=max_turns)


def scaled_speed(base: str | SpeedProfile, factor: float) -> SpeedProfile:
    """``base`` slowed down by ``factor`` (2.0: generation takes twice as long)."""
    p = speed_profile(base)
    if factor == 1.0:
        return p
    return p.model_copy(
        update={
            "name": f"{p.name}x{factor:.2f}",
            "prefill_tok_s": p.prefill_tok_s / factor,
            "decode_tok_s": p.decode_tok_s / factor,
            "overhead_s": p.overhead_s * factor,
        }
    )


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


class ToolPool:
    """One in-process tool server per latency spec, opened on first use."""

    def __init__(self, stack: contextlib.AsyncExitStack, seed: int = 0) -> None:
        self._stack, self._seed = stack, seed
        self._clients: dict[str, ToolBackend] = {}

    async def get(self, latency: str) -> ToolBackend:
        if latency not in self._clients:
            app = in_process_app(latency=latency, seed=self._seed)
            self._clients[latency] = await self._stack.enter_async_context(
                ToolClient.in_process(app)
            )
        return self._clients[latency]


@contextlib.asynccontextmanager
async def tool_pool(seed: int = 0) -> AsyncIterator[ToolPool]:
    async with contextlib.AsyncExitStack() as stack:
        yield ToolPool(stack, seed)


async def expert_seconds(
    pool: ToolPool,
    task: Task,
    latency: str,
    speed: str | SpeedProfile,
    time_mode: str = "push",
    expert: str = "scripted:oracle",
) -> float:
    """The expert's unconstrained time on ``task`` at ``latency``: what relative budgets scale.

    Played on a virtual clock with a budget that never binds; deterministic per argument set.
    """
    key = (task.id, task.spec.split, task.spec.seed, latency, speed_profile(speed), time_mode)
    if key in _expert_cache:
        return _expert_cache[key]
    traj = await run_episode(
        _expert(expert),
        task,
        await pool.get(latency),
        VirtualClock(),
        Budget(seconds=NO_LIMIT_S),
        options=EpisodeOptions(time=TimeAwareness(mode=time_mode), speed=speed_profile(speed)),  # type: ignore[arg-type]
    )
    _expert_cache[key] = max(traj.elapsed_s, 1e-3)
    return _expert_cache[key]


_expert_cache: dict[tuple[Any, ...], float] = {}


@functools.cache
def _expert(spec: str) -> Any:
    return make_policy(spec)


async def draw_setting(
    rng: np.random.Generator,
    pool: ToolPool,
    task: Task,
    *,
    latencies: Sequence[str],
    time_modes: Sequence[str],
    multipliers: tuple[float, float],
    no_limit_share: float,
    speed: str | SpeedProfile,
    speed_factor: tuple[float, float] = (1.0, 1.0),
    unconstrained: Calibrator | None = None,
) -> Setting:
    """Draw one episode's setting; the budget is ``multiplier x`` the expert's time there.

    The draws always consume the same random numbers in the same order, so a run's data order
    does not depend on which branch a draw took.

    Args:
        unconstrained: ``(task, latency, time_mode) -> seconds``, the unconstrained time the
            budget is a multiple of; default :func:`expert_seconds` (the scripted oracle at
            ``speed``). Training passes the tokenizer-charged oracle
            (:func:`timely.train.experts.tokenized_seconds`), so budgets match the clock the
            model's turns are charged on.
    """
    latency = str(latencies[int(rng.integers(len(latencies)))])
    mode = str(time_modes[int(rng.integers(len(time_modes)))])
    multiplier = log_uniform(rng, *multipliers)
    unlimited = bool(rng.random() < no_limit_share)
    factor = log_uniform(rng, *speed_factor) if speed_factor[0] < speed_factor[1] else 1.0
    profile = scaled_speed(speed, factor)
    if unlimited:
        return Setting(latency, "none", NO_LIMIT_S, None, profile)
    # Calibrated at the base speed: a slowed-down sample must notice it from the clock.
    if unconstrained is None:
        expert_s = await expert_seconds(pool, task, latency, speed, mode)
    else:
        expert_s = await unconstrained(task, latency, mode)
    return Setting(latency, mode, round(multiplier * expert_s, 3), multiplier, profile)


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
