import pytest

from timely.config import RunConfig, config_hash, load_config
from timely.errors import ConfigError


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: math/word-problems-v1\nbudget: 45\nepisode:\n  max_turns: 5\n")
    cfg = load_config(RunConfig, path, ["episode.max_turns=7", "latency=lognormal:1.0,0.6"])
    assert cfg.task == "math/word-problems-v1"
    assert cfg.budget.seconds == 45
    assert cfg.episode.max_turns == 7
    assert cfg.latency == "lognormal:1.0,0.6"


def test_presets_by_name():
    cfg = load_config(RunConfig, None, ["episode.time=paper", "episode.speed=large-slow"])
    assert cfg.episode.time.wording == "paper"
    assert cfg.episode.speed.name == "large-slow"


def test_unknown_key_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean: max_turns"):
        load_config(RunConfig, None, ["episode.max_turn=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("budgett: 3\n")
    with pytest.raises(ConfigError, match="Did you mean: budget"):
        load_config(RunConfig, path)


def test_bad_values_are_readable():
    with pytest.raises(ConfigError, match="budget.seconds"):
        load_config(RunConfig, None, ["budget.seconds=-1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(RunConfig, None, ["nonsense"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, "/nonexistent/run.yaml")


def test_free_form_policy_options_and_hash():
    a = load_config(RunConfig, None, ["policy_options.temperature=0.7"])
    assert a.policy_options == {"temperature": 0.7}
    b = load_config(RunConfig, None, ["out=elsewhere"])
    c = load_config(RunConfig, None, [])
    assert config_hash(b, exclude={"out"}) == config_hash(c, exclude={"out"})
    assert config_hash(a) != config_hash(c)


def test_run_budget_defaults_to_the_tasks_own():
    cfg = load_config(RunConfig, None, ["budget.overrun=late"])
    assert cfg.budget.seconds is None
    budget = cfg.budget.for_task(42.0)
    assert budget.seconds == 42.0 and budget.overrun == "late"
    cfg = load_config(RunConfig, None, ["budget=12"])
    assert cfg.budget.for_task(42.0).seconds == 12.0
