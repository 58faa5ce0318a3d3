"""OpenAIPolicy request shape and response mapping, against the stub app in-process (ASGI)."""

from __future__ import annotations

import httpx2
import pytest

from tests.helpers.openai_stub import create_stub_app
from timely.clock import VirtualClock
from timely.errors import ConfigError, PolicyError
from timely.policies.base import POLICY_BACKENDS, VIRTUAL_MIN_TIMEOUT_S, Deadline
from timely.policies.openai_http import OpenAIPolicy
from timely.types import Message, ToolCall

CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}


@pytest.fixture
def app():
    return create_stub_app()


def policy(app, model: str, **kw) -> OpenAIPolicy:
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return OpenAIPolicy(model, base_url="http://stub/v1", http_client=client, **kw)


def deadline(max_new_tokens: int | None = None) -> Deadline:
    return Deadline(at=100.0, clock=VirtualClock(), max_new_tokens=max_new_tokens)


def question() -> list[Message]:
    return [
        Message(role="system", content="Be quick."),
        Message(role="user", content="What is 6*7?"),
    ]


async def test_tool_call_then_answer(app):
    p = policy(app, "tool-then-answer", max_tokens=64)
    first = await p.generate(question(), [CALC], deadline=deadline())
    assert first.tool_calls == [
        ToolCall(id="call_stub_1", name="calculator", arguments={"expression": "6*7"})
    ]
    assert (first.text, first.malformed, first.finish_reason) == ("", [], "tool_calls")
    assert first.prompt_tokens > 0 and first.completion_tokens > 0 and first.gen_seconds > 0
    history = question() + [
        Message(role="assistant", content="", tool_calls=first.tool_calls),
        Message(role="tool", content="42", tool_call_id="call_stub_1", name="calculator"),
    ]
    second = await p.generate(history, [CALC], deadline=deadline())
    assert (second.text, second.tool_calls, second.finish_reason) == ("Answer: 42", [], "stop")

    body = app.state.requests[1]
    assert body["model"] == "tool-then-answer"
    assert body["tools"] == [CALC]
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "calculator",
        "arguments": '{"expression": "6*7"}',
    }
    assert body["messages"][3] == {
        "role": "tool",
        "content": "42",
        "tool_call_id": "call_stub_1",
        "name": "calculator",
    }


async def test_budget_cap_lowers_max_tokens_and_length_means_deadline(app):
    p = policy(app, "length", max_tokens=64, token_limit_param="max_completion_tokens")
    out = await p.generate(question(), [], deadline=deadline(max_new_tokens=5))
    assert app.state.requests[0]["max_completion_tokens"] == 5
    assert "tools" not in app.state.requests[0]
    assert out.finish_reason == "deadline"
    out = await p.generate(question(), [], deadline=deadline(max_new_tokens=500))
    assert app.state.requests[1]["max_completion_tokens"] == 64
    assert out.finish_reason == "length"


async def test_no_limit_is_sent_when_none_is_set(app):
    await policy(app, "length").generate(question(), [], deadline=deadline())
    body = app.state.requests[0]
    assert "max_tokens" not in body and "max_completion_tokens" not in body


async def test_zero_token_budget_sends_nothing(app):
    out = await policy(app, "length").generate(question(), [], deadline=deadline(0))
    assert out.finish_reason == "deadline"
    assert app.state.requests == []


async def test_text_tool_calls_are_parsed(app):
    out = await policy(app, "hermes-text").generate(question(), [CALC], deadline=deadline())
    assert out.text == "Let me compute."
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [
        ("call_2_0", "calculator", {"expression": "1+1"})
    ]


async def test_undecodable_arguments_are_malformed(app):
    out = await policy(app, "bad-args").generate(question(), [CALC], deadline=deadline())
    assert out.tool_calls == []
    assert len(out.malformed) == 1
    assert out.malformed[0].startswith("tool call 'calculator': could not decode")


async def test_hermes_in_system_renders_tools_into_the_prompt(app):
    p = policy(app, "hermes-text", tool_format="hermes-in-system")
    history = question() + [
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c", name="calculator", arguments={"expression": "1"})],
        ),
        Message(role="tool", content="1", tool_call_id="c"),
    ]
    await p.generate(history, [CALC], deadline=deadline())
    body = app.state.requests[0]
    assert "tools" not in body
    assert body["messages"][0]["content"].startswith("Be quick.\n\n# Tools")
    assert body["messages"][2]["content"].startswith("<tool_call>")
    assert body["messages"][3] == {
        "role": "user",
        "content": "<tool_response>\n1\n</tool_response>",
    }


@pytest.mark.parametrize(("model", "needle"), [("error", "HTTP 500"), ("nope", "HTTP 404")])
async def test_server_errors_are_policy_errors(app, model, needle):
    with pytest.raises(PolicyError, match=needle) as info:
        await policy(app, model).generate(question(), [], deadline=deadline())
    assert "Check the model name" in str(info.value)
    assert len(app.state.requests) == 1  # no retries


def test_virtual_deadlines_give_http_a_floor():
    assert deadline().timeout_s() == max(100.0, VIRTUAL_MIN_TIMEOUT_S)


def test_factory_validates_options(monkeypatch):
    factory = POLICY_BACKENDS.get("openai")
    with pytest.raises(ConfigError, match="needs the base_url option"):
        factory("gpt-x")
    with pytest.raises(ConfigError, match="needs a model name"):
        factory("", base_url="http://x/v1")
    with pytest.raises(ConfigError, match="Did you mean 'max_tokens'"):
        factory("gpt-x", base_url="http://x/v1", max_token=5)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = factory("gpt-x", base_url="http://x/v1/", temperature=0.7)
    assert (p.name, p.base_url, p.api_key, p.temperature) == (
        "openai:gpt-x",
        "http://x/v1",
        "EMPTY",
        0.7,
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert factory("gpt-x", base_url="http://x/v1").api_key == "sk-test"


async def test_no_usage_is_estimated_and_flagged(app):
    p = policy(app, "no-usage")
    c = await p.generate(question(), [CALC], deadline=deadline())
    assert c.text.startswith("The answer is 42")
    assert c.usage_estimated
    assert c.completion_tokens >= len(c.text) // 4 > 0  # never free
    assert c.prompt_tokens > 0  # counted from what was sent
    with_usage = await policy(app, "tool-then-answer").generate(
        question(), [CALC], deadline=deadline()
    )
    assert not with_usage.usage_estimated


async def test_no_usage_episode_charges_generation_and_flags_the_step(app):
    from tests.helpers.env import in_process_tools
    from timely.budget import Budget
    from timely.loop import run_episode
    from timely.task import make_task

    p = policy(app, "no-usage")
    async with in_process_tools() as tools:
        traj = await run_episode(
            p, make_task("math/arithmetic-v1", seed=0), tools, VirtualClock(), Budget(seconds=60)
        )
    assert traj.steps[0].usage_estimated
    assert traj.gen_s > 0.05  # small-fast charges overhead plus the estimated tokens
    assert traj.steps[0].completion_tokens > 0
