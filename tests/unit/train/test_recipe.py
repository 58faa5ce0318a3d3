"""The recipe's small pieces: per-task episode counts, budget calibration hooks, precision, and
the held-out eval suite playing the tasks at the difficulty they were trained at."""

from __future__ import annotations

import numpy as np
import pytest

from timely.rollout import Runtime
from timely.train.config import DataConfig, EvalStageConfig, SFTConfig
from timely.train.episodes import draw_setting, slice_of, train_task
from timely.train.sft import use_bf16
from timely_eval.suite import Suite
from timely_eval.training import eval_suite


def test_episodes_by_task_override_the_default_count():
    config = DataConfig(episodes_per_task=7, episodes={"games/treasure-v1": 2})
    assert config.episodes_for("games/treasure-v1") == 2
    assert config.episodes_for("math/arithmetic-v1") == 7


async def test_a_calibrator_sets_what_the_budget_multiplies():
    seen = []

    async def unconstrained(task, latency, mode):
        seen.append((task.id, latency, mode))
        return 10.0

    task = train_task("math/arithmetic-v1", 0)
    draws = dict(latencies=["constant:1.0"], time_modes=["push"], multipliers=(2.0, 2.0))
    async with Runtime() as runtime:
        setting = await draw_setting(
            np.random.default_rng(0), runtime, task, no_limit_share=0.0, speed="smollm2-cpu",
            unconstrained=unconstrained, **draws,
        )  # fmt: skip
        default = await draw_setting(
            np.random.default_rng(0), runtime, task, no_limit_share=0.0, speed="smollm2-cpu",
            **draws,
        )  # fmt: skip
    assert seen == [("math/arithmetic-v1", "constant:1.0", "push")]
    assert setting.budget_s == pytest.approx(20.0) and setting.multiplier == pytest.approx(2.0)
    assert default.budget_s != setting.budget_s  # the scripted oracle's own time


def test_precision_auto_follows_the_cpu_and_explicit_settings_win():
    import torch

    assert use_bf16("bf16") is True and use_bf16("fp32") is False
    assert use_bf16("auto") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with pytest.raises(ValueError):
        SFTConfig(precision="fp16")


def test_the_eval_suite_plays_tasks_at_their_training_options():
    config = EvalStageConfig(
        tasks=("math/arithmetic-v1", "games/treasure-v1"),
        seeds=2,
        task_seeds={"games/treasure-v1": 1},
        max_turns=5,
    )
    data = eval_suite({"base": {"spec": "hf:smollm2-135m"}}, config, speed="smollm2-cpu")
    suite = Suite.model_validate(data)
    difficulty = {t.id: t.difficulty for t in suite.tasks}
    assert difficulty == {"math/arithmetic-v1": None, "games/treasure-v1": 1}
    assert suite.split == "test" and suite.episode.max_turns == 5
    # The status after every tool result, as in the data and RL (math would otherwise pull).
    assert suite.episode.time.mode == "push"
    assert {t.id: t.episodes for t in suite.tasks} == {
        "math/arithmetic-v1": None,
        "games/treasure-v1": 1,
    }
    with pytest.raises(ValueError, match="difficulty as the task entry's own key"):
        Suite.model_validate(
            {**data, "tasks": [{"id": "games/treasure-v1", "options": {"difficulty": 1}}]}
        )


def test_budget_slices_split_the_range_in_log_space():
    assert slice_of((0.5, 3.0), None) == (0.5, 3.0)
    edges = [bound for k in range(4) for bound in slice_of((0.5, 8.0), (k, 4))]
    assert edges == pytest.approx([0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0])
    with pytest.raises(ValueError, match="stratum 4 of 4"):
        slice_of((0.5, 8.0), (4, 4))


async def test_a_stratum_keeps_the_multiplier_in_its_slice():
    async def unconstrained(task, latency, mode):
        return 10.0

    task = train_task("math/arithmetic-v1", 0)
    draws = dict(latencies=["constant:1.0"], time_modes=["push"], multipliers=(0.5, 8.0))
    async with Runtime() as runtime:
        for k, (low, high) in enumerate([(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]):
            for seed in range(5):
                setting = await draw_setting(
                    np.random.default_rng(seed), runtime, task, no_limit_share=0.0,
                    speed="smollm2-cpu", unconstrained=unconstrained, stratum=(k, 4), **draws,
                )  # fmt: skip
                assert low <= setting.multiplier <= high
