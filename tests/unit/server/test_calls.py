"""The hot path (timely_server.calls, dispatched by ToolServerApp) answers as the FastAPI route.

Tool calls skip FastAPI's per-request machinery; the route stays registered (the OpenAPI schema
documents it) and serves the same endpoint when the dispatch does not apply (a ``root_path``).
Both paths must give the same status, body bytes and headers for every kind of request.
"""

import contextlib

import httpx2
import pytest

from timely_server.app import ServerConfig, ToolServerApp, create_app
from timely_server.calls import json_bytes

CONFIG = ServerConfig(latency="uniform:0,2", max_body_bytes=256, faults="error=0.2")
CASES = [
    ("echo", b'{"arguments": {"text": "hi"}, "session_id": "s1"}', {}),
    ("echo", b'{"arguments": {"text": "h\\u00e9 \\ud83d\\ude00"}}', {}),
    ("echo", b'{"arguments": {"text": "hi"}, "session_id": null}', {}),
    ("calculator", b'{"arguments": {"expression": "6*7"}}', {}),
    ("echo", b'{"arguments": {"text": 5}}', {}),  # 422 invalid_arguments
    ("echo", b'{"arguments": [], "session_id": "s"}', {}),  # 422 invalid_request
    ("echo", b'{"arguments": {}, "session_id": ""}', {}),  # 422: empty session id
    ("echo", b'{"arguments": {}, "extra": 1}', {}),  # 422: unknown field
    ("echo", b'{"arguments": {"text": "x"}, "session_id": 7}', {}),  # 422: not a string
    ("echo", b"[1, 2]", {}),  # 422
    ("echo", b"{not json", {}),  # 400 invalid_json
    ("echo", b'"\\ud800"', {}),  # 400: a lone surrogate
    ("echo", b"", {}),  # 400: no body
    ("nope", b'{"arguments": {}}', {}),  # 404 unknown_tool
    ("echo", b'{"arguments": {"text": "' + b"x" * 300 + b'"}}', {}),  # 413
    ("echo", b'{"arguments": {"text": "x"}}', {"X-Timely-Clock": "sundial"}),  # 400
    ("echo", b'{"arguments": {"text": "x"}}', {"X-Timely-Deadline-S": "nan"}),  # 400
    ("echo", b'{"arguments": {"text": "x"}}', {"X-Timely-Deadline-S": "0.5"}),  # maybe 504
    ("echo", b'{"arguments": {"text": "x"}}', {"X-Timely-Deadline-S": "-1"}),  # 504
]


@contextlib.asynccontextmanager
async def client_for(app):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def comparable(response: httpx2.Response) -> tuple:
    """Everything but what is measured (service_s, Server-Timing, hence Content-Length)."""
    measured = ("server-timing", "content-length")
    headers = {k: v for k, v in response.headers.items() if k not in measured}
    body = response.json()
    if isinstance(body, dict):
        body.pop("service_s", None)
    # The hot path splices a pre-encoded result into the body: the bytes must still be
    # exactly what Starlette's JSONResponse makes of the same object.
    assert response.content == json_bytes(response.json())
    return response.status_code, body, headers


async def test_the_hot_path_answers_as_the_fastapi_route_does():
    hot = create_app(CONFIG)
    routed = create_app(CONFIG)
    routed.tool_calls = None  # every request takes FastAPI's route (as under a root_path)
    async with client_for(hot) as a, client_for(routed) as b:
        for name, body, headers in CASES:
            headers = {"X-Timely-Clock": "virtual", "Content-Type": "application/json", **headers}
            answers = [
                await c.post(f"/tools/{name}", content=body, headers=headers) for c in (a, b)
            ]
            assert comparable(answers[0]) == comparable(answers[1]), (name, body)
            ran = answers[0].status_code in (200, 503, 504)  # the call reached execute()
            assert ("server-timing" in answers[0].headers) == ran
        metrics = [(await c.get("/metrics")).text for c in (a, b)]
    # Counts and injected latencies agree; measured seconds (service, duration) cannot.
    measured = ("_created", "_service_seconds", "_request_duration_seconds")
    lines = [
        sorted(ln for ln in m.splitlines() if not any(key in ln for key in measured))
        for m in metrics
    ]
    assert lines[0] == lines[1]


async def test_a_root_path_takes_the_route_and_still_calls_the_tool():
    app = create_app(ServerConfig())
    assert isinstance(app, ToolServerApp) and app.tool_calls is not None  # dispatch is on
    transport = httpx2.ASGITransport(app=app, root_path="/prefix")
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/prefix/tools/echo", json={"arguments": {"text": "hi"}})
    assert response.status_code == 200 and response.json()["result"] == "hi"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/tools/echo", 405),
        ("POST", "/tools/echo/x", 404),
        ("POST", "/tools/", 307),  # FastAPI's redirect to /tools (which then answers 405)
    ],
)
async def test_other_requests_under_tools_keep_fastapi_answers(method, path, status):
    async with client_for(create_app(ServerConfig())) as client:
        response = await client.request(method, path, json={"arguments": {}})
    assert response.status_code == status
    if status != 307:
        assert response.json()["error"]["type"] in ("method_not_allowed", "not_found")


async def test_middleware_added_later_sees_tool_calls_too():
    seen = []

    class Spy:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    app = create_app(ServerConfig())
    app.add_middleware(Spy)
    async with client_for(app) as client:
        response = await client.post("/tools/echo", json={"arguments": {"text": "hi"}})
    assert response.status_code == 200 and response.json()["result"] == "hi"
    assert seen == ["/tools/echo"]


async def test_a_server_bug_on_the_hot_path_is_a_json_500(monkeypatch):
    app = create_app(ServerConfig())

    def broken(tooldef, arguments):
        raise RuntimeError("bug")

    monkeypatch.setattr(app.state.tool_server, "check_arguments", broken)
    async with client_for(app) as client:
        response = await client.post("/tools/echo", json={"arguments": {"text": "hi"}})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "type": "internal_error",
        "message": "the tool server failed: RuntimeError",
    }
