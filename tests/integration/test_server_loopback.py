"""A real uvicorn tool server on 127.0.0.1, a real HTTP client, wall-clock latency."""

import httpx2
import pytest

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import VirtualClock, WallClock
from timely.errors import ToolServerUnavailable
from timely.policies.base import Deadline
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, running_server


@pytest.fixture(scope="module")
def base_url():
    config = ServerConfig(port=0, latency="constant:0.2", per_tool_latency={"calculator": 0})
    with running_server(config) as url:
        yield url


def test_binds_loopback_on_a_free_port(base_url):
    assert base_url.startswith("http://127.0.0.1:")
    assert not base_url.endswith(":0")
    response = httpx2.get(f"{base_url}/health", timeout=5, trust_env=False)
    assert response.json() == {"status": "ok"}


async def test_lists_tools_and_echoes(base_url):
    clock = WallClock()
    async with ToolClient(base_url) as client:
        names = {t["function"]["name"] for t in await client.list_tools()}
        assert {"echo", "calculator"} <= names
        result = await client.call(
            "calculator",
            {"expression": "2 ** 10"},
            call_id="c",
            session_id="s",
            deadline=Deadline(clock.now() + 5, clock),
        )
    assert result.content == "1024"


async def test_wall_latency_is_injected_accurately(base_url):
    clock = WallClock()
    async with ToolClient(base_url) as client:
        for i in range(3):
            t0 = clock.now()
            result = await client.call(
                "echo",
                {"text": f"hi {i}"},
                call_id=str(i),
                session_id="s",
                deadline=Deadline(clock.now() + 5, clock),
            )
            elapsed = clock.now() - t0
            assert result.content == f"hi {i}"
            assert result.latency_s == 0.2
            assert 0.2 <= elapsed < 0.2 + WALL_SLACK_S
            assert result.charged_s == pytest.approx(elapsed, abs=0.01)


async def test_wall_deadline_answers_504_at_the_deadline():
    clock = WallClock()
    with running_server(ServerConfig(port=0, latency="constant:5")) as url:
        async with ToolClient(url) as client:
            t0 = clock.now()
            result = await client.call(
                "echo",
                {"text": "late"},
                call_id="c",
                session_id="s",
                deadline=Deadline(clock.now() + 0.08, clock),
            )
            elapsed = clock.now() - t0
    assert result.error == "deadline_exceeded"
    assert "could not answer before the deadline" in result.content  # the server's 504
    assert 0.08 <= elapsed < 0.08 + WALL_SLACK_S  # not the 5 s latency


async def test_virtual_mode_over_http_does_not_sleep(base_url):
    clock, wall = VirtualClock(), WallClock()
    async with ToolClient(base_url) as client:
        for _ in range(25):
            await client.call(
                "echo",
                {"text": "x"},
                call_id="c",
                session_id="v",
                deadline=Deadline(100, clock),
            )
    assert clock.now() == pytest.approx(5.0, abs=0.1)
    assert wall.now() < 2.5  # half the 5 s it would have slept


async def test_server_stops_when_the_block_exits():
    with running_server(ServerConfig(port=0)) as url:
        assert httpx2.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200
    clock = WallClock()
    async with ToolClient(url, max_retries=1) as client:
        with pytest.raises(ToolServerUnavailable, match=url):
            await client.call(
                "echo",
                {"text": "x"},
                call_id="c",
                session_id=None,
                deadline=Deadline(clock.now() + 1, clock),
            )


def test_a_taken_port_fails_clearly(base_url):
    port = int(base_url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="did not start"):
        with running_server(ServerConfig(port=port)):
            pass
