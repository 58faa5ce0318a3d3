"""The `timely-rl` launcher end to end, in subprocesses, and the eval/results stage on scripted
policies (the embedded model's training is covered by the slow tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).parents[2] / "configs" / "train" / "smollm2_cpu.yaml"


def timely_rl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [str(BIN / "timely-rl"), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_help_lists_the_keys_that_matter():
    res = timely_rl("--help")
    assert res.returncode == 0
    for key in ("stage=all", "rl.group_size", "rl.loss", "sft.lora", "rl.time_reward"):
        assert key in res.stdout


def test_dry_run_prints_the_resolved_config():
    res = timely_rl("--config", str(CONFIG), "--dry-run", "rl.steps=3", "stage=rl")
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)
    assert resolved["rl"]["steps"] == 3 and resolved["stage"] == "rl"
    assert resolved["rl"]["group_size"] == 4  # from the file (the default is 8)
    assert resolved["rl"]["reward"]["bonus_shape"] == "sin"


def test_bad_keys_fail_at_once_with_a_did_you_mean():
    res = timely_rl("--config", str(CONFIG), "rl.stepz=3")
    assert res.returncode == 2
    assert "Did you mean: steps?" in res.stderr
    res = timely_rl("stage=rll")
    assert res.returncode == 2 and "stage" in res.stderr
    res = timely_rl("train")
    assert res.returncode == 2 and "key=value" in res.stderr


def test_verl_backend_dry_run_prints_the_verl_command():
    res = timely_rl("--backend", "verl", "--dry-run")
    assert res.returncode == 0 and "-m verl.trainer.main_ppo" in res.stdout


def test_reward_subcommand_still_works():
    res = timely_rl("reward", "--variant", "paper", "--budget", "10")
    assert res.returncode == 0 and "right answer" in res.stdout


def test_eval_stage_writes_results_and_figure(tmp_path):
    from timely.train.config import EvalStageConfig
    from timely_eval.training import evaluate_policies

    policies = {  # labelled as the trained rows, so the targets table checks them
        "rl": {"spec": "scripted:oracle"},
        "rl-notime": {"spec": "scripted:answer-now"},
    }
    config = EvalStageConfig(tasks=("math/arithmetic-v1",), seeds=2, latencies=("constant:1.0",))
    results = evaluate_policies(policies, config, tmp_path / "eval", speed="small-fast")
    text = results.read_text()
    assert "| rl | math | x0.75@oracle |" in text and "| rl-notime | math | x2 |" in text
    # The oracle answers at the shared reference's time (its own): on time from 1x, late at
    # 0.5x; its calls do not change with the budget (no rank correlation: missed).
    rows = (
        "| RL on-time rate >= 95% at >= 1x, without slack | shared (oracle) | 100% of 4 | met |",
        "| RL on-time rate >= 75% at 0.5x, without slack | shared (oracle) | 0% of 2 | missed |",
        "| RL's tool calls rise with the budget: rho >= 0.8 (math) | shared (oracle) | rho — "
        "| missed |",
        "| anytime AUC RL > SFT > base (math) | per-policy | not measured (no sft, base row) |",
    )
    assert all(row in text for row in rows)
    assert (tmp_path / "eval" / "figure3.png").stat().st_size > 1000
    suite = yaml.safe_load((tmp_path / "eval" / "suite.yaml").read_text())
    assert suite["split"] == "test" and suite["episodes"] == 2
    # `timely-rl results` regenerates the page from the trajectories alone.
    (tmp_path / "eval" / "results.md").unlink()
    res = timely_rl("results", str(tmp_path), "--docs", str(tmp_path / "docs" / "results.md"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "docs" / "results.md").read_text() == text
