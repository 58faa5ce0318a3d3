"""Commands resolve configs by one rule: a bare word names a shipped config, anything else is a
path; the shipped configs are package data, found from any working directory."""

from __future__ import annotations

import fnmatch
import tomllib

import pytest

import timely
from tests.helpers.layout import ROOT
from timely.config import RunConfig, load_config
from timely.configs import CONFIG_DIR, KINDS, config_names, is_name, resolve_config
from timely.errors import ConfigError


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Every test runs from a directory that is not the checkout."""
    monkeypatch.chdir(tmp_path)


def test_the_shipped_configs_live_in_the_package_and_the_repository_links_to_them():
    assert CONFIG_DIR == (ROOT / "timely" / "configs").resolve()
    assert CONFIG_DIR.parent == ROOT / "timely" and CONFIG_DIR.parent.resolve().samefile(
        timely.__path__[0]
    )
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == CONFIG_DIR


def test_every_shipped_file_is_package_data():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["timely.configs"]
    assert "timely.configs" in setuptools["packages"]
    files = [
        p.relative_to(CONFIG_DIR).as_posix()
        for p in CONFIG_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "__init__.py"
    ]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
    assert {d.name for d in CONFIG_DIR.iterdir() if d.is_dir() and d.name != "__pycache__"} <= set(
        KINDS
    )


def test_names_of_each_kind():
    assert {"smoke", "anytime", "standard"} <= set(config_names("eval"))
    assert {"zero", "fast", "slow", "jericho-reference"} <= set(config_names("latency"))
    assert {"smollm2_cpu", "verl_smoke"} <= set(config_names("train"))
    assert config_names("run") == ["math-smoke"] and config_names("server") == ["example"]
    assert config_names("serve") == []
    with pytest.raises(ValueError, match="unknown config kind"):
        config_names("evals")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("smoke", True),
        ("verl_qwen3_1p7b", True),
        ("smoke.yaml", False),
        ("s.yml", False),
        ("configs/eval/smoke", False),
        ("./smoke", False),
        (".hidden", False),
        ("", False),
    ],
)
def test_a_bare_word_is_a_name_anything_else_a_path(text, name):
    assert is_name(text) is name


def test_a_name_resolves_from_the_package_wherever_the_command_runs(tmp_path):
    (tmp_path / "configs" / "eval").mkdir(parents=True)
    (tmp_path / "configs" / "eval" / "smoke.yaml").write_text("tasks: []\n")
    assert resolve_config("eval", "smoke") == CONFIG_DIR / "eval" / "smoke.yaml"
    assert resolve_config("train", "smollm2_cpu") == CONFIG_DIR / "train" / "smollm2_cpu.yaml"


def test_a_path_is_a_path(tmp_path):
    (tmp_path / "mine.yaml").write_text("episodes: 2\n")
    assert resolve_config("eval", "mine.yaml").resolve() == tmp_path / "mine.yaml"
    assert resolve_config("eval", tmp_path / "mine.yaml") == tmp_path / "mine.yaml"
    # The checkout's documented paths are paths (through the configs link).
    shipped = ROOT / "configs" / "eval" / "smoke.yaml"
    assert resolve_config("eval", str(shipped)) == shipped


def test_an_unknown_name_lists_the_shipped_ones_with_a_did_you_mean():
    with pytest.raises(ConfigError, match="unknown suite 'smok'. Did you mean 'smoke'") as err:
        resolve_config("eval", "smok")
    assert "Available: anytime, demo, smoke, standard" in str(err.value)
    with pytest.raises(ConfigError, match="unknown serve config 'x'. None ship"):
        resolve_config("serve", "x")


def test_a_missing_path_names_the_shipped_config_of_that_stem():
    with pytest.raises(ConfigError, match="does not exist; the shipped train config 'smollm2_cpu'"):
        resolve_config("train", "configs/train/smollm2_cpu.yaml")
    with pytest.raises(ConfigError, match="does not exist$"):
        resolve_config("train", "nowhere/mine.yaml")


def test_every_command_resolves_through_it():
    from timely.cli_rl import train_main
    from timely_eval.suite import load_suite
    from timely_server.config import build_server_config
    from timely_server.profiles import load_latency_profile

    assert load_suite("smoke").name == "smoke"
    assert load_latency_profile("slow").name == "slow"
    assert build_server_config("example").latency_profile == "medium"  # a name in a name
    assert load_config(RunConfig, "math-smoke", kind="run").task == "math/arithmetic-v1"
    for call in (
        lambda: load_suite("smoky"),
        lambda: load_latency_profile("slo"),
        lambda: build_server_config("exampel"),
        lambda: load_config(RunConfig, "math-smok", kind="run"),
    ):
        with pytest.raises(ConfigError, match="Did you mean"):
            call()
    assert train_main(["--config", "smollm2_cpu", "--dry-run"]) == 0
    assert train_main(["--config", "smollm2_cpuu", "--dry-run"]) == 2
