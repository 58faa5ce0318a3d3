"""The official MCP client (``mcp`` SDK) against ``/mcp`` on a real uvicorn on 127.0.0.1."""

import json

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import WallClock
from timely_server.app import ServerConfig, running_server
from timely_server.registry import default_registry

MODES = ["auto", "legacy"]  # auto negotiates the 2026 protocol; legacy the 2025 handshake


def registry_with_counter():
    registry = default_registry()

    @registry.register(
        "count",
        description="Counts calls per session.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
    )
    async def count(arguments, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return ctx.state["n"]

    return registry


@pytest.fixture(scope="module")
def base_url():
    config = ServerConfig(port=0, latency="constant:0.2", per_tool_latency={"calculator": 0})
    with running_server(config, registry_with_counter()) as url:
        yield url


def client(base_url, mode="auto", headers=None):
    http = httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30), trust_env=False)
    return Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode)


def metric(base_url, prefix):
    text = httpx2.get(f"{base_url}/metrics", trust_env=False).text
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.mark.parametrize("mode", MODES)
async def test_lists_the_registry_tools(base_url, mode):
    async with client(base_url, mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert {"echo", "calculator", "count"} <= set(tools)
    served = {
        t["function"]["name"]: t["function"]
        for t in httpx2.get(f"{base_url}/tools", trust_env=False).json()["tools"]
    }
    assert tools["echo"].input_schema == served["echo"]["parameters"]
    assert tools["echo"].description == served["echo"]["description"]


@pytest.mark.parametrize("mode", MODES)
async def test_calls_see_the_injected_latency(base_url, mode):
    wall = WallClock()
    async with client(base_url, mode) as c:
        t0 = wall.now()
        result = await c.call_tool("echo", {"text": "hello"})
        elapsed = wall.now() - t0
        calc = await c.call_tool("calculator", {"expression": "6 * 7"})
    assert not result.is_error and result.content[0].text == "hello"
    assert result.meta["timely/latency_s"] == 0.2 and result.meta["timely/status"] == 200
    assert 0.2 <= elapsed < 0.2 + WALL_SLACK_S
    assert calc.content[0].text == "42" and calc.meta["timely/latency_s"] == 0.0


@pytest.mark.parametrize("mode", MODES)
async def test_virtual_clock_and_deadline_through_meta(base_url, mode):
    wall = WallClock()
    async with client(base_url, mode) as c:
        t0 = wall.now()
        for _ in range(20):  # 4 s of latency, reported, not waited
            fast = await c.call_tool("echo", {"text": "x"}, meta={"timely/clock": "virtual"})
        assert wall.now() - t0 < 2.0
        late = await c.call_tool(
            "echo", {"text": "x"}, meta={"timely/clock": "virtual", "timely/deadline_s": 0.05}
        )
    assert fast.meta["timely/latency_s"] == 0.2 and not fast.is_error
    assert late.is_error and late.meta["timely/status"] == 504
    assert (
        late.meta["timely/error"] == "deadline_exceeded" and late.meta["timely/latency_s"] == 0.05
    )
    assert "deadline" in late.content[0].text


async def test_virtual_clock_and_deadline_through_headers(base_url):
    headers = {"X-Timely-Clock": "virtual", "X-Timely-Deadline-S": "0.1"}
    async with client(base_url, headers=headers) as c:
        late = await c.call_tool("echo", {"text": "x"})
        ok = await c.call_tool("calculator", {"expression": "1 + 1"})
    assert late.is_error and late.meta["timely/status"] == 504
    assert ok.content[0].text == "2"


@pytest.mark.parametrize("mode", MODES)
async def test_errors(base_url, mode):
    async with client(base_url, mode) as c:
        bad = await c.call_tool("echo", {"text": 5}, meta={"timely/clock": "virtual"})
        refused = await c.call_tool("calculator", {"expression": "1/0"})
        with pytest.raises(MCPError, match="Did you mean: echo"):
            await c.call_tool("ecoh", {"text": "x"})
    assert bad.is_error and bad.meta["timely/error"] == "invalid_arguments"
    assert "$.text" in bad.content[0].text
    assert refused.is_error and "division by zero" in refused.content[0].text


async def test_sessions_are_shared_with_plain_http(base_url):
    meta = {"timely/clock": "virtual", "timely/session_id": "shared-ep"}
    async with client(base_url) as c:
        first = await c.call_tool("count", {}, meta=meta)
        second = await c.call_tool("count", {}, meta=meta)
    third = httpx2.post(
        f"{base_url}/tools/count",
        json={"arguments": {}, "session_id": "shared-ep"},
        headers={"X-Timely-Clock": "virtual"},
        trust_env=False,
    ).json()
    assert [first.content[0].text, second.content[0].text, third["result"]] == ["1", "2", 3]


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_call_cancels_the_injected_wait(mode):
    with running_server(ServerConfig(port=0, latency="constant:30")) as url:
        async with client(url, mode) as c:
            wall = WallClock()
            t0 = wall.now()
            with anyio.move_on_after(0.3):
                await c.call_tool("echo", {"text": "x"})
            assert wall.now() - t0 < 1.0
            for _ in range(100):  # the server notices within a moment
                if metric(url, 'timely_tool_cancelled_total{tool="echo",transport="mcp"}') == 1:
                    break
                await anyio.sleep(0.02)
            assert metric(url, 'timely_tool_cancelled_total{tool="echo",transport="mcp"}') == 1
            assert metric(url, 'timely_tool_in_flight{tool="echo"}') == 0


async def test_api_key_applies_to_mcp():
    with running_server(ServerConfig(port=0, api_key="sesame")) as url:
        async with client(url, headers={"Authorization": "Bearer sesame"}) as c:
            assert (await c.call_tool("echo", {"text": "x"})).content[0].text == "x"
        with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the 401 its own way
            with anyio.fail_after(10):
                async with client(url) as c:
                    await c.list_tools()


@pytest.mark.parametrize("mode", MODES)
async def test_titles_hints_and_structured_results(base_url, mode):
    """The SDK client validates structuredContent against the listed outputSchema itself."""
    async with client(base_url, mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        program = await c.call_tool(
            "run_python", {"code": "print(6 * 7)"}, meta={"timely/clock": "virtual"}
        )
        failed = await c.call_tool("run_python", {"code": ""}, meta={"timely/clock": "virtual"})
        echoed = await c.call_tool("echo", {"text": "hi"}, meta={"timely/clock": "virtual"})
    echo, run = tools["echo"], tools["run_python"]
    assert echo.title == "Echo" and echo.output_schema is None
    assert echo.annotations.read_only_hint and not echo.annotations.destructive_hint
    assert echo.annotations.open_world_hint is False
    assert run.annotations.destructive_hint and not run.annotations.read_only_hint
    assert run.output_schema["type"] == "object" and "stdout" in run.output_schema["properties"]
    assert tools["describe_data"].output_schema["required"][0] == "task"
    assert not program.is_error and program.structured_content["stdout"] == "42\n"
    assert program.structured_content == json.loads(program.content[0].text)
    assert failed.is_error and failed.structured_content is None  # errors stay text
    assert echoed.structured_content is None and echoed.content[0].text == "hi"
