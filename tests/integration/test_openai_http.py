"""OpenAIPolicy over real HTTP on loopback: deadlines become timeouts, nothing is retried."""

from __future__ import annotations

import socket

import pytest

from tests.helpers.openai_stub import CALCULATOR_TOOL as CALC
from tests.helpers.timing import WALL_SLACK_S
from timely.clock import WallClock, wall_seconds
from timely.errors import PolicyError
from timely.policies.base import Deadline, make_policy
from timely.types import Message


@pytest.fixture(autouse=True)
def clear(stub):
    stub[0].state.requests.clear()


def ask() -> list[Message]:
    return [Message(role="user", content="What is 6*7?")]


async def test_a_round_trip_over_http(stub):
    app, base_url = stub
    policy = make_policy("openai:tool-then-answer", base_url=base_url, max_tokens=32)
    clock = WallClock()
    out = await policy.generate(ask(), [CALC], deadline=Deadline(at=clock.now() + 10, clock=clock))
    await policy.aclose()
    assert out.tool_calls[0].name == "calculator"
    assert app.state.requests[0]["tools"] == [CALC]


async def test_the_deadline_is_the_timeout_and_is_not_retried(stub):
    app, base_url = stub
    policy = make_policy("openai:slow", base_url=base_url)
    clock = WallClock()
    started = wall_seconds()
    out = await policy.generate(ask(), [], deadline=Deadline(at=clock.now() + 0.3, clock=clock))
    elapsed = wall_seconds() - started
    await policy.aclose()
    assert out.finish_reason == "deadline"
    assert out.text == "" and out.tool_calls == []
    assert 0.25 <= elapsed < 0.25 + WALL_SLACK_S
    assert 0.25 <= out.gen_seconds < 0.25 + WALL_SLACK_S
    assert len(app.state.requests) == 1


async def test_an_unreachable_server_is_a_policy_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = make_policy("openai:m", base_url=f"http://127.0.0.1:{port}/v1")
    clock = WallClock()
    with pytest.raises(PolicyError, match="cannot reach the model server"):
        await policy.generate(ask(), [], deadline=Deadline(at=clock.now() + 5, clock=clock))
    await policy.aclose()


async def test_an_eval_suite_plays_an_openai_compatible_policy(stub, tmp_path):
    from timely_eval.runner import run_suite
    from timely_eval.suite import Suite, select

    app, base_url = stub
    suite = Suite.model_validate(
        {
            "name": "openai-row",
            "tasks": ["math/arithmetic-v1", "games/treasure-v1"],
            "policies": ["scripted:oracle"],
            "episodes": 1,
            "latencies": ["constant:0.5"],
            "budgets": {"seconds": [30]},
        }
    )
    suite = select(
        suite,
        policies=["suite", "openai:tool-then-answer"],
        policy_options={"base_url": base_url, "max_tokens": 32},
    )
    report = await run_suite(suite, tmp_path / "run")
    assert report.failed == 0 and report.counts["eval"].done == 4
    rows = {(c["policy"], c["task"]): c for c in report.results["cells"]}
    openai_row = rows[("openai:tool-then-answer", "math/arithmetic-v1")]
    assert openai_row["tool_calls"] == 1.0 and openai_row["compliance"] == 1.0
    assert {r["model"] for r in app.state.requests} == {"tool-then-answer"}
