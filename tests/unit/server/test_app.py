import contextlib

import httpx2
import pytest

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import WallClock
from timely.errors import ConfigError
from timely_server.app import ServerConfig, create_app
from timely_server.registry import ToolDef, ToolInputError, ToolRegistry, default_registry

VIRTUAL = {"X-Timely-Clock": "virtual"}


@contextlib.asynccontextmanager
async def client_for(app):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def client():
    async with client_for(create_app(ServerConfig())) as c:
        yield c


async def call(client, name, arguments, *, headers=None, session_id=None):
    body = {"arguments": arguments, "session_id": session_id}
    return await client.post(f"/tools/{name}", json=body, headers=headers or {})


def assert_error(response, status, type, fragment=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type
    assert fragment in error["message"]
    return error["message"]


async def test_health(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_tools_are_published_in_openai_shape(client):
    tools = (await client.get("/tools")).json()["tools"]
    by_name = {t["function"]["name"]: t for t in tools}
    assert {"echo", "calculator"} <= set(by_name)
    for t in tools:
        assert t["type"] == "function"
        assert set(t["function"]) == {"name", "description", "parameters"}
        assert t["function"]["parameters"]["type"] == "object"
    assert by_name["echo"]["function"]["parameters"]["required"] == ["text"]


async def test_echo(client):
    response = await call(client, "echo", {"text": "hello"})
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == "hello"
    assert body["error"] is None
    assert body["latency_s"] == 0.0
    assert 0 <= body["service_s"] < 0.5


@pytest.mark.parametrize(
    "expression, value",
    [
        ("1 + 2 * 3", "7"),
        ("7 / 2", "3.5"),
        ("1 / 3", "0.3333333333"),
        ("8 / 2", "4"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("-(3 // 2) % 5", "4"),
        ("sqrt(16) + abs(-2) + floor(2.7) + ceil(0.2)", "9"),
        ("round(2.675, 2) + min(1, 2) + max(3, 4)", "7.67"),
        ("0.1 + 0.2", "0.3"),
    ],
)
async def test_calculator_values(client, expression, value):
    body = (await call(client, "calculator", {"expression": expression})).json()
    assert body == {**body, "result": value, "error": None}


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("1 / 0", "division by zero"),
        ("2 +", "invalid syntax"),
        ("__import__('os').system('true')", "unknown function"),
        ("__import__('os')", "unknown function '__import__'"),
        ("x + 1", "unsupported syntax"),
        ("(1).real", "unsupported syntax"),
        ("2 ** 5000", "exponents above 1000"),
        ("9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999", "more than 4000 digits"),
        ("sqrt(-1)", "math domain error"),
        ("'a' * 3", "only numbers"),
    ],
)
async def test_calculator_errors_are_observations(client, expression, fragment):
    response = await call(client, "calculator", {"expression": expression})
    assert response.status_code == 200  # the model sees it as a tool result
    body = response.json()
    assert body["result"] is None
    assert body["error"]["type"] == "tool_input_error"
    assert fragment in body["error"]["message"]


async def test_virtual_mode_reports_latency_without_sleeping():
    wall = WallClock()
    async with client_for(create_app(ServerConfig(latency="constant:5"))) as client:
        t0 = wall.now()
        body = (await call(client, "echo", {"text": "x"}, headers=VIRTUAL)).json()
        elapsed = wall.now() - t0
    assert body["result"] == "x"
    assert body["latency_s"] == 5.0
    assert elapsed < 1.0


async def test_wall_mode_sleeps_the_latency():
    wall = WallClock()
    async with client_for(create_app(ServerConfig(latency="constant:0.05"))) as client:
        t0 = wall.now()
        body = (await call(client, "echo", {"text": "x"})).json()
        elapsed = wall.now() - t0
    assert body["latency_s"] == 0.05
    assert 0.05 <= elapsed < 0.05 + WALL_SLACK_S


async def test_deadline_in_virtual_mode_answers_504_at_the_deadline():
    wall = WallClock()
    async with client_for(create_app(ServerConfig(latency="constant:5"))) as client:
        t0 = wall.now()
        headers = {**VIRTUAL, "X-Timely-Deadline-S": "2.5"}
        response = await call(client, "echo", {"text": "x"}, headers=headers)
        assert wall.now() - t0 < 1.0
        headers = {**VIRTUAL, "X-Timely-Deadline-S": "5.01"}
        ok = await call(client, "echo", {"text": "x"}, headers=headers)
    message = assert_error(response, 504, "deadline_exceeded", "latency of 5.000 s")
    assert "2.500 s left" in message
    assert response.json()["latency_s"] == 2.5
    assert ok.status_code == 200  # latency + service fit in the time left


async def test_deadline_in_wall_mode_waits_only_until_the_deadline():
    wall = WallClock()
    async with client_for(create_app(ServerConfig(latency="constant:5"))) as client:
        t0 = wall.now()
        response = await call(client, "echo", {"text": "x"}, headers={"X-Timely-Deadline-S": "0.1"})
        elapsed = wall.now() - t0
    assert_error(response, 504, "deadline_exceeded")
    assert 0.1 <= elapsed < 0.1 + WALL_SLACK_S  # not the 5 s latency


def _sleeper(seconds: float) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.register("slow", description="Sleeps.", parameters={"type": "object"})
    async def slow(arguments, ctx):
        await WallClock().sleep(seconds)
        return "done"

    return registry


async def test_slow_handler_is_cut_off_at_the_deadline():
    wall = WallClock()
    async with client_for(create_app(ServerConfig(), _sleeper(5))) as client:
        t0 = wall.now()
        response = await call(client, "slow", {}, headers={"X-Timely-Deadline-S": "0.2"})
        elapsed = wall.now() - t0
    assert_error(response, 504, "deadline_exceeded", "own work")
    assert elapsed < 1.0
    assert response.json()["service_s"] >= 0.2


async def test_virtual_deadlines_never_cut_real_work_but_a_cap_does():
    # Real work is not charged on a virtual clock, so a virtual deadline must not decide
    # whether it finishes (replays would depend on machine load).
    async with client_for(create_app(ServerConfig(), _sleeper(0.3))) as client:
        headers = {**VIRTUAL, "X-Timely-Deadline-S": "0.1"}
        response = await call(client, "slow", {}, headers=headers)
    assert response.status_code == 200 and response.json()["result"] == "done"
    capped = ServerConfig(virtual_work_cap_s=0.1)
    async with client_for(create_app(capped, _sleeper(5))) as client:
        response = await call(client, "slow", {}, headers=VIRTUAL)
    assert_error(response, 504, "deadline_exceeded", "cap on real work")


@pytest.mark.parametrize("value", ["soon", "nan", "inf", ""])
async def test_bad_deadline_header(client, value):
    response = await call(client, "echo", {"text": "x"}, headers={"X-Timely-Deadline-S": value})
    assert_error(response, 400, "invalid_header", "X-Timely-Deadline-S")


async def test_bad_clock_header(client):
    response = await call(client, "echo", {"text": "x"}, headers={"X-Timely-Clock": "sundial"})
    assert_error(response, 400, "invalid_header", "'wall' or 'virtual'")


async def test_invalid_json(client):
    response = await client.post("/tools/echo", content=b'{"arguments": ')
    assert_error(response, 400, "invalid_json", "not valid JSON")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"arguments": ["x"]}, "arguments: Input should be a valid dictionary"),
        ({"arguments": {}, "session_id": 5}, "session_id"),
        ({"arguments": {}, "extra": 1}, "extra: Extra inputs"),
        ([1, 2], "body"),
    ],
)
async def test_request_of_the_wrong_shape(client, body, fragment):
    response = await client.post("/tools/echo", json=body)
    assert_error(response, 422, "invalid_request", fragment)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ({"text": 5}, "at $.text: 5 is not of type 'string'"),
        ({}, "at $: 'text' is a required property"),
        ({"text": "x", "loud": True}, "Additional properties"),
    ],
)
async def test_arguments_failing_the_schema(client, arguments, fragment):
    response = await call(client, "echo", arguments)
    assert_error(response, 422, "invalid_arguments", fragment)


