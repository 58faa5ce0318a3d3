import asyncio
import contextlib
import json
import logging

import httpx2
import pytest

from timely.clock import WallClock
from timely_server.app import ServerConfig, create_app
from timely_server.registry import ToolRegistry
from timely_server.security import ACCESS_LOGGER

VIRTUAL = {"X-Timely-Clock": "virtual"}


@contextlib.asynccontextmanager
async def client_for(app, headers=None):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://test", headers=headers or {}
    ) as client:
        yield client


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/tools"),
        ("POST", "/tools/echo"),
        ("GET", "/metrics"),
        ("POST", "/sessions"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("POST", "/mcp"),
        ("GET", "/nowhere"),
    ],
)
async def test_api_key_is_required_everywhere_but_health(method, path):
    app = create_app(ServerConfig(api_key="sesame"))
    async with client_for(app) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sesame"}):
            response = await client.request(method, path, headers=auth, json={"arguments": {}})
            assert response.status_code == 401, (auth, response.text)
            assert response.json()["error"]["type"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
    async with client_for(app, {"Authorization": "Bearer sesame"}) as client:
        ok = await client.post("/tools/echo", json={"arguments": {"text": "x"}})
        assert ok.status_code == 200 and ok.json()["result"] == "x"


def test_the_key_never_shows_in_the_config_dump():
    config = ServerConfig(api_key="sesame")
    assert "sesame" not in repr(config) and "sesame" not in str(config.model_dump())


async def test_concurrency_limit_answers_429_with_retry_after():
    release = asyncio.Event()
    registry = ToolRegistry()

    @registry.register("block", description="Waits.", parameters={"type": "object"})
    async def block(arguments, ctx):
        await release.wait()
        return "done"

    app = create_app(ServerConfig(max_concurrency=2), registry)
    async with client_for(app) as client:
        running = [
            asyncio.create_task(client.post("/tools/block", json={}, headers=VIRTUAL))
            for _ in range(2)
        ]
        while app.state.tool_server.in_flight < 2:
            await asyncio.sleep(0.005)
        refused = await client.post("/tools/block", json={}, headers=VIRTUAL)
        release.set()
        done = await asyncio.gather(*running)
        after = await client.post("/tools/block", json={}, headers=VIRTUAL)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["type"] == "overloaded"
    assert [r.json()["result"] for r in done] == ["done", "done"]
    assert after.status_code == 200


async def test_access_log_is_one_json_line_per_request(caplog):
    app = create_app(ServerConfig(access_log=True, latency=0.5))
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        async with client_for(app) as client:
            body = {"arguments": {"text": "x"}, "session_id": "ep"}
            await client.post("/tools/echo", json=body, headers=VIRTUAL)
            await client.post("/tools/nope", json=body)
            await client.get("/health")
    records = [json.loads(r.message) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 3
    call, unknown, health = records
    assert call["method"] == "POST" and call["path"] == "/tools/echo" and call["status"] == 200
    assert call["tool"] == "echo" and call["session"] == "ep" and call["latency_s"] == 0.5
    assert call["fault"] is None and call["service_s"] >= 0 and call["duration_s"] >= 0
    assert unknown["status"] == 404 and unknown["tool"] == "nope"
    assert health["status"] == 200 and "tool" not in health


async def test_no_access_log_by_default(caplog):
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        async with client_for(create_app(ServerConfig())) as client:
            await client.get("/health")
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_mcp_without_the_lifespan_says_how_to_start_it():
    async with client_for(create_app(ServerConfig())) as client:
        response = await client.post("/mcp", json={})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "mcp_not_started"
    async with client_for(create_app(ServerConfig(mcp=False))) as client:
        assert (await client.post("/mcp", json={})).status_code == 404


async def test_disconnect_abandons_the_wall_wait():
    """A client that goes away stops the injected wait (the slot is freed at once)."""
    app = create_app(ServerConfig(latency=30))
    server = app.state.tool_server
    sent = []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b'{"arguments": {"text": "x"}}'}
        return {"type": "http.disconnect"}

    messages = []

    async def send(message):
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/tools/echo",
        "raw_path": b"/tools/echo",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
    }
    wall = WallClock()
    t0 = wall.now()
    await app(scope, receive, send)
    assert wall.now() - t0 < 1.0
    assert server.in_flight == 0
    metrics = server.metrics.render().decode()
    assert 'timely_tool_cancelled_total{tool="echo",transport="http"} 1.0' in metrics
