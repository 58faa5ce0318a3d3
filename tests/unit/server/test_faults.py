import contextlib

import httpx2
import pytest
from pydantic import ValidationError

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import WallClock
from timely.errors import ConfigError
from timely.rng import make_rng
from timely_server.app import ServerConfig, create_app
from timely_server.faults import Fault, FaultConfig, FaultSpec

VIRTUAL = {"X-Timely-Clock": "virtual"}


@contextlib.asynccontextmanager
async def client_for(config):
    app = create_app(config)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        client.app = app
        yield client


async def call(client, session_id="s", headers=VIRTUAL, tool="echo", arguments=None):
    body = {"arguments": arguments or {"text": "x"}, "session_id": session_id}
    return await client.post(f"/tools/{tool}", json=body, headers=headers)


def test_spec_forms_and_validation():
    spec = FaultSpec.model_validate("error=0.05,5xx=0.01,hang=0.02,slow=0.1,slow_s=2")
    assert spec == FaultSpec(
        error_rate=0.05,
        http_5xx_rate=0.01,
        hang_rate=0.02,
        slow_first_byte_rate=0.1,
        slow_first_byte_s=2.0,
    )
    assert spec.describe() == "error=0.05,5xx=0.01,hang=0.02,slow=0.1@2s"
    assert FaultSpec().describe() == "none" and not FaultSpec().enabled
    for bad in ["error=2", "error=0.6,5xx=0.6", "oops=1", "error", "error=lots"]:
        with pytest.raises(ValidationError):
            FaultSpec.model_validate(bad)
    config = FaultConfig(default="error=0.1", per_tool={"echo": {}})
    assert config.spec_for("echo") == FaultSpec() and config.spec_for("x").error_rate == 0.1
    with pytest.raises(ConfigError, match="Did you mean: echo"):
        create_app(ServerConfig(per_tool_faults={"ecco": "error=0.1"}))


def test_draws_hit_the_configured_rates_exactly_once_each():
    spec = FaultSpec(error_rate=0.1, http_5xx_rate=0.05, hang_rate=0.02, slow_first_byte_rate=0.2)
    rng = make_rng(0, "t")
    draws = [spec.draw(rng) for _ in range(50_000)]
    share = {f: draws.count(f) / len(draws) for f in Fault}
    assert share[Fault.ERROR] == pytest.approx(0.1, abs=0.01)
    assert share[Fault.HTTP_5XX] == pytest.approx(0.05, abs=0.01)
    assert share[Fault.HANG] == pytest.approx(0.02, abs=0.005)
    assert share[Fault.SLOW_FIRST_BYTE] == pytest.approx(0.2, abs=0.01)


async def test_injected_error_is_a_result_with_the_latency():
    async with client_for(ServerConfig(latency=2, faults="error=1")) as client:
        response = await call(client)
    assert response.status_code == 200
    body = response.json()
    assert body["fault"] == "error" and body["result"] is None
    assert body["error"]["type"] == "tool_error" and "injected" in body["error"]["message"]
    assert body["latency_s"] == 2.0


async def test_injected_5xx_is_a_503_naming_the_fault():
    async with client_for(ServerConfig(latency=2, faults="5xx=1")) as client:
        response = await call(client)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["type"] == "injected_fault" and body["fault"] == "http_5xx"
    assert body["latency_s"] == 0.0
    assert 'timely_tool_faults_total{kind="http_5xx",tool="echo"} 1.0' in metrics


async def test_injected_hang_waits_for_the_deadline():
    async with client_for(ServerConfig(faults="hang=1", hang_timeout_s=7)) as client:
        virtual = await call(client, headers={**VIRTUAL, "X-Timely-Deadline-S": "3"})
        no_deadline = await call(client)
        wall = WallClock()
        t0 = wall.now()
        real = await call(client, headers={"X-Timely-Deadline-S": "0.1"})
        elapsed = wall.now() - t0
    assert virtual.status_code == 504
    assert virtual.json()["fault"] == "hang" and virtual.json()["latency_s"] == 3.0
    assert virtual.json()["error"]["type"] == "deadline_exceeded"
    assert no_deadline.json()["latency_s"] == 7.0  # hang_timeout_s bounds it
    assert real.status_code == 504 and 0.1 <= elapsed < 0.1 + WALL_SLACK_S


async def test_slow_first_byte_adds_its_delay_and_can_miss_the_deadline():
    config = ServerConfig(latency=1, faults="slow=1,slow_s=2.5")
    async with client_for(config) as client:
        body = (await call(client)).json()
        late = await call(client, headers={**VIRTUAL, "X-Timely-Deadline-S": "3"})
        wall = WallClock()
        t0 = wall.now()
        async with client_for(ServerConfig(latency=0.02, faults="slow=1,slow_s=0.1")) as fast:
            real = (await call(fast, headers={})).json()
        elapsed = wall.now() - t0
    assert body["fault"] == "slow_first_byte" and body["latency_s"] == 3.5
    assert body["result"] == "x"
    assert late.status_code == 504 and late.json()["fault"] == "slow_first_byte"
    assert real["latency_s"] == pytest.approx(0.12) and elapsed >= 0.12


async def test_faults_do_not_change_the_latency_stream_and_are_seeded_per_session():
    async def run(config):
        async with client_for(config) as client:
            out = []
            for i in range(40):
                body = (await call(client, session_id=f"s{i % 2}")).json()
                out.append((body.get("latency_s"), body.get("fault")))
            return out

    clean = await run(ServerConfig(latency="uniform:0,10", seed=5))
    faulty = await run(ServerConfig(latency="uniform:0,10", seed=5, faults="error=0.5"))
    again = await run(ServerConfig(latency="uniform:0,10", seed=5, faults="error=0.5"))
    assert [lat for lat, _ in clean] == [lat for lat, _ in faulty]
    assert faulty == again
    assert 5 < sum(f == "error" for _, f in faulty) < 35


async def test_per_tool_faults_replace_the_default():
    config = ServerConfig(faults="error=1", per_tool_faults={"calculator": {}})
    async with client_for(config) as client:
        echo = (await call(client)).json()
        calc = (await call(client, tool="calculator", arguments={"expression": "1+1"})).json()
    assert echo["fault"] == "error"
    assert calc["fault"] is None and calc["result"] == "2"
