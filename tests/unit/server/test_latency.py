import math

import numpy as np
import pytest
from pydantic import ValidationError

from timely.rng import make_rng
from timely_server.latency import (
    ConstantLatency,
    ExponentialLatency,
    LatencyConfig,
    LognormalLatency,
    NormalLatency,
    ReplayLatency,
    UniformLatency,
    load_trace,
    parse_latency,
)

N = 20_000


def samples(model, n=N, seed=0):
    rng = make_rng(seed, "test")
    return np.array([model.sample(rng) for _ in range(n)])


@pytest.mark.parametrize(
    "spec, cls, fields",
    [
        ("constant:1.0", ConstantLatency, {"seconds": 1.0}),
        ("uniform:0.2,1.5", UniformLatency, {"lo": 0.2, "hi": 1.5}),
        ("normal:1,0.3", NormalLatency, {"mean": 1.0, "sd": 0.3}),
        ("lognormal:1.0,0.6", LognormalLatency, {"median": 1.0, "sigma": 0.6}),
        ("exponential:0.5", ExponentialLatency, {"mean": 0.5}),
        ("0.5", ConstantLatency, {"seconds": 0.5}),
        (2, ConstantLatency, {"seconds": 2.0}),
        (" Uniform: 1 , 2 ", UniformLatency, {"lo": 1.0, "hi": 2.0}),
        ({"kind": "lognormal", "median": 1.0, "sigma": 0.6}, LognormalLatency, {"median": 1.0}),
        ({"kind": "exponential", "mean": 2}, ExponentialLatency, {"mean": 2.0}),
    ],
)
def test_parse_forms(spec, cls, fields):
    model = parse_latency(spec)
    assert isinstance(model, cls)
    for key, value in fields.items():
        assert getattr(model, key) == value
    # every model prints back as a spec that parses to the same model
    assert parse_latency(model.spec) == model
    assert parse_latency(model) is model


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("uniform:2,1", "lo <= hi"),
        ("normal:1", "normal takes 2 number(s)"),
        ("lognorm:1,0.5", "did you mean 'lognormal'"),
        ("fast", "expected KIND:ARGS"),
        ("constant:-1", "greater than or equal to 0"),
        ("constant:abc", "must be numbers"),
        ("exponential:1,2", "exponential takes 1 number(s)"),
        ("lognormal:0,1", "greater than 0"),
        ("nan", "finite"),
        ("replay:", "needs a file path"),
        ("replay:/definitely/not/here.txt", "cannot read latency trace"),
        ({"kind": "gaussian"}, "unknown or missing kind"),
        ({"kind": "constant", "seconds": 1, "extra": 2}, "Extra inputs"),
        (True, "boolean"),
        ([1, 2], "expected a string"),
    ],
)
def test_bad_specs_explain_the_valid_forms(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse_latency(spec)
    message = str(info.value)
    assert fragment in message
    assert "Valid forms: constant:SECONDS | uniform:LO,HI" in message


def test_constant():
    assert set(samples(parse_latency("constant:0.75"), n=100)) == {0.75}


def test_uniform_mean_and_range():
    xs = samples(parse_latency("uniform:0.2,1.4"))
    assert xs.min() >= 0.2 and xs.max() <= 1.4
    assert xs.mean() == pytest.approx(0.8, abs=0.01)


def test_normal_mean_and_sd():
    xs = samples(parse_latency("normal:2,0.3"))
    assert xs.mean() == pytest.approx(2.0, abs=0.01)
    assert xs.std() == pytest.approx(0.3, abs=0.01)


def test_normal_is_truncated_at_zero():
    xs = samples(parse_latency("normal:0.1,1"))
    assert xs.min() == 0.0
    assert (xs == 0.0).mean() == pytest.approx(0.46, abs=0.02)  # P(N(0.1, 1) < 0)


def test_lognormal_median_and_mean():
    xs = samples(parse_latency("lognormal:1.0,0.6"))
    assert np.median(xs) == pytest.approx(1.0, abs=0.03)
    assert xs.mean() == pytest.approx(math.exp(0.6**2 / 2), rel=0.03)
    assert xs.min() > 0


def test_exponential_mean():
    xs = samples(parse_latency("exponential:0.5"))
    assert xs.mean() == pytest.approx(0.5, rel=0.03)
    assert xs.min() >= 0


@pytest.mark.parametrize(
    "spec", ["uniform:0,1", "normal:1,0.5", "lognormal:1,0.6", "exponential:1"]
)
def test_sampling_is_deterministic_per_seed(spec):
    model = parse_latency(spec)
    a, b = samples(model, n=50, seed=7), samples(model, n=50, seed=7)
    assert a.tolist() == b.tolist()
    assert a.tolist() != samples(model, n=50, seed=8).tolist()


def test_replay_plain_file_cycles_in_order(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("# recorded latencies\n0.5\n1.25\n\n2\n")
    model = parse_latency(f"replay:{path}")
    assert isinstance(model, ReplayLatency)
    assert model.spec == f"replay:{path}"
    rng = make_rng(0)
    assert [model.sample(rng) for _ in range(7)] == [0.5, 1.25, 2.0, 0.5, 1.25, 2.0, 0.5]


def test_replay_keeps_one_position_per_stream(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("1\n2\n3\n")
    model = parse_latency(f"replay:{path}")
    a, b = make_rng(1), make_rng(2)
    assert [model.sample(a), model.sample(a), model.sample(b), model.sample(a)] == [1, 2, 1, 3]


def test_replay_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "trace.jsonl"
    jsonl.write_text('{"latency_s": 0.1, "tool": "x"}\n{"latency_s": 0.3}\n')
    csv = tmp_path / "trace.csv"
    csv.write_text("tool,latency_s\nsearch,0.4\nsearch,0.6\n")
    assert load_trace(jsonl) == [0.1, 0.3]
    assert load_trace(csv) == [0.4, 0.6]
    sniffed = tmp_path / "trace.log"
    sniffed.write_text("latency_s,x\n0.7,1\n")
    assert load_trace(sniffed) == [0.7]
    assert parse_latency({"kind": "replay", "path": str(csv)}).values == [0.4, 0.6]


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("empty.txt", "\n# nothing\n", "holds no values"),
        ("neg.txt", "0.5\n-1\n", "invalid latencies"),
        ("bad.jsonl", '{"seconds": 1}\n', "latency_s"),
        ("bad.csv", "tool,seconds\nx,1\n", "latency_s"),
        ("words.txt", "0.5\nfast\n", "could not convert"),
    ],
)
def test_replay_bad_files(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment):
        parse_latency(f"replay:{path}")


def test_latency_config_precedence_and_serialisation():
    config = LatencyConfig(default="lognormal:1,0.5", per_tool={"echo": 0.2})
    tool_default = ConstantLatency(seconds=3.0)
    assert config.model_for("echo", tool_default).spec == "constant:0.2"
    assert config.model_for("calculator", tool_default) is tool_default
    assert config.model_for("calculator").spec == "lognormal:1.0,0.5"
    dumped = config.model_dump()
    assert dumped == {"default": "lognormal:1.0,0.5", "per_tool": {"echo": "constant:0.2"}}
    assert LatencyConfig.model_validate(dumped) == config
    assert config.describe() == "lognormal:1.0,0.5; echo=constant:0.2"


def test_latency_config_rejects_bad_specs():
    with pytest.raises(ValidationError, match="did you mean 'uniform'"):
        LatencyConfig(default="unifrom:1,2")
