import contextlib

import httpx2
import pytest

from timely.clock import WallClock
from timely_server.app import ServerConfig, create_app
from timely_server.errors import ApiError
from timely_server.registry import ToolRegistry, default_registry
from timely_server.sessions import SessionStore, close_state

VIRTUAL = {"X-Timely-Clock": "virtual"}


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Resource:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def store(now, **kw) -> SessionStore:
    settings = dict(seed=0, ttl_s=10.0, max_live=3, remember_ended=100, sweep_s=5.0)
    settings.update(kw)
    events = []
    s = SessionStore(now=now, on_event=events.append, **settings)
    s.events = events
    return s


def status_of(fn, *args):
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.status, info.value.type


def test_implicit_sessions_are_created_on_first_use_and_keep_their_streams():
    now = FakeTime()
    s = store(now)
    a = s.acquire("a")
    s.release(a)
    assert s.acquire("a") is a  # same session, same streams and state
    assert s.live == 1 and s.events == ["created"]


def test_expired_sessions_close_their_state_and_answer_410():
    now = FakeTime()
    s = store(now)
    a = s.acquire("a")
    res = Resource()
    a.state["game"] = res
    s.release(a)
    now.t += 11
    assert status_of(s.acquire, "a") == (410, "session_expired")
    assert res.closed == 1 and a.state == {}
    assert s.events[-1] == "expired"


def test_an_expired_stateless_implicit_session_just_starts_afresh():
    now = FakeTime()
    s = store(now)
    s.release(s.acquire("a"))
    now.t += 11
    again = s.acquire("a")  # nothing was lost, so no 410
    assert again.state == {} and s.live == 1


def test_explicit_sessions_answer_410_after_expiry_and_can_be_created_again():
    now = FakeTime()
    s = store(now)
    s.create("a", ttl_s=2.0)
    now.t += 3
    assert status_of(s.acquire, "a") == (410, "session_expired")
    assert status_of(s.lookup, "a") == (410, "session_expired")
    fresh = s.create("a")
    assert fresh.ttl_s == 10.0 and s.acquire("a") is fresh


def test_end_and_unknown_ids():
    now = FakeTime()
    s = store(now)
    s.create("a")
    assert status_of(s.create, "a") == (409, "session_exists")
    s.end("a")
    assert status_of(s.end, "a") == (410, "session_expired")
    assert status_of(s.acquire, "a") == (410, "session_expired")
    assert status_of(s.end, "never") == (404, "unknown_session")
    assert status_of(s.lookup, "never") == (404, "unknown_session")
    assert s.create().id.startswith("s-")


def test_state_is_closed_only_after_the_call_in_flight_finishes():
    now = FakeTime()
    s = store(now)
    a = s.acquire("a")
    res = Resource()
    a.state["ws"] = res
    s.end("a")
    assert res.closed == 0  # the running call still uses it
    s.release(a)
    assert res.closed == 1


def test_a_session_in_flight_never_expires():
    now = FakeTime()
    s = store(now)
    a = s.acquire("a")
    now.t += 100
    assert s.sweep() == 0
    s.release(a)
    now.t += 11
    assert s.sweep() == 1


def test_the_limit_evicts_lapsed_stateless_sessions_before_refusing():
    now = FakeTime()
    s = store(now, max_live=2)
    s.release(s.acquire("a"))  # implicit, stateless, idle: may make room
    s.create("b")
    s.release(s.acquire("c"))  # evicts "a"
    assert s.get("a") is None and s.events.count("evicted") == 1
    s.release(s.acquire("a"))  # "a" lost nothing, so it comes back (evicting "c")
    assert s.get("c") is None
    busy = s.acquire("a")  # in flight: not evictable; "b" is explicit: not evictable
    with pytest.raises(ApiError) as info:
        s.acquire("e")
    assert (info.value.status, info.value.type) == (429, "too_many_sessions")
    assert 1 <= int(info.value.headers["Retry-After"]) <= 10
    s.release(busy)


def test_ended_ids_are_remembered_boundedly():
    now = FakeTime()
    s = store(now, remember_ended=2, max_live=10)
    for name in "abc":
        s.create(name)
        s.end(name)
    assert status_of(s.acquire, "c") == (410, "session_expired")
    assert s.acquire("a").explicit is False  # forgotten: a fresh implicit session


def test_close_state_survives_a_failing_close():
    class Bad:
        def close(self):
            raise RuntimeError("boom")

    good = Resource()
    state = {"bad": Bad(), "good": good, "plain": 3}
    close_state(state)
    assert good.closed == 1 and state == {}


