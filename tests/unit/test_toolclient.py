import socket

import httpx2
import pytest

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import VirtualClock, WallClock
from timely.errors import ToolError, ToolServerUnavailable
from timely.policies.base import Deadline
from timely.toolclient import ToolBackend, ToolClient
from timely_server.app import ServerConfig, create_app
from timely_server.registry import ToolRegistry


def client_for(**config):
    return ToolClient.in_process(create_app(ServerConfig(**config)))


async def call(client, name, arguments, deadline, session_id="s"):
    return await client.call(
        name, arguments, call_id="c1", session_id=session_id, deadline=deadline
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_is_a_tool_backend_and_lists_tools():
    async with client_for() as client:
        assert isinstance(client, ToolBackend)
        tools = await client.list_tools()
        names = {t["function"]["name"] for t in tools}
        assert {"echo", "calculator"} <= names
        tools.clear()  # callers get a copy of the cache
        assert len(await client.list_tools()) == len(names)


async def test_success_charges_exactly_the_reported_latency_to_a_virtual_clock():
    clock = VirtualClock()
    async with client_for(latency="constant:2.5") as client:
        result = await call(client, "calculator", {"expression": "6 * 7"}, Deadline(100, clock))
    assert result.ok
    assert (result.call_id, result.name, result.content) == ("c1", "calculator", "42")
    assert result.latency_s == 2.5
    assert result.service_s == 0.0  # real time stays out of virtual records
    assert clock.now() == result.charged_s == clock.charged["tool"] == 2.5


async def test_service_time_can_be_charged_on_a_virtual_clock():
    clock = VirtualClock()
    app = create_app(ServerConfig(latency="constant:2.5"))
    async with ToolClient.in_process(app, charge_service_virtual=True) as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(100, clock))
    assert result.service_s > 0
    assert result.charged_s == pytest.approx(2.5 + result.service_s)
    assert clock.now() == pytest.approx(result.charged_s)


async def test_non_string_results_are_json_encoded():
    registry = ToolRegistry()

    @registry.register("stats", description="Numbers.", parameters={"type": "object"})
    async def stats(arguments, ctx):
        return {"mean": 1.5, "n": 2}

    app = create_app(ServerConfig(), registry)
    async with ToolClient.in_process(app) as client:
        result = await call(client, "stats", {}, Deadline(10, VirtualClock()))
    assert result.content == '{"mean": 1.5, "n": 2}'


@pytest.mark.parametrize(
    "name, arguments, error, fragment",
    [
        ("calculator", {"expression": "1/0"}, "tool_input_error", "division by zero"),
        ("echo", {"text": 3}, "invalid_arguments", "$.text"),
        ("eco", {"text": "x"}, "unknown_tool", "Did you mean: echo?"),
    ],
)
async def test_errors_become_results(name, arguments, error, fragment):
    clock = VirtualClock()
    async with client_for(latency=1) as client:
        result = await call(client, name, arguments, Deadline(10, clock))
    assert result.error == error
    assert result.content.startswith(f"Error ({error}): ")
    assert fragment in result.content
    # a tool input error still took the tool's latency; a rejected request took none
    assert clock.now() == (1.0 if error == "tool_input_error" else 0.0)


async def test_oversized_arguments_become_a_result():
    async with client_for(max_body_bytes=100) as client:
        result = await call(client, "echo", {"text": "x" * 500}, Deadline(10, VirtualClock()))
    assert result.error == "body_too_large"


async def test_virtual_deadline_charges_exactly_the_time_left():
    clock = VirtualClock(start=1.0)
    async with client_for(latency="constant:5") as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(3.0, clock))
    assert result.error == "deadline_exceeded"
    assert "deadline" in result.content
    assert result.charged_s == pytest.approx(2.0)
    assert clock.now() == pytest.approx(3.0)


async def test_no_time_left_means_no_call():
    clock = VirtualClock(start=5.0)
    async with client_for() as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(5.0, clock))
    assert result.error == "deadline_exceeded"
    assert result.charged_s == 0.0
    assert clock.now() == 5.0


async def test_wall_clock_deadline_is_kept_in_process():
    clock = WallClock()
    async with client_for(latency="constant:5") as client:
        deadline = Deadline(clock.now() + 0.2, clock)
        result = await call(client, "echo", {"text": "x"}, deadline)
    assert result.error == "deadline_exceeded"
    assert 0.19 <= result.charged_s < 0.2 + WALL_SLACK_S
    assert clock.charged["tool"] == result.charged_s


async def test_wall_clock_success_charges_the_measured_time():
    clock = WallClock()
    async with client_for(latency="constant:0.05") as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(clock.now() + 5, clock))
    assert result.ok
    assert 0.05 <= result.charged_s < 0.05 + WALL_SLACK_S
    assert clock.charged["tool"] == result.charged_s


async def test_sessions_are_passed_to_the_server():
    async def latencies(session):
        async with client_for(latency="uniform:0,10", seed=1) as client:
            out = []
            for _ in range(3):
                result = await call(
                    client, "echo", {"text": "x"}, Deadline(100, VirtualClock()), session
                )
                out.append(result.latency_s)
            return out

    assert await latencies("a") == await latencies("a")
    assert await latencies("a") != await latencies("b")


async def test_unreachable_server_raises_within_the_deadline():
    clock = WallClock()
    url = f"http://127.0.0.1:{closed_port()}"
    async with ToolClient(url) as client:
        deadline = Deadline(clock.now() + 1.0, clock)
        with pytest.raises(ToolServerUnavailable) as info:
            await call(client, "echo", {"text": "x"}, deadline)
    assert clock.now() < 1.0
    message = str(info.value)
    assert url in message and "retries" in message and "tool-server" in message


