"""Step events: an observer sees the episode as it happens, in order, and costs nothing when
absent or broken."""

from __future__ import annotations

import pydantic

from tests.helpers.env import in_process_tools
from tests.helpers.policies import ReplayPolicy
from timely.budget import Budget, TimeAwareness
from timely.clock import VirtualClock
from timely.events import StepEvent
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.types import Completion, ToolCall

TASK = "math/arithmetic-v1"


async def _play(policy, observer, *, budget=60.0, time="push"):
    async with in_process_tools("constant:0.5") as tools:
        return await run_episode(
            policy,
            make_task(TASK, seed=0),
            tools,
            VirtualClock(),
            Budget(seconds=budget),
            options=EpisodeOptions(time=TimeAwareness(mode=time)),
            observer=observer,
        )


async def test_events_follow_the_episode_in_order():
    events = []
    traj = await _play(make_policy("scripted:oracle"), events.append)
    kinds = [e.type for e in events]
    assert kinds[0] == "episode_started" and kinds[-1] == "episode_ended"
    n_calls = traj.n_tool_calls
    assert (
        kinds.count("generation_started") == kinds.count("generation_finished") == len(traj.steps)
    )
    assert kinds.count("tool_call") == kinds.count("tool_result") == n_calls
    assert kinds.count("time_status") == n_calls  # pushed after every tool result
    # Each tool call is sent, answered, then the status is shown.
    i = kinds.index("tool_call")
    assert kinds[i : i + 3] == ["tool_call", "tool_result", "time_status"]
    times = [e.at for e in events]
    assert times == sorted(times)
    end = events[-1]
    assert (end.end_reason, end.reward, end.elapsed_s) == (
        traj.end_reason,
        traj.reward,
        traj.elapsed_s,
    )
    results = [e for e in events if e.type == "tool_result"]
    assert results[0].result.latency_s == 0.5 and results[0].tool_s == 0.5
    finished = [e for e in events if e.type == "generation_finished"]
    assert [f.completion_tokens for f in finished] == [s.completion_tokens for s in traj.steps]


async def test_events_serialise_and_parse_back():
    events = []
    await _play(make_policy("scripted:oracle"), events.append)
    adapter = pydantic.TypeAdapter(StepEvent)
    for e in events:
        assert adapter.validate_json(e.model_dump_json()) == e


async def test_async_observer_and_pulled_status():
    seen = []

    async def observer(event):
        seen.append(event)

    call = ToolCall(id="c", name="get_duration", arguments={})
    policy = ReplayPolicy(
        [Completion(tool_calls=[call], completion_tokens=3), Completion(text="Answer: 2")]
    )
    await _play(policy, observer, time="pull")
    status = [e for e in seen if e.type == "time_status"]
    assert len(status) == 1 and status[0].via == "pull"


async def test_cut_off_is_reported():
    events = []
    await _play(make_policy("scripted:oracle"), events.append, budget=0.6)
    assert events[-1].type == "episode_ended" and events[-1].cut_off


async def test_a_failing_observer_does_not_fail_the_episode():
    calls = []

    def broken(event):
        calls.append(event)
        raise RuntimeError("client went away")

    with_observer = await _play(make_policy("scripted:oracle"), broken)
    without = await _play(make_policy("scripted:oracle"), None)
    assert len(calls) == 1  # dropped after the first failure
    assert with_observer.replay_json() == without.replay_json()
