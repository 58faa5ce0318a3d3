"""The agent endpoint on a real socket: the official openai client, SSE, cancel on disconnect.

The endpoint runs under uvicorn on 127.0.0.1 in a thread; its tools are either an in-process
tool server (to watch its sessions) or a `timely tool-server` process (real HTTP both ways).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx2
import openai
import pytest

from tests.helpers.openai_stub import serve_in_thread
from tests.helpers.policies import CalculatorAgent
from tests.integration.conftest import cli_tool_server
from timely.serve.app import create_app
from timely.serve.config import ServeConfig
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig
from timely_server.app import create_app as create_tool_server

MODEL = "test:calculator-agent"


@contextlib.contextmanager
def agent_endpoint(
    policy=None, *, latency: str = "constant:0.05", tools_url: str | None = None, **settings
):
    """Serve the endpoint on loopback; yields (base URL, the in-process tool server's state)."""
    policy = policy or CalculatorAgent()
    tool_app = None if tools_url else create_tool_server(ServerConfig(latency=latency))
    tools = ToolClient.in_process(tool_app) if tool_app is not None else None
    config = ServeConfig(policy=policy.name, tools=tools_url, **settings)
    app = create_app(config, policy=policy, tools=tools)
    with serve_in_thread(app) as url:
        yield url, (tool_app.state.tool_server if tool_app is not None else None)


def sse_events(lines) -> list[tuple[str | None, dict]]:
    """(event name, data) pairs of an SSE stream, comments skipped."""
    out, name = [], None
    for line in lines:
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            out.append((name, json.loads(line.split(":", 1)[1])))
            name = None
    return out


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_openai_client_plain_and_streaming_with_a_budget():
    with agent_endpoint() as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "compute 6*7"}]
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, extra_body={"time_budget_s": 5}
        )
        header = client.chat.completions.create(
            model=MODEL, messages=messages, extra_headers={"X-Timely-Budget-S": "4"}
        )
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=messages,
                extra_body={"time_budget_s": 5},
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        models = client.models.list()
    assert reply.choices[0].message.content == "The answer is 42"
    assert reply.model_extra["timely"]["compliant"] is True
    assert header.model_extra["timely"]["budget_s"] == 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is 42"
    events = [
        c.model_extra["timely_event"]["type"] for c in chunks if c.model_extra.get("timely_event")
    ]
    assert events[0] == "episode_started" and events[-1] == "episode_ended"
    assert "tool_call" in events and "tool_result" in events
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert (
        finish[0].choices[0].finish_reason == "stop"
        and finish[0].model_extra["timely"]["compliant"]
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert [m.id for m in models.data] == [MODEL]


def test_openai_client_sees_errors_as_its_own_exceptions():
    with agent_endpoint(api_key="sesame") as (url, _):
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0)
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError, match="not served here"):
            good.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.UnprocessableEntityError, match="time_budget_s"):
            good.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"time_budget_s": -3},
            )


def test_runs_stream_server_sent_events_of_the_loop():
    with agent_endpoint() as (url, _):
        body = {
            "messages": [{"role": "user", "content": "compute 6*7"}],
            "time_budget_s": 5,
            "stream": True,
        }
        with httpx2.stream("POST", f"{url}/v1/runs", json=body, timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[0] == "run" and names[-1] == "summary"
    assert names[1:-1] == [data["type"] for _, data in events[1:-1]]
    assert {
        "episode_started",
        "generation_finished",
        "tool_call",
        "tool_result",
        "time_status",
        "episode_ended",
    } <= set(names)
    summary = events[-1][1]
    assert summary["status"] == "done" and summary["answer"] == "The answer is 42"
    assert all(data["run_id"] == summary["id"] for _, data in events[1:-1])


def test_a_client_that_disconnects_cancels_its_run_and_frees_the_tool_session():
    with agent_endpoint(latency="constant:30") as (url, tool_server):
        body = {"messages": [{"role": "user", "content": "compute 1+1"}], "time_budget_s": 60}
        # Non-streaming: the client gives up waiting while the tool call is in flight.
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(f"{url}/v1/runs", json=body, timeout=httpx2.Timeout(10, read=0.5))
        assert wait_until(lambda: _runs(url)[0]["status"] == "cancelled")
        assert wait_until(lambda: tool_server.sessions.live == 0)
        # Streaming: the client closes the stream after the tool call went out.
        with httpx2.stream(
            "POST", f"{url}/v1/runs", json={**body, "stream": True}, timeout=10
        ) as response:
            for line in response.iter_lines():
                if '"type":"tool_call"' in line:
                    break
        assert wait_until(lambda: _runs(url)[0]["status"] == "cancelled")
        assert wait_until(lambda: tool_server.sessions.live == 0)
        health = httpx2.get(f"{url}/health").json()
    assert health["in_flight"] == 0


def _runs(url: str) -> list[dict]:
    return httpx2.get(f"{url}/v1/runs", timeout=5).json()["data"]


def test_deadline_holds_against_a_slow_tool_server_over_http():
    with cli_tool_server("--latency", "constant:3") as (tools_url, _):
        with agent_endpoint(CalculatorAgent(calls=5), tools_url=tools_url, wrap_up_fraction=0) as (
            url,
            _,
        ):
            start = time.monotonic()
            r = httpx2.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "compute 2*2"}],
                    "time_budget_s": 1.0,
                },
                timeout=10,
            )
            waited = time.monotonic() - start
    timely = r.json()["timely"]
    assert r.status_code == 200 and timely["end_reason"] == "budget_exhausted"
    # Far below the 3 s the tool would take: the tool client sends the deadline, the server
    # answers 504 at it, and the loop ends the run (docs/serving.md gives the measured margin).
    assert timely["elapsed_s"] <= 1.5 and waited <= 2.5


def test_concurrent_clients_share_the_limit():
    results: list[int] = []
    with agent_endpoint(latency="constant:1.0", max_concurrent_runs=2) as (url, _):

        def one() -> None:
            body = {"messages": [{"role": "user", "content": "compute 1+2"}], "time_budget_s": 5}
            results.append(httpx2.post(f"{url}/v1/runs", json=body, timeout=10).status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(set(results)) <= [200, 429] and results.count(200) >= 2 and 429 in results