@contextlib.asynccontextmanager
async def client_for(app):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def counting_registry():
    registry = default_registry()

    @registry.register("count", description="Counts calls.", parameters={"type": "object"})
    async def count(arguments, ctx):
        if ctx.state is None:
            return None
        ctx.state.setdefault("resource", Resource())
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return ctx.state["n"]

    return registry


async def test_session_routes():
    app = create_app(ServerConfig(), counting_registry())
    async with client_for(app) as client:
        created = await client.post("/sessions", json={"session_id": "ep-1", "ttl_s": 30})
        assert created.status_code == 201
        assert created.json() == {"session_id": "ep-1", "expires_in_s": 30.0}
        generated = await client.post("/sessions")
        assert generated.status_code == 201 and generated.json()["session_id"].startswith("s-")
        body = {"arguments": {}, "session_id": "ep-1"}
        first = (await client.post("/tools/count", json=body)).json()
        second = (await client.post("/tools/count", json=body)).json()
        assert (first["result"], second["result"]) == (1, 2)
        info = (await client.get("/sessions/ep-1")).json()
        assert info["session_id"] == "ep-1" and 29 < info["expires_in_s"] <= 30
        dup = await client.post("/sessions", json={"session_id": "ep-1"})
        assert dup.status_code == 409 and dup.json()["error"]["type"] == "session_exists"
        resource = app.state.tool_server.sessions.get("ep-1").state["resource"]
        ended = await client.delete("/sessions/ep-1")
        assert ended.status_code == 200 and ended.json() == {"session_id": "ep-1", "ended": True}
        assert resource.closed == 1
        gone = await client.post("/tools/count", json=body)
        assert gone.status_code == 410 and gone.json()["error"]["type"] == "session_expired"
        assert (await client.delete("/sessions/ep-1")).status_code == 410
        unknown = await client.delete("/sessions/nobody")
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "unknown_session"
        assert (await client.get("/sessions/nobody")).status_code == 404
        again = await client.post("/sessions", json={"session_id": "ep-1"})
        assert again.status_code == 201
        assert (await client.post("/tools/count", json=body)).json()["result"] == 1


@pytest.mark.parametrize(
    "body, status, kind",
    [
        (b"{", 400, "invalid_json"),
        (b"\n", 400, "invalid_json"),  # whitespace is not "no body" (schemathesis found it)
        (b'{"ttl_s": -1}', 422, "invalid_request"),
        (b'{"ttl_s": "soon"}', 422, "invalid_request"),
        (b'{"session_id": ""}', 422, "invalid_request"),
        (b'{"sid": "x"}', 422, "invalid_request"),
        (b"[]", 422, "invalid_request"),
    ],
)
async def test_bad_session_bodies(body, status, kind):
    async with client_for(create_app(ServerConfig())) as client:
        response = await client.post("/sessions", content=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == kind


async def test_expiry_over_http_and_the_session_limit():
    app = create_app(ServerConfig(session_ttl_s=0.05, max_live_sessions=1), counting_registry())
    async with client_for(app) as client:
        body = {"arguments": {}, "session_id": "a"}
        assert (await client.post("/tools/count", json=body)).json()["result"] == 1
        full = await client.post("/tools/count", json={"arguments": {}, "session_id": "b"})
        assert full.status_code == 429 and full.json()["error"]["type"] == "too_many_sessions"
        assert "Retry-After" in full.headers
        await WallClock().sleep(0.08)
        expired = await client.post("/tools/count", json=body)
        assert expired.status_code == 410  # it held state
        other = await client.post("/tools/count", json={"arguments": {}, "session_id": "b"})
        assert other.status_code == 200


async def test_lifespan_sweeps_and_closes_state_on_shutdown():
    app = create_app(ServerConfig(session_ttl_s=0.05, session_sweep_s=0.02), counting_registry())
    server = app.state.tool_server
    async with app.router.lifespan_context(app):
        async with client_for(app) as client:
            await client.post("/tools/count", json={"arguments": {}, "session_id": "a"})
            await client.post("/tools/count", json={"arguments": {}, "session_id": "b"})
            res = server.sessions.get("a").state["resource"]
            await WallClock().sleep(0.15)  # the sweeper runs without any request
            assert server.sessions.live == 0 and res.closed == 1
            await client.post("/tools/count", json={"arguments": {}, "session_id": "c"})
            last = server.sessions.get("c").state["resource"]
    assert last.closed == 1  # shutdown closes what is still live


async def test_calls_without_session_have_no_state():
    registry = ToolRegistry()

    @registry.register("peek", description="State?", parameters={"type": "object"})
    async def peek(arguments, ctx):
        return ctx.state is None

    async with client_for(create_app(ServerConfig(), registry)) as client:
        body = (await client.post("/tools/peek", json={"arguments": {}}, headers=VIRTUAL)).json()
    assert body["result"] is True
