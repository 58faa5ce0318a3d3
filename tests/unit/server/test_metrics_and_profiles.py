import contextlib
import logging

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from timely.errors import ConfigError
from timely_server.app import ServerConfig, create_app
from timely_server.config import build_server_config
from timely_server.profiles import available_profiles, load_latency_profile

VIRTUAL = {"X-Timely-Clock": "virtual"}


@contextlib.asynccontextmanager
async def client_for(app):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_calls_latency_and_sessions():
    app = create_app(ServerConfig(latency=0.5))
    async with client_for(app) as client:
        for session in ("a", "b", "a"):
            body = {"arguments": {"text": "x"}, "session_id": session}
            await client.post("/tools/echo", json=body, headers=VIRTUAL)
        await client.post("/tools/echo", json={"arguments": {"text": 1}})
        await client.post("/tools/made-up", json={"arguments": {}})
        await client.delete("/sessions/b")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    http = ("transport", "http")
    assert got[("timely_tool_requests_total", (("status", "200"), ("tool", "echo"), http))] == 3
    assert got[("timely_tool_requests_total", (("status", "422"), ("tool", "echo"), http))] == 1
    assert got[("timely_tool_requests_total", (("status", "404"), ("tool", "_unknown"), http))] == 1
    assert got[("timely_tool_injected_latency_seconds_count", (("tool", "echo"),))] == 3
    assert got[("timely_tool_injected_latency_seconds_sum", (("tool", "echo"),))] == 1.5
    assert got[("timely_tool_service_seconds_count", (("tool", "echo"),))] == 3
    assert got[("timely_tool_request_duration_seconds_count", (("tool", "echo"),))] == 3
    assert got[("timely_tool_in_flight", (("tool", "echo"),))] == 0
    assert got[("timely_sessions_live", ())] == 1
    assert got[("timely_sessions_events_total", (("event", "created"),))] == 2
    assert got[("timely_sessions_events_total", (("event", "deleted"),))] == 1


async def test_each_app_has_its_own_registry():
    first, second = create_app(ServerConfig()), create_app(ServerConfig())
    async with client_for(first) as client:
        await client.post("/tools/echo", json={"arguments": {"text": "x"}}, headers=VIRTUAL)
    async with client_for(second) as client:
        text = (await client.get("/metrics")).text
    assert "timely_tool_requests_total{" not in text


def test_shipped_profiles_load_with_documented_values():
    names = available_profiles()
    assert {"zero", "fast", "medium", "slow", "very-slow", "jericho-reference"} <= set(names)
    medians = {"fast": 0.25, "medium": 1.0, "slow": 3.0, "very-slow": 10.0}
    for name, median in medians.items():
        profile = load_latency_profile(name)
        assert profile.default.spec == f"lognormal:{median!r},0.6" and profile.description
    assert load_latency_profile("zero").default.spec == "constant:0.0"
    jericho = load_latency_profile("jericho-reference").per_tool
    assert {k: v.spec for k, v in jericho.items()} == {
        "step": "constant:1.0",
        "get_available_actions": "constant:0.2",
        "get_score": "constant:0.1",
        "get_max_score": "constant:0.1",
        "end_game": "constant:0.1",
    }