async def test_unknown_tool_suggests_a_name(client):
    response = await call(client, "ecoh", {"text": "x"})
    assert_error(response, 404, "unknown_tool", "Did you mean: echo?")


async def test_oversized_body():
    async with client_for(create_app(ServerConfig(max_body_bytes=1000))) as client:
        big = await call(client, "echo", {"text": "x" * 2000})
        assert_error(big, 413, "body_too_large", "1000 bytes")

        async def chunks():  # no Content-Length: the bytes read are counted
            for _ in range(5):
                yield b"x" * 400

        streamed = await client.post("/tools/echo", content=chunks())
        assert_error(streamed, 413, "body_too_large")
        assert (await call(client, "echo", {"text": "small"})).status_code == 200


async def test_crashing_tool_is_an_observation():
    registry = ToolRegistry()

    @registry.register("boom", description="Fails.", parameters={"type": "object"})
    async def boom(arguments, ctx):
        raise RuntimeError("disk on fire")

    @registry.register("picky", description="Refuses.", parameters={"type": "object"})
    async def picky(arguments, ctx):
        raise ToolInputError("say please")

    async with client_for(create_app(ServerConfig(latency=0.5), registry)) as client:
        boom_body = (await call(client, "boom", {}, headers=VIRTUAL)).json()
        picky_body = (await call(client, "picky", {}, headers=VIRTUAL)).json()
    assert boom_body["error"]["type"] == "tool_error"
    assert "RuntimeError: disk on fire" in boom_body["error"]["message"]
    assert boom_body["latency_s"] == 0.5  # latency still applies
    assert picky_body["error"] == {"type": "tool_input_error", "message": "say please"}


