"""The agent loop in real time against a real tool server on loopback."""

import socket

import pytest

from tests.helpers.policies import SlowWallPolicy
from tests.helpers.timing import WALL_SLACK_S
from timely.budget import Budget
from timely.clock import WallClock
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.toolclient import ToolClient
from timely.types import EndReason
from timely_server.app import ServerConfig, running_server


@pytest.fixture(scope="module")
def slow_server():
    with running_server(
        ServerConfig(port=0, latency="constant:0.1", per_tool_latency={"echo": "constant:3"})
    ) as url:
        yield url


async def test_oracle_in_wall_time(slow_server):
    async with ToolClient(slow_server) as tools:
        task = make_task("math/arithmetic-v1", seed=0)
        traj = await run_episode(
            make_policy("scripted:oracle"), task, tools, WallClock(), Budget(seconds=10)
        )
    assert traj.end_reason == EndReason.ANSWERED and traj.score == 1.0 and traj.compliant
    n = traj.n_tool_calls
    assert traj.tool_s >= 0.1 * n  # the injected latency really passed
    assert traj.tool_s < 0.1 * n + WALL_SLACK_S
    assert traj.elapsed_s >= traj.tool_s


async def test_tool_call_never_outlives_the_budget(slow_server):
    # the calculator answers in 0.1 s; make it 3 s with a budget of 0.6 s
    with running_server(ServerConfig(port=0, latency="constant:3")) as url:
        async with ToolClient(url) as tools:
            task = make_task("math/arithmetic-v1", seed=0)
            traj = await run_episode(
                make_policy("scripted:oracle"), task, tools, WallClock(), Budget(seconds=0.6)
            )
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert 0.6 <= traj.elapsed_s < 0.6 + WALL_SLACK_S  # not the 3 s call
    assert traj.steps[0].tool_results[0].error == "deadline_exceeded"


async def test_slow_model_is_cut_at_the_deadline():
    task = make_task("math/arithmetic-v1", seed=0)
    with running_server(ServerConfig(port=0)) as url:
        async with ToolClient(url) as tools:
            traj = await run_episode(
                SlowWallPolicy(5.0), task, tools, WallClock(), Budget(seconds=0.3)
            )
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert 0.3 <= traj.elapsed_s < 0.3 + WALL_SLACK_S  # not the 5 s reply


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_dead_tool_server_ends_episode_with_reason_within_budget():
    task = make_task("math/arithmetic-v1", seed=0)
    clock = WallClock()
    async with ToolClient(f"http://127.0.0.1:{_closed_port()}") as tools:
        traj = await run_episode(
            make_policy("scripted:oracle"), task, tools, clock, Budget(seconds=1.0)
        )
    assert traj.end_reason == EndReason.TOOL_SERVER_ERROR
    assert "127.0.0.1" in traj.error
    assert clock.now() <= 1.0 + WALL_SLACK_S


async def test_server_dies_mid_episode():
    task = make_task("math/multistep-v1", seed=0)
    clock = WallClock()
    ctx = running_server(ServerConfig(port=0, latency="constant:0.05"))
    url = ctx.__enter__()
    async with ToolClient(url) as tools:
        await tools.list_tools()
        ctx.__exit__(None, None, None)  # the server goes away before the first call
        traj = await run_episode(
            make_policy("scripted:oracle"), task, tools, clock, Budget(seconds=2.0)
        )
    assert traj.end_reason == EndReason.TOOL_SERVER_ERROR
    assert "tool server" in (traj.error or "").lower() or "127.0.0.1" in (traj.error or "")
    assert traj.elapsed_s <= 2.0 + WALL_SLACK_S
