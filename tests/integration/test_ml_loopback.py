"""ML episodes against a real uvicorn tool server on 127.0.0.1, on the wall clock."""

import json

import pytest

from timely.budget import Budget
from timely.clock import WallClock
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, running_server


@pytest.fixture(scope="module")
def base_url():
    with running_server(ServerConfig(port=0, latency="constant:0.05")) as url:
        yield url


@pytest.mark.parametrize("task_id", ["ml/diabetes-v1", "ml/breast-cancer-code-v1"])
async def test_oracle_episode_over_http_counts_real_work(base_url, task_id):
    task = make_task(task_id, seed=3)
    async with ToolClient(base_url) as tools:
        traj = await run_episode(
            make_policy("scripted:oracle"), task, tools, WallClock(), Budget(seconds=120)
        )
    assert traj.score == 1.0 and traj.compliant, traj.error
    results = [r for s in traj.steps for r in s.tool_results]
    assert all(r.service_s > 0 and r.charged_s >= r.latency_s + r.service_s for r in results)
    timed = [json.loads(r.content) for r in results]
    key = "duration_s" if task.mode == "code" else "train_s"
    assert any(key in t for t in timed)


async def test_a_runaway_program_is_cut_at_the_episode_deadline(base_url):
    task = make_task("ml/breast-cancer-code-v1", seed=0)
    clock = WallClock()
    async with ToolClient(base_url) as tools:
        await task.setup(tools, "runaway")
        from timely.policies.base import Deadline

        result = await tools.call(
            "run_python",
            {"code": "while True: pass"},
            call_id="r",
            session_id="runaway",
            deadline=Deadline(clock.now() + 1.5, clock),
        )
        await task.teardown(tools, "runaway")
    body = json.loads(result.content) if result.error is None else {}
    assert result.error == "deadline_exceeded" or body.get("killed") == "deadline", result
    assert clock.now() < 4
