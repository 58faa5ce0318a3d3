"""The tool server is killed (SIGKILL) mid-episode: the episode ends, with a reason, in budget."""

import asyncio

import pytest

from timely.budget import Budget
from timely.clock import WallClock
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.toolclient import ToolClient
from timely.types import EndReason


@pytest.mark.parametrize("budget_s", [1.5, 4.0])
async def test_killed_server_ends_the_episode_within_its_budget(tool_server_process, budget_s):
    task = make_task("math/multistep-v1", seed=0)
    clock = WallClock()
    with tool_server_process("--latency", "constant:0.3") as (url, proc):
        async with ToolClient(url) as tools:
            await tools.list_tools()

            async def kill_soon() -> None:
                await asyncio.sleep(0.5)  # a call is in flight: each takes 0.3 s
                proc.kill()

            killer = asyncio.create_task(kill_soon())
            async with asyncio.timeout(budget_s + 5):  # never hangs
                traj = await run_episode(
                    make_policy("scripted:oracle"), task, tools, clock, Budget(seconds=budget_s)
                )
            await killer
    assert proc.returncode is not None  # it really died mid-episode
    assert traj.end_reason == EndReason.TOOL_SERVER_ERROR
    assert url in traj.error and "unavailable" in traj.error
    assert traj.n_tool_calls >= 1 and traj.steps[0].tool_results[0].ok  # it was working
    assert 0.5 <= traj.elapsed_s <= budget_s + 0.3
