"""Episodes through the one agent loop, for tests of what trajectories record."""

from __future__ import annotations

import asyncio

from tests.helpers.env import in_process_tools
from timely.budget import Budget
from timely.clock import VirtualClock
from timely.loop import EpisodeOptions, run_episode
from timely.task import make_task
from timely.types import Trajectory


async def play_calculator(
    policy, seeds: list[int], *, max_turns: int = 4, time: str = "push"
) -> list[Trajectory]:
    """Concurrent calculator-task episodes (one per seed) with the time status pushed after
    each tool result, on virtual clocks with an in-process tool server."""
    options = EpisodeOptions(time=time, max_turns=max_turns)
    async with in_process_tools("constant:1.0") as tools:
        return await asyncio.gather(
            *[
                run_episode(
                    policy,
                    make_task("math/arithmetic-v1", seed=seed),
                    tools,
                    VirtualClock(),
                    Budget(seconds=600),
                    options=options,
                )
                for seed in seeds
            ]
        )
