"""Streamed replies (``stream=true``) from an OpenAI-compatible server on loopback: the stub speaks
vLLM's server-sent events through the real ``openai`` client. Text and tool calls are assembled
from chunks, tokens come from the final usage chunk, a wall-clock deadline closes the stream
mid-answer (the disconnect is what aborts a request in vLLM), and a server that breaks off a
stream fails clearly instead of hanging.

Timed assertions leave at least half a second of slack.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.openai_stub import CALCULATOR_TOOL as CALC
from tests.helpers.openai_stub import STUB_SLOW_S
from tests.helpers.timing import WALL_SLACK_S
from timely.budget import Budget
from timely.clock import VirtualClock, WallClock, wall_seconds
from timely.errors import PolicyError
from timely.loop import run_episode
from timely.policies.base import Deadline, make_policy
from timely.task import make_task
from timely.toolclient import ToolClient
from timely.types import EndReason, Message, ToolCall
from timely_server.app import ServerConfig, running_server


@pytest.fixture(autouse=True)
def fresh(stub):
    state = stub[0].state
    state.requests.clear()
    state.streams.clear()
    state.first_token_delay_s = 0.0
    state.token_delay_s = 0.0
    state.throttle_429s = 1
    state.retry_after = {"Retry-After": "1"}


def ask() -> list[Message]:
    return [Message(role="user", content="What is 6*7?")]


def wall_deadline(seconds: float) -> Deadline:
    clock = WallClock()
    return Deadline(at=clock.now() + seconds, clock=clock)


async def generate(base_url, model, *, seconds=10.0, tools=(), **options):
    """One call of a fresh policy on a wall-clock deadline: (completion, policy, elapsed)."""
    options.setdefault("stream", True)
    policy = make_policy(f"openai:{model}", base_url=base_url, **options)
    started = wall_seconds()
    try:
        out = await policy.generate(ask(), list(tools), deadline=wall_deadline(seconds))
    finally:
        await policy.aclose()
    return out, policy, wall_seconds() - started


async def until(predicate, seconds=3.0):
    """Wait (real time) until ``predicate()`` holds; the server thread notices a hang-up soon."""
    clock = WallClock()
    end = clock.now() + seconds
    while not predicate() and clock.now() < end:
        await clock.sleep(0.02)
    return predicate()


async def test_a_streamed_answer_has_the_servers_usage_and_its_real_time(stub):
    app, base_url = stub
    app.state.first_token_delay_s = 0.3
    plain, _, _ = await generate(base_url, "answer", stream=False)
    out, policy, elapsed = await generate(base_url, "answer")
    assert (out.text, out.finish_reason, out.usage_estimated) == ("Answer: 42", "stop", False)
    assert (out.prompt_tokens, out.completion_tokens) == (
        plain.prompt_tokens,
        plain.completion_tokens,
    )
    assert out.prompt_tokens > 0 and out.completion_tokens > 0
    assert 0.3 <= out.gen_seconds <= elapsed < 2.0  # measured from the real response
    stats = policy.stream_stats
    assert (stats.streams, stats.cut, stats.first_tokens) == (1, 0, 1)
    assert 0.3 <= stats.last_first_token_s <= out.gen_seconds
    body = app.state.requests[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert app.state.streams[-1]["finished"]


async def test_a_tool_call_split_across_chunks_is_one_tool_call(stub):
    app, base_url = stub
    out, _, _ = await generate(base_url, "tool-then-answer", tools=[CALC])
    assert out.tool_calls == [
        ToolCall(id="call_stub_1", name="calculator", arguments={"expression": "6*7"})
    ]
    assert (out.text, out.malformed, out.finish_reason) == ("", [], "tool_calls")
    assert app.state.streams[-1]["chunks"] >= 8  # role, name, 6 argument fragments, finish…


@pytest.mark.parametrize(
    "model", ["answer", "tool-then-answer", "hermes-text", "bad-args", "no-usage", "length"]
)
async def test_a_streamed_reply_is_the_same_completion_as_the_plain_one(stub, model):
    _, base_url = stub
    plain, _, _ = await generate(base_url, model, tools=[CALC], stream=False)
    streamed, _, _ = await generate(base_url, model, tools=[CALC], stream=True)
    exclude = {"gen_seconds"}
    assert streamed.model_dump(exclude=exclude) == plain.model_dump(exclude=exclude)


async def test_a_stream_without_usage_is_estimated_and_flagged(stub):
    app, base_url = stub
    out, _, _ = await generate(base_url, "no-usage")
    assert app.state.requests[-1]["stream_options"] == {"include_usage": True}  # asked anyway
    assert out.text.startswith("The answer is 42") and out.usage_estimated
    assert out.completion_tokens >= len(out.text) // 4 > 0  # never free
    assert out.prompt_tokens > 0  # counted from what was sent


async def test_a_slow_stream_is_closed_at_the_deadline(stub):
    app, base_url = stub  # 200 words at 0.05 s each: 10 s, far past the deadline
    out, policy, elapsed = await generate(base_url, "dribble", seconds=1.0)
    assert 1.0 <= elapsed < 1.0 + WALL_SLACK_S  # not the 10 s stream
    assert out.finish_reason == "deadline" and 1.0 <= out.gen_seconds < 1.0 + WALL_SLACK_S
    assert out.text.startswith("w0 w1 w2") and "w199" not in out.text  # what arrived is kept
    assert out.usage_estimated and out.completion_tokens > 0
    assert policy.stream_stats.cut == 1
    record = app.state.streams[-1]
    assert await until(lambda: record["disconnected"]), record  # the server saw the hang-up
    assert not record["finished"] and record["chunks"] < 60


async def test_a_deadline_before_the_first_token_is_a_plain_timeout(stub):
    app, base_url = stub
    out, _, elapsed = await generate(base_url, "slow", seconds=0.3)
    assert out.finish_reason == "deadline"
    assert (out.text, out.tool_calls, out.completion_tokens) == ("", [], 0)
    assert 0.3 <= elapsed < 0.3 + WALL_SLACK_S and 0.3 <= out.gen_seconds < 0.3 + WALL_SLACK_S
    assert len(app.state.requests) == 1  # not retried
    record = app.state.streams[-1]
    assert await until(lambda: record["disconnected"], seconds=STUB_SLOW_S + 1.0), record


async def test_a_429_before_a_stream_is_waited_out_and_retried(stub):
    app, base_url = stub
    app.state.retry_after = {"retry-after-ms": "100"}
    out, policy, _ = await generate(base_url, "throttled")
    assert (out.text, out.finish_reason) == ("Answer: 42", "stop")
    assert [r["model"] for r in app.state.requests] == ["throttled", "throttled"]
    assert policy.rate_limits.stats.throttled == 1
    assert policy.rate_limits.stats.waited_s == pytest.approx(0.1)
    assert policy.stream_stats.streams == 1  # the 429 never became a stream


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("stream-drop", "broke off the stream after"),
        ("stream-bad-json", "not JSON"),
        ("stream-error", "error mid-stream .*out of KV cache"),
        ("stream-truncated", "without a finish_reason"),
    ],
)
async def test_a_stream_that_breaks_off_is_a_clear_policy_error(stub, model, message):
    _, base_url = stub
    started = wall_seconds()
    with pytest.raises(PolicyError, match=message):
        await generate(base_url, model, seconds=10.0)
    assert wall_seconds() - started < 3.0  # an error, not a wait for the deadline


async def test_an_episode_streams_a_tool_call_then_answers(stub):
    app, base_url = stub
    policy = make_policy("openai:tool-then-answer", base_url=base_url, stream=True)
    task = make_task("math/arithmetic-v1", seed=0)
    with running_server(ServerConfig(port=0, latency="constant:0.1")) as url:
        async with ToolClient(url) as tools:
            traj = await run_episode(policy, task, tools, WallClock(), Budget(seconds=20))
    await policy.aclose()
    assert traj.end_reason == EndReason.ANSWERED and traj.final_answer is not None
    first, last = traj.steps[0], traj.steps[-1]
    assert [c.name for c in first.tool_calls] == [task.spec.tools[0]]
    assert first.tool_calls[0].arguments == {"expression": "6*7"}
    assert first.tool_results[0].error is None and first.tool_s >= 0.1
    assert not first.usage_estimated and first.completion_tokens > 0 and first.gen_s > 0
    assert last.finish_reason == "stop"
    assert [s["finished"] for s in app.state.streams] == [True, True]
    assert policy.stream_stats.streams == 2


async def test_an_episode_whose_stream_outlasts_the_budget_has_no_answer(stub):
    app, base_url = stub
    policy = make_policy("openai:dribble", base_url=base_url, stream=True)
    task = make_task("math/arithmetic-v1", seed=0)
    with running_server(ServerConfig(port=0, latency="constant:0")) as url:
        async with ToolClient(url) as tools:
            traj = await run_episode(policy, task, tools, WallClock(), Budget(seconds=1.0))
    await policy.aclose()
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED and traj.final_answer is None
    assert 1.0 <= traj.elapsed_s < 1.0 + WALL_SLACK_S
    assert traj.steps[0].finish_reason == "deadline" and traj.steps[0].text.startswith("w0")
    record = app.state.streams[-1]
    assert await until(lambda: record["disconnected"]), record


async def test_on_a_virtual_clock_streaming_changes_nothing(stub):
    _, base_url = stub
    task = make_task("math/arithmetic-v1", seed=0)
    trajectories = []
    for stream in (False, True):
        policy = make_policy("openai:tool-then-answer", base_url=base_url, stream=stream)
        with running_server(ServerConfig(port=0, latency="constant:1")) as url:
            async with ToolClient(url) as tools:
                traj = await run_episode(policy, task, tools, VirtualClock(), Budget(seconds=30))
        await policy.aclose()
        trajectories.append(traj)
    plain, streamed = trajectories
    assert streamed.end_reason == EndReason.ANSWERED
    # Virtual time is charged from tokens, and the tokens are the same.
    assert streamed.replay_json() == plain.replay_json()


async def test_concurrent_streams_share_one_policy(stub):
    app, base_url = stub
    app.state.token_delay_s = 0.01
    policy = make_policy("openai:answer", base_url=base_url, stream=True)
    outs = await asyncio.gather(
        *(policy.generate(ask(), [], deadline=wall_deadline(10)) for _ in range(4))
    )
    await policy.aclose()
    assert [o.text for o in outs] == ["Answer: 42"] * 4
    assert policy.stream_stats.streams == 4 and policy.stream_stats.cut == 0
