"""``timely run``: play a few episodes of one task with one policy and record them.

This module turns the config into episode specs and plays them on a
:class:`~timely.rollout.Runtime` (policy, tool server, clocks, concurrency), which hands each to
:func:`timely.loop.run_episode`; it does no episode logic of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from timely.config import RunConfig, config_hash
from timely.events import Observer
from timely.policies.base import Policy
from timely.rollout import EpisodeSpec, Runtime
from timely.runrecord import TRAJECTORIES, append_trajectories, write_run_record
from timely.task import make_task
from timely.types import Trajectory


@dataclass
class RunResult:
    run_dir: Path
    trajectories: list[Trajectory]


async def run(
    config: RunConfig,
    *,
    policy: Policy | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
    observer: Callable[[int], Observer] | None = None,
) -> RunResult:
    """Run ``config.episodes`` episodes and write the run directory.

    Args:
        config: the resolved run config.
        policy: an already built policy (otherwise built from ``config.policy``).
        on_episode: called with each trajectory as it finishes (progress, traces).
        observer: ``seed -> observer`` for each episode's step events (live traces).
    """
    seeds = [config.seed + i for i in range(config.episodes)]
    run_dir = write_run_record(config.out, config, seeds=seeds)
    out_file = run_dir / TRAJECTORIES
    out_file.unlink(missing_ok=True)  # `timely run` records one fresh set of episodes
    chash = config_hash(config, exclude={"out", "seed", "episodes", "concurrency"})
    done: list[Trajectory] = []
    runtime = Runtime(
        clock=config.clock,
        seed=config.seed,
        tool_server=config.tool_server,
        per_tool_latency=config.tool_latency,
        concurrency=config.concurrency,
    )
    async with runtime:
        given = policy is not None
        if policy is None:
            policy = await runtime.policy(config.policy, config.policy_options)
        tools = await runtime.tools(config.latency)

        async def one(seed: int) -> None:
            async with runtime.limiter:
                task = make_task(
                    config.task,
                    seed=seed,
                    split=config.split,
                    difficulty=config.difficulty,
                    **config.task_options,
                )
                spec = EpisodeSpec(
                    task_id=config.task,
                    seed=seed,
                    split=config.split,
                    difficulty=config.difficulty,
                    task_options=config.task_options,
                    policy=config.policy,
                    latency=config.latency,
                    budget=config.budget.for_task(task.spec.default_budget_s),
                    time=config.episode.time,
                    speed=config.episode.speed,
                )
                traj = await runtime.play(
                    spec,
                    policy,
                    task=task,
                    reward=config.episode.reward,
                    max_turns=config.episode.max_turns,
                    observer=observer(seed) if observer else None,
                    config_hash=chash,
                    tools=tools,
                )
            append_trajectories(out_file, [traj])
            done.append(traj)
            if on_episode:
                on_episode(traj)

        try:
            await asyncio.gather(*(one(s) for s in seeds))
        finally:
            aclose = getattr(policy, "aclose", None)
            if given and aclose is not None:
                await aclose()  # a given policy is closed as the run ends, as a built one is
    done.sort(key=lambda t: t.seed)
    return RunResult(run_dir=run_dir, trajectories=done)