async def test_http_errors_keep_the_json_shape(client):
    assert_error(await client.get("/nowhere"), 404, "not_found")
    assert_error(await client.delete("/tools/echo"), 405, "method_not_allowed")


async def test_latency_streams_are_per_session_and_seeded():
    config = ServerConfig(latency="uniform:0,10", seed=3)

    async def run(order):
        seen = {"a": [], "b": []}
        async with client_for(create_app(config)) as client:
            for session in order:
                body = (
                    await call(client, "echo", {"text": "x"}, headers=VIRTUAL, session_id=session)
                ).json()
                seen[session].append(body["latency_s"])
        return seen

    first = await run(["a", "a", "b", "a", "b"])
    second = await run(["b", "a", "b", "a", "a"])  # interleaving does not matter
    assert first == second
    assert first["a"][:2] != first["b"]
    other_seed = ServerConfig(latency="uniform:0,10", seed=4)
    async with client_for(create_app(other_seed)) as client:
        body = (await call(client, "echo", {"text": "x"}, headers=VIRTUAL, session_id="a")).json()
    assert body["latency_s"] != first["a"][0]


async def test_per_tool_latency_and_tool_defaults():
    registry = default_registry()

    @registry.register(
        "slowpoke", description="Slow.", parameters={"type": "object"}, latency="constant:7"
    )
    async def slowpoke(arguments, ctx):
        return {"clock": ctx.clock}

    config = ServerConfig(latency=1, per_tool_latency={"calculator": "constant:2"})
    async with client_for(create_app(config, registry)) as client:
        echo = (await call(client, "echo", {"text": "x"}, headers=VIRTUAL)).json()
        calc = (await call(client, "calculator", {"expression": "1"}, headers=VIRTUAL)).json()
        slow = (await call(client, "slowpoke", {}, headers=VIRTUAL)).json()
    assert (echo["latency_s"], calc["latency_s"], slow["latency_s"]) == (1.0, 2.0, 7.0)
    assert slow["result"] == {"clock": "virtual"}


def test_config_errors():
    with pytest.raises(ConfigError, match="Did you mean: calculator"):
        create_app(ServerConfig(per_tool_latency={"calculater": 1}))
    with pytest.raises(ValueError, match="Valid forms"):
        ServerConfig(latency="sometimes")
    with pytest.raises(ValueError, match="extra"):
        ServerConfig(prot=1)
    assert ServerConfig().model_dump()["latency"] == "constant:0.0"
    assert ServerConfig().host == "127.0.0.1"


def test_tool_definitions_are_checked():
    async def handler(arguments, ctx):
        return None

    with pytest.raises(ValueError, match="OpenAI function names"):
        ToolDef("no spaces", "d", {"type": "object"}, handler)
    with pytest.raises(ValueError, match="JSON Schema object"):
        ToolDef("t", "d", {"type": "string"}, handler)
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        ToolDef("t", "d", {"type": "object", "properties": 3}, handler)
    # The spec is the server's to read: kept as given, parsed when a registry adds the tool.
    lazy = ToolDef("t", "d", {"type": "object"}, handler, latency="soon")
    assert lazy.latency == "soon"
    with pytest.raises(ValueError, match="tool 't': latency: .*Valid forms"):
        ToolRegistry([lazy])
    timed = ToolRegistry([ToolDef("t", "d", {"type": "object"}, handler, latency=0.5)])
    assert timed.default_latency(timed.get("t")).spec == "constant:0.5"
    registry = ToolRegistry(["timely_tools.echo:echo"])
    assert registry.names() == ["echo"]
    assert registry.openai_tools(["echo"])[0]["function"]["name"] == "echo"
    with pytest.raises(KeyError, match="Did you mean: echo"):
        registry.openai_tools(["ecco"])


async def test_results_that_cannot_be_sent_are_tool_errors():
    registry = ToolRegistry()

    @registry.register("weird", description="Bad output.", parameters={"type": "object"})
    async def weird(arguments, ctx):
        return {"surrogate": "\ud800", "nan": arguments.get("nan") and float("nan")}

    async with client_for(create_app(ServerConfig(), registry)) as client:
        surrogate = await call(client, "weird", {}, headers=VIRTUAL)
        nan = await call(client, "weird", {"nan": True}, headers=VIRTUAL)
    for response in (surrogate, nan):
        assert response.status_code == 200
        assert response.json()["error"]["type"] == "tool_error"


async def test_unpaired_surrogates_in_a_request_are_invalid_json(client):
    bad = await client.post("/tools/echo", content=b'{"arguments": {"text": "\\udc00"}}')
    assert_error(bad, 400, "invalid_json")
    emoji = await client.post("/tools/echo", content=b'{"arguments": {"text": "\\ud83d\\ude00"}}')
    assert emoji.json()["result"] == "\U0001f600"


async def test_405_names_every_method_of_the_path(client):
    response = await client.put("/sessions/abc")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "DELETE, GET"
