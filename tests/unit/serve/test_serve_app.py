"""The agent endpoint in-process (ASGI, no sockets): runs, chat completions, limits, bad input.

Runs play on a wall clock (serving is real time), with small tool latencies from the in-process
tool server; the streaming and disconnect paths need a real socket and live in
tests/integration/test_serve_loopback.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx2
import pytest

from tests.helpers.policies import CalculatorAgent, CrashingPolicy, SlowWallPolicy
from timely.policies.scripted import ScriptedPolicy
from timely.runrecord import iter_trajectories
from timely.serve.app import create_app
from timely.serve.config import ServeConfig
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig
from timely_server.app import create_app as create_tool_server


@contextlib.asynccontextmanager
async def endpoint(policy=None, *, latency: str = "constant:0.05", **settings):
    """An ASGI client of the endpoint, with a policy and its own in-process tool server.

    ``client.tool_server`` is the tool server's state (its live sessions, for the tests).
    """
    policy = policy or CalculatorAgent()
    tool_app = create_tool_server(ServerConfig(latency=latency))
    async with ToolClient.in_process(tool_app) as tools:
        app = create_app(ServeConfig(policy=policy.name, **settings), policy=policy, tools=tools)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://agent") as client:
            client.tool_server = tool_app.state.tool_server  # type: ignore[attr-defined]
            yield client
        await app.state.services.close()


def chat(content: str = "compute 6*7", **extra):
    return {
        "model": "test:calculator-agent",
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


async def test_chat_completion_runs_the_tool_loop_and_reports_timing():
    async with endpoint() as client:
        r = await client.post("/v1/chat/completions", json=chat(time_budget_s=5))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The answer is 42"}
    assert body["choices"][0]["finish_reason"] == "stop"
    timely = body["timely"]
    assert timely["compliant"] is True and timely["tool_calls"] == 1 and timely["steps"] == 2
    assert timely["budget_s"] == 5 and 0 < timely["elapsed_s"] <= 5
    assert timely["tool_s"] >= 0.05  # the injected latency was really waited for
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 18


async def test_budget_comes_from_the_header_when_the_body_has_none():
    async with endpoint() as client:
        r = await client.post(
            "/v1/chat/completions", json=chat(), headers={"X-Timely-Budget-S": "7.5"}
        )
        bad = await client.post(
            "/v1/chat/completions", json=chat(), headers={"X-Timely-Budget-S": "soon"}
        )
    assert r.json()["timely"]["budget_s"] == 7.5
    assert bad.status_code == 400 and "X-Timely-Budget-S" in bad.json()["error"]["message"]


async def test_registered_task_run_is_scored():
    async with endpoint(ScriptedPolicy("oracle")) as client:
        r = await client.post(
            "/v1/runs", json={"task": "math/arithmetic", "seed": 3, "time_budget_s": 20}
        )
    summary = r.json()
    assert r.status_code == 200, summary
    assert summary["status"] == "done" and summary["task_id"] == "math/arithmetic-v1"
    assert summary["score"] == 1.0 and summary["compliant"] is True


async def test_conversation_history_reaches_the_model():
    agent = CalculatorAgent()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "compute "}, {"type": "text", "text": "2+2"}],
        },
    ]
    async with endpoint(agent) as client:
        r = await client.post("/v1/runs", json={"messages": messages, "time_budget_s": 5})
        run = await client.get(f"/v1/runs/{r.json()['id']}", params={"trajectory": "true"})
    record = run.json()["trajectory"]
    assert [m["role"] for m in record["messages"][:4]] == ["system", "user", "assistant", "user"]
    assert record["messages"][3]["content"].startswith("compute 2+2\n\nYou have a time budget of 5")
    assert agent.offered[0] == ["calculator"]  # the server's default tools


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"messages": "hi"}', 422, "invalid_request"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "time_budget_s": -1}',
            422,
            "invalid_request",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "time_budget_s": 1e9}',
            422,
            "invalid_request",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "time_budget_s": NaN}',
            422,
            "invalid_request",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "tools": ["nope"]}',
            400,
            "unknown_tool",
        ),
        (b'{"messages": [{"role": "assistant", "content": "x"}]}', 422, "invalid_request"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', 422, "invalid_request"),
        (
            b'{"task": "math/arithmetic", "messages": [{"role": "user", "content": "x"}]}',
            422,
            "invalid_request",
        ),
        (b'{"task": "math/no-such-task"}', 404, "unknown_task"),
        (b'{"task": "math/arithmetic", "task_options": {"colour": "red"}}', 422, "invalid_request"),
        (b'{"task": "math/arithmetic", "surprise": 1}', 422, "invalid_request"),
        (b"[]", 422, "invalid_request"),
    ],
)
async def test_bad_run_requests_get_clear_4xx_errors(body, status, kind):
    async with endpoint() as client:
        r = await client.post(
            "/v1/runs", content=body, headers={"content-type": "application/json"}
        )
        health = await client.get("/health")
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind and error["code"] == kind and error["message"]
    assert health.json()["in_flight"] == 0  # nothing was started


async def test_bad_chat_requests_get_openai_shaped_errors():
    async with endpoint() as client:
        model = await client.post("/v1/chat/completions", json={**chat(), "model": "gpt-9"})
        empty = await client.post("/v1/chat/completions", json={**chat(), "messages": []})
        tools = await client.post(
            "/v1/chat/completions",
            json=chat(tools=[{"type": "function", "function": {"name": "teleport"}}]),
        )
        n = await client.post("/v1/chat/completions", json=chat(n=3))
    assert model.status_code == 404 and model.json()["error"]["type"] == "model_not_found"
    assert "GET /v1/models" in model.json()["error"]["message"]
    assert empty.status_code == 422 and empty.json()["error"]["param"] == "messages"
    assert tools.status_code == 400 and "teleport" in tools.json()["error"]["message"]
    assert n.status_code == 422


async def test_oversized_bodies_are_refused_with_413():
    async with endpoint(max_body_bytes=2048) as client:
        r = await client.post("/v1/chat/completions", json=chat("x" * 5000))
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"


async def test_api_key_guards_every_route_but_health():
    async with endpoint(api_key="sesame") as client:
        none = await client.post("/v1/chat/completions", json=chat())
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        ok = await client.get("/v1/models", headers={"Authorization": "Bearer sesame"})
        metrics = await client.get("/metrics")
        health = await client.get("/health")
    assert none.status_code == 401 and none.json()["error"]["type"] == "unauthorized"
    assert none.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and metrics.status_code == 401
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "test:calculator-agent"
    assert health.status_code == 200


async def test_concurrency_limit_answers_429_with_retry_after():
    async with endpoint(SlowWallPolicy(0.5), max_concurrent_runs=1, retry_after_s=3) as client:
        first = await client.post(
            "/v1/runs", json={"messages": [{"role": "user", "content": "a"}], "wait": False}
        )
        second = await client.post(
            "/v1/runs", json={"messages": [{"role": "user", "content": "b"}]}
        )
        assert first.status_code == 202
        assert second.status_code == 429 and second.headers["retry-after"] == "3"
        assert second.json()["error"]["type"] == "too_many_runs"
        run_id = first.json()["id"]
        for _ in range(100):
            if (await client.get(f"/v1/runs/{run_id}")).json()["status"] != "running":
                break
            await asyncio.sleep(0.05)
        third = await client.post("/v1/runs", json={"messages": [{"role": "user", "content": "c"}]})
        metrics = (await client.get("/metrics")).text
    assert third.status_code == 200
    assert 'timely_requests_rejected_total{reason="concurrency"} 1.0' in metrics


async def test_detached_run_can_be_polled_and_cancelled_and_frees_its_tool_session():
    async with endpoint(CalculatorAgent(calls=1), latency="constant:30") as client:
        r = await client.post(
            "/v1/runs",
            json={
                "messages": [{"role": "user", "content": "compute 1+1"}],
                "time_budget_s": 60,
                "wait": False,
            },
        )
        assert r.status_code == 202 and r.headers["location"] == f"/v1/runs/{r.json()['id']}"
        for _ in range(200):  # wait until the tool call is in flight on the tool server
            if client.tool_server.sessions.live == 1:
                break
            await asyncio.sleep(0.02)
        assert client.tool_server.sessions.live == 1
        cancelled = await client.delete(f"/v1/runs/{r.json()['id']}")
        again = await client.get(f"/v1/runs/{r.json()['id']}")
        missing = await client.get("/v1/runs/run_nope")
        metrics = (await client.get("/metrics")).text
    assert cancelled.json()["status"] == "cancelled" and again.json()["status"] == "cancelled"
    assert client.tool_server.sessions.live == 0
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert 'timely_runs_total{api="runs",outcome="cancelled"} 1.0' in metrics


async def test_slow_tool_is_cut_at_the_budget():
    async with endpoint(
        CalculatorAgent(calls=3), latency="constant:5", wrap_up_fraction=0
    ) as client:
        r = await client.post("/v1/chat/completions", json=chat(time_budget_s=0.6))
    timely = r.json()["timely"]
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert timely["end_reason"] == "budget_exhausted" and timely["compliant"] is False
    # The tool call is answered at the deadline (504 from the tool server); the margin is the
    # loop's documented backstop, far below the 5 s the tool would have taken.
    assert timely["elapsed_s"] <= 0.6 + 0.5


async def test_agent_is_told_to_answer_when_time_runs_short():
    agent = CalculatorAgent(calls=100, expression="3*3")  # would call tools forever
    async with endpoint(agent, latency="constant:0.2", wrap_up_fraction=0.4) as client:
        r = await client.post(
            "/v1/runs",
            json={"messages": [{"role": "user", "content": "compute 3*3"}], "time_budget_s": 1.0},
        )
        record = (
            await client.get(f"/v1/runs/{r.json()['id']}", params={"trajectory": "true"})
        ).json()
    assert record["compliant"] is True and record["answer"] == "The answer is 9"
    assert agent.offered[-1] == []  # the answering turn was offered no tools
    told = [m for m in record["trajectory"]["messages"] if "Time is almost up" in m["content"]]
    assert len(told) == 1 and told[0]["role"] == "user"


async def test_failed_model_is_a_502_not_a_500():
    async with endpoint(CrashingPolicy()) as client:
        r = await client.post("/v1/chat/completions", json={**chat(), "model": "test:crash"})
        run = await client.post("/v1/runs", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502 and "model server exploded" in r.json()["error"]["message"]
    assert run.status_code == 200 and run.json()["end_reason"] == "policy_error"


async def test_models_health_and_metrics():
    async with endpoint() as client:
        await client.post("/v1/chat/completions", json=chat(time_budget_s=5))
        models = (await client.get("/v1/models")).json()
        health = (await client.get("/health")).json()
        metrics = (await client.get("/metrics")).text
    assert models["data"][0]["id"] == "test:calculator-agent"
    assert health == {"status": "ok", "policy": "test:calculator-agent", "in_flight": 0}
    for name in (
        "timely_runs_total",
        "timely_runs_compliant_total",
        "timely_run_seconds_bucket",
        "timely_runs_in_flight",
        "timely_tokens_total",
        "timely_run_overshoot_seconds",
    ):
        assert name in metrics
    # The run record's outcome vocabulary (timely.runrecord), the words `timely show` uses.
    assert 'timely_runs_total{api="chat",outcome="on_time"} 1.0' in metrics


async def test_finished_runs_are_appended_to_the_run_directory(tmp_path):
    async with endpoint(out=str(tmp_path / "served"), api_key="k") as client:
        headers = {"Authorization": "Bearer k"}
        for _ in range(2):
            await client.post("/v1/chat/completions", json=chat(time_budget_s=5), headers=headers)
    records = list(iter_trajectories(tmp_path / "served" / "trajectories.jsonl"))
    assert len(records) == 2 and all(r.task_id == "serve/chat-v1" for r in records)
    assert all(r.metadata["run_id"].startswith("run_") for r in records)
    config = (tmp_path / "served" / "config.yaml").read_text()
    assert "api_key: <set>" in config and "k\n" not in config.split("api_key")[1][:12]