async def test_unreachable_server_raises_on_a_virtual_clock_too():
    clock = VirtualClock()
    url = f"http://127.0.0.1:{closed_port()}"
    async with ToolClient(url, max_retries=2) as client:
        with pytest.raises(ToolServerUnavailable, match="after 2 retries"):
            await call(client, "echo", {"text": "x"}, Deadline(10, clock))
        with pytest.raises(ToolServerUnavailable):
            await client.list_tools()
    assert clock.now() == 0.0


async def test_an_unbounded_deadline_sends_no_deadline():
    clock = WallClock()
    async with client_for(latency="constant:0.01") as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(float("inf"), clock))
    assert result.ok


async def test_injected_5xx_is_retried_recorded_and_charged_on_a_virtual_clock():
    clock = VirtualClock()
    app = create_app(ServerConfig(latency=1, faults="5xx=0.5", seed=3))
    kw = {"backoff_s": 0.001, "max_backoff_s": 0.004, "max_retries": 20}
    async with ToolClient.in_process(app, **kw) as client:
        results = []
        for i in range(12):
            results.append(await call(client, "echo", {"text": str(i)}, Deadline(1000, clock)))
    retried = [r for r in results if r.retries]
    assert retried and all(r.fault == "http_5xx" and r.ok for r in retried)
    assert all(r.fault is None for r in results if not r.retries)
    for r in retried:  # each retry waited its backoff, which a virtual clock charges too
        backoff = sum(min(0.004, 0.001 * 2**k) for k in range(r.retries))
        assert r.charged_s == pytest.approx(1.0 + backoff)
    assert clock.now() == pytest.approx(sum(r.charged_s for r in results))


async def test_retries_stop_when_the_budget_cannot_fit_them():
    app = create_app(ServerConfig(faults="5xx=1"))
    async with ToolClient.in_process(app, backoff_s=0.01, max_retries=3) as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(100, VirtualClock()))
        tight = await call(client, "echo", {"text": "x"}, Deadline(0.005, VirtualClock()))
    assert result.error == "injected_fault" and result.fault == "http_5xx"
    assert result.retries == 3 and "Error (injected_fault)" in result.content
    assert tight.retries == 0 and tight.error == "injected_fault"


async def test_hang_fault_is_a_deadline_result():
    clock = VirtualClock()
    async with client_for(faults="hang=1") as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(4, clock))
    assert result.error == "deadline_exceeded" and result.fault == "hang"
    assert result.charged_s == 4.0 and clock.now() == 4.0


async def test_fault_recorded_on_success_and_error_results():
    async with client_for(latency=1, faults="slow=1,slow_s=0.5") as client:
        slow = await call(client, "echo", {"text": "x"}, Deadline(10, VirtualClock()))
    assert slow.ok and slow.fault == "slow_first_byte" and slow.charged_s == 1.5
    async with client_for(faults="error=1") as client:
        failed = await call(client, "echo", {"text": "x"}, Deadline(10, VirtualClock()))
    assert failed.error == "tool_error" and failed.fault == "error"


async def test_sessions_from_the_client():
    clock = VirtualClock()
    async with client_for() as client:
        sid = await client.create_session("ep-7", ttl_s=60)
        assert sid == "ep-7"
        assert (await client.create_session()).startswith("s-")
        with pytest.raises(ToolError, match="session_exists"):
            await client.create_session("ep-7")
        assert (await call(client, "echo", {"text": "x"}, Deadline(10, clock), "ep-7")).ok
        assert await client.end_session("ep-7") is True
        assert await client.end_session("ep-7") is False
        gone = await call(client, "echo", {"text": "x"}, Deadline(10, clock), "ep-7")
        assert gone.error == "session_expired" and gone.charged_s == 0.0
        assert "POST /sessions" in gone.content
        assert await client.create_session("ep-7") == "ep-7"  # an ended id may start again
        assert (await call(client, "echo", {"text": "x"}, Deadline(10, clock), "ep-7")).ok


async def test_a_429_that_does_not_fit_the_budget_is_a_result():
    app = create_app(ServerConfig(max_live_sessions=1))
    async with ToolClient.in_process(app) as client:
        await client.create_session("a")
        result = await call(client, "echo", {"text": "x"}, Deadline(0.5, VirtualClock()), "b")
    assert result.error == "too_many_sessions" and result.retries == 0


async def test_an_unexplained_server_error_means_the_server_is_broken():
    def handler(request):
        return httpx2.Response(500, json={"error": {"type": "internal_error", "message": "bug"}})

    transport = httpx2.MockTransport(handler)
    async with ToolClient("http://x", transport=transport) as client:
        with pytest.raises(ToolServerUnavailable, match="HTTP 500"):
            await call(client, "echo", {"text": "x"}, Deadline(10, VirtualClock()))


async def test_a_retry_sends_the_deadline_that_is_left():
    seen = []

    def handler(request):
        seen.append(float(request.headers["X-Timely-Deadline-S"]))
        if len(seen) == 1:
            body = {
                "error": {"type": "injected_fault", "message": "x"},
                "fault": "http_5xx",
                "latency_s": 0.5,
                "service_s": 0.0,
            }
            return httpx2.Response(503, json=body)
        return httpx2.Response(200, json={"result": "ok", "latency_s": 1.0, "service_s": 0.0})

    clock = VirtualClock()
    transport = httpx2.MockTransport(handler)
    async with ToolClient("http://x", transport=transport, backoff_s=0.25) as client:
        result = await call(client, "echo", {"text": "x"}, Deadline(10, clock))
    assert seen == [10.0, 9.25]  # 0.5 s of failed attempt and 0.25 s of backoff were spent
    assert result.ok and result.retries == 1 and result.fault == "http_5xx"
    assert result.charged_s == 1.75 and clock.now() == 1.75
