"""Bad inputs over real HTTP on loopback: every one is a JSON 4xx, none a 500 or a hang."""

import socket
import time

import httpx2
import pytest

from timely_server.app import ServerConfig, running_server

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}", "X-Timely-Clock": "virtual"}


@pytest.fixture(scope="module")
def base_url():
    config = ServerConfig(port=0, api_key=KEY, max_body_bytes=20_000, session_ttl_s=0.2)
    with running_server(config) as url:
        yield url


def post(url, path, content, headers=AUTH):
    headers = {"content-type": "application/json", **headers}
    return httpx2.post(f"{url}{path}", content=content, headers=headers, trust_env=False, timeout=5)


@pytest.mark.parametrize(
    "path, body, status, kind",
    [
        ("/tools/echo", b'{"arguments": ', 400, "invalid_json"),
        ("/tools/echo", b"\xff\xfe\x00", 400, "invalid_json"),
        ("/tools/echo", b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        ("/tools/echo", b'{"arguments": {"text": "\\ud800"}}', 400, "invalid_json"),
        ("/tools/echo", b'{"arguments": ["x"]}', 422, "invalid_request"),
        ("/tools/echo", b'{"arguments": {}, "session_id": 7}', 422, "invalid_request"),
        ("/tools/echo", b'"just a string"', 422, "invalid_request"),
        ("/tools/echo", b'{"arguments": {"text": 5}}', 422, "invalid_arguments"),
        ("/tools/echo", b'{"arguments": {"text": 1e999}}', 422, "invalid_arguments"),
        (
            "/tools/echo",
            b'{"arguments": {"text": "' + b"x" * 30_000 + b'"}}',
            413,
            "body_too_large",
        ),
        ("/tools/nope", b'{"arguments": {}}', 404, "unknown_tool"),
        ("/tools/%00", b'{"arguments": {}}', 404, "unknown_tool"),
        ("/sessions", b'{"ttl_s": "long"}', 422, "invalid_request"),
    ],
)
def test_bad_bodies(base_url, path, body, status, kind):
    response = post(base_url, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind


def test_missing_or_wrong_token(base_url):
    body = b'{"arguments": {"text": "x"}}'
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        response = post(base_url, "/tools/echo", body, headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
    assert httpx2.get(f"{base_url}/health", trust_env=False).status_code == 200


def test_unknown_and_expired_sessions(base_url):
    assert post(base_url, "/sessions", b'{"session_id": "short"}').status_code == 201
    body = b'{"arguments": {"text": "x"}, "session_id": "short"}'
    assert post(base_url, "/tools/echo", body).status_code == 200
    time.sleep(0.3)  # past its TTL
    expired = post(base_url, "/tools/echo", body)
    assert expired.status_code == 410 and expired.json()["error"]["type"] == "session_expired"
    unknown = httpx2.delete(f"{base_url}/sessions/never", headers=AUTH, trust_env=False)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "unknown_session"


def test_chunked_oversized_body_and_a_lying_content_length(base_url):
    def chunks():
        for _ in range(10):
            yield b"x" * 5000

    response = httpx2.post(
        f"{base_url}/tools/echo", content=chunks(), headers=AUTH, trust_env=False, timeout=5
    )
    assert response.status_code == 413
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /tools/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {KEY}\r\n\r\n".encode()
            + b'{"arguments": {}}'
        )
        s.shutdown(socket.SHUT_WR)  # the body ends short of what was announced
        answer = s.recv(4096)
    # uvicorn closes or answers 4xx; either way the server survives and stays well
    assert not answer or answer.startswith(b"HTTP/1.1 4")
    ok = post(base_url, "/tools/echo", b'{"arguments": {"text": "still here"}}')
    assert ok.status_code == 200 and ok.json()["result"] == "still here"
