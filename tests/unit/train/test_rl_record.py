"""The per-batch log of Timely-RL by budget bucket, and the std floor of the advantages."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.dashboard_runs import make_trajectory
from timely.clock import speed_profile
from timely.train.episodes import Setting
from timely.train.grpo import Group
from timely.train.objective import ADV_EPS, group_advantages
from timely.train.rl_record import budget_bucket, budget_bucket_metrics

# --- the std floor --------------------------------------------------------------------------------
FLOOR = 0.1


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo"])
def test_equal_rewards_give_exact_zeros(loss):
    rewards = np.array([[0.3] * 8, [1.2] * 8])
    assert (group_advantages(rewards, loss, std_floor=FLOOR) == 0.0).all()


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_near_equal_rewards_stay_near_zero(loss):
    # An on-time group that differs only in the sin bonus: 0.01 apart, so no reward is more
    # than 0.01 from the mean and the floor bounds every advantage by 0.01 / 0.1.
    rewards = np.array([[1.28, 1.29, 1.29, 1.28, 1.28, 1.29, 1.29, 1.28]])
    adv = group_advantages(rewards, loss, std_floor=FLOOR)
    assert np.abs(adv).max() <= 0.1
    assert np.abs(group_advantages(rewards, loss)).max() > 0.9  # what no floor did: ~+-1


def test_spread_rewards_are_plain_std_normalisation_above_the_floor():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0, 0.1, 1.2, 0.0, 0.0]])
    std = rewards.std(ddof=1)
    assert std > FLOOR
    np.testing.assert_array_equal(
        group_advantages(rewards, "grpo", std_floor=FLOOR), group_advantages(rewards, "grpo")
    )
    np.testing.assert_allclose(
        group_advantages(rewards, "grpo", std_floor=FLOOR),
        (rewards - rewards.mean()) / (std + ADV_EPS),
    )


def test_dr_grpo_ignores_the_floor():
    rewards = np.array([[1.28, 1.29, 1.30, 1.29]])
    np.testing.assert_allclose(
        group_advantages(rewards, "dr_grpo", std_floor=FLOOR), rewards - rewards.mean()
    )


# --- budget buckets -------------------------------------------------------------------------------
def test_budget_bucket_edges():
    assert budget_bucket(None) == "nolimit"
    assert budget_bucket(0.5) == "short"
    assert budget_bucket(0.75) == "mid"
    assert budget_bucket(1.49) == "mid"
    assert budget_bucket(1.5) == "long"
    assert budget_bucket(3.0) == "long"


def _group(multiplier, outcomes, tokens):
    setting = Setting(
        latency="constant:1.0",
        time_mode="push" if multiplier else "none",
        budget_s=10.0,
        multiplier=multiplier,
        speed=speed_profile("smollm2-cpu"),
    )
    trajs = []
    for outcome, n in zip(outcomes, tokens, strict=True):
        t = make_trajectory(outcome=outcome)
        steps = [s.model_copy(update={"completion_tokens": n}) for s in t.steps]
        trajs.append(t.model_copy(update={"steps": steps}))
    return Group("math/arithmetic-v1", 0, setting, [1.0] * len(trajs), trajs)


def test_budget_bucket_metrics_by_hand():
    groups = [
        _group(0.5, ["on_time", "cut_off"], [10, 20]),
        _group(0.6, ["late", "wrong"], [30, 40]),
        _group(2.0, ["on_time", "on_time"], [50, 50]),
    ]
    row = budget_bucket_metrics(groups)
    assert row["episodes_short"] == 4
    assert row["on_time_rate_short"] == pytest.approx(0.5)  # on_time and wrong are in time
    assert row["score_short"] == pytest.approx(0.5)  # on_time 1, late 1 (raw score), 0, 0
    steps = len(make_trajectory().steps)
    tool_calls = make_trajectory().n_tool_calls
    assert row["completion_tokens_short"] == pytest.approx(25.0 * steps)
    assert row["tool_calls_long"] == pytest.approx(tool_calls)
    assert row["on_time_rate_long"] == 1.0
    assert row["episodes_mid"] == 0 and row["on_time_rate_mid"] is None
    assert row["episodes_nolimit"] == 0 and row["score_nolimit"] is None


def test_progress_says_what_a_long_batch_is_doing():
    # A CPU batch runs for minutes: off a terminal its phases still reach the log.
    import io

    from rich.console import Console

    from timely.progress import ProgressDisplay
    from timely.train.rl_record import Progress

    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, width=200), every_s=0, live=False)
    with Progress(0, 16, display=display) as progress:
        progress.phase("batch 1: rollouts")
        progress.phase("batch 1: updates (16 episodes in 312 s)")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("timely-rl: 0/16 batches (0%)") and "batch 1: rollouts" in lines[0]
    assert "batch 1: updates (16 episodes in 312 s)" in lines[1]