def test_profile_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'slow'"):
        load_latency_profile("slo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: sometimes\n")
    with pytest.raises(ConfigError, match="Valid forms"):
        load_latency_profile(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_latency_profile(tmp_path / "missing.yaml")


async def test_profile_entries_for_unknown_tools_are_ignored_with_a_warning(caplog, tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("default: constant:2\nper_tool:\n  calculator: 3\n  no_such_tool: 1\n")
    config = ServerConfig.from_profile(custom, per_tool_latency={"echo": 5})
    assert config.latency_profile == "mine"
    with caplog.at_level(logging.WARNING, logger="timely.server"):
        app = create_app(config)
    assert "no_such_tool" in caplog.text and "ignored" in caplog.text
    async with client_for(app) as client:
        for tool, args, want in [
            ("echo", {"text": "x"}, 5.0),
            ("calculator", {"expression": "1"}, 3.0),
        ]:
            body = await client.post(f"/tools/{tool}", json={"arguments": args}, headers=VIRTUAL)
            assert body.json()["latency_s"] == want
        shown = (await client.get("/admin/latency")).json()
    assert shown["profile"] == "mine" and "no_such_tool" not in shown["per_tool"]
    app = create_app(ServerConfig.from_profile("jericho-reference"))  # prices the game tools
    per_tool = {k: m.spec for k, m in app.state.tool_server.latency.per_tool.items()}
    assert per_tool == {
        "step": "constant:1.0",
        "get_available_actions": "constant:0.2",
        "get_score": "constant:0.1",
        "get_max_score": "constant:0.1",
        "end_game": "constant:0.1",
    }


def test_build_server_config_precedence(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("port: 9000\nlatency_profile: slow\nfaults: error=0.1\nseed: 4\n")
    config = build_server_config(path, seed=7, latency=None, per_tool_latency={})
    assert (config.port, config.seed, config.latency.spec) == (9000, 7, "lognormal:3.0,0.6")
    assert config.faults.error_rate == 0.1 and config.latency_profile == "slow"
    flagged = build_server_config(path, latency="constant:1")
    assert flagged.latency.spec == "constant:1.0"
    shipped = build_server_config("configs/server/example.yaml")
    assert shipped.latency_profile == "medium"
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_server_config(path)


def test_replay_traces_in_a_profile_are_read_next_to_it(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "search.csv").write_text("latency_s\n0.5\n1.5\n")
    (tmp_path / "calls.jsonl").write_text('{"latency_s": 2}\n')
    profile_file = tmp_path / "recorded.yaml"
    profile_file.write_text(
        "default: replay:traces/search.csv\nper_tool:\n  echo: {kind: replay, path: calls.jsonl}\n"
    )
    profile = load_latency_profile(profile_file)
    assert profile.default.values == [0.5, 1.5]
    assert profile.per_tool["echo"].values == [2.0]


def test_loop_metrics_render_as_prometheus_client_metrics_do():
    """The hot-path series (plain numbers behind a collector) expose the library's exact text."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from timely_server.metrics import _BUCKETS, LoopCounter, LoopGauge, LoopHistogram

    ours, native = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    pairs = {
        "requests": (
            LoopCounter("t_requests", "Calls.", ["tool", "status"], registry=ours),
            Counter("t_requests", "Calls.", ["tool", "status"], registry=native),
        ),
        "latency": (
            LoopHistogram("t_latency_seconds", "Latency.", ["tool"], registry=ours),
            Histogram("t_latency_seconds", "Latency.", ["tool"], buckets=_BUCKETS, registry=native),
        ),
        "in_flight": (
            LoopGauge("t_in_flight", "In flight.", ["tool"], registry=ours),
            Gauge("t_in_flight", "In flight.", ["tool"], registry=native),
        ),
    }
    ops = [
        ("requests", ("echo", "200"), "inc", 1),
        ("requests", ("echo", "200"), "inc", 1),
        ("requests", ("calc", "504"), "inc", 1),
        ("in_flight", ("echo",), "inc", 1),
        ("in_flight", ("calc",), "inc", 1),
        ("in_flight", ("echo",), "dec", 1),
    ]
    for value in (0.0, 0.001, 0.0011, 0.5, 1, 2.5, 119.9, 120, 121, 1e9, float("nan")):
        ops += [("latency", ("echo",), "observe", value), ("latency", ("calc",), "observe", 0.2)]
    for name, labels, op, value in ops:
        for metric in pairs[name]:
            getattr(metric.labels(*labels), op)(value)

    def lines(registry: CollectorRegistry) -> tuple[list[str], list[str]]:
        text = generate_latest(registry).decode().splitlines()
        values = [ln for ln in text if "_created" not in ln]
        created = [ln.split(" ")[0] for ln in text if "_created" in ln]  # names, not times
        return values, created

    assert lines(ours) == lines(native)
