"""verl's reward entry point recomputes the Timely-RL reward from a rollout's extra_fields."""

from __future__ import annotations

import pytest

from tests.helpers.env import in_process_tools
from tests.helpers.tiny_model import tiny_tokenizer
from tests.helpers.token_server import ScriptedTokenServer
from tests.helpers.verl_rows import arithmetic_row, small_config, solving_replies
from timely.errors import TrainingDataError
from timely.reward import RewardConfig
from timely.train.config import RLConfig
from timely.train.episodes import episode_reward
from timely.train.verl.reward import compute_score
from timely.train.verl.rollout import AgentSettings, play_row


async def rollout(replies_of, budget_s=60.0, **rl):
    tok = tiny_tokenizer()
    extra_info, task = arithmetic_row(budget_s=budget_s)
    settings = AgentSettings(rl=small_config(**rl).rl)
    async with in_process_tools("constant:0.5") as tools:
        out = await play_row(
            ScriptedTokenServer(tok, replies_of(task)),
            tok,
            extra_info,
            settings,
            tools,
            sampling_params={},
            prompt_length=4096,
            response_length=2048,
        )
    return out, settings.rl


def as_verl_passes_it(out, extra_info=None):
    """verl's naive reward manager: the row's extra_info with extra_fields merged in."""
    return compute_score(
        data_source="timely/math/arithmetic-v1",
        solution_str="(decoded response)",
        ground_truth="42",
        extra_info={**(extra_info or {"index": 0}), **out.extra_fields, "num_turns": 4},
    )


async def test_a_solved_rollout_gets_the_trainers_reward():
    out, rl = await rollout(solving_replies, reward=RewardConfig(variant="paper"))
    result = as_verl_passes_it(out)
    assert result["score"] == pytest.approx(episode_reward(out.trajectory, rl))
    assert result["score"] > 1.0  # format credit + correctness + the on-time bonus
    assert result["acc"] == 1.0 and result["on_time"] == 1.0 and result["answered"] == 1.0
    assert result["budget_use"] == pytest.approx(out.trajectory.elapsed_s / 60.0)


async def test_a_wrong_answer_and_a_cut_off_are_scored_as_the_trainer_does():
    def wrong(task):
        return ["Answer: -1<|im_end|>"]

    out, rl = await rollout(wrong, reward=RewardConfig(variant="paper"))
    assert as_verl_passes_it(out)["score"] == pytest.approx(episode_reward(out.trajectory, rl))
    assert as_verl_passes_it(out)["acc"] == 0.0

    def rambling(task):
        return ["word " * 400 + "<|im_end|>"]

    cut, rl = await rollout(rambling, budget_s=6.0)
    assert as_verl_passes_it(cut)["score"] == 0.0 == episode_reward(cut.trajectory, rl)
    assert as_verl_passes_it(cut)["answered"] == 0.0


async def test_the_ablation_is_plain_correctness_whatever_the_timing():
    out, rl = await rollout(solving_replies, time_reward=False)
    assert as_verl_passes_it(out)["score"] == 1.0 == episode_reward(out.trajectory, rl)


def test_fields_are_what_decides_not_the_text():
    fields = {
        "timely_score": 1.0,
        "timely_elapsed_s": 30.0,
        "timely_budget_s": 20.0,
        "timely_compliant": False,
        "timely_answered": True,
        "timely_time_reward": True,
        "timely_reward_config": RLConfig().reward.model_dump_json(),
    }
    late = compute_score("timely/x", "Answer: 42", "42", fields)
    # paper variant, late: half of (format + correctness) minus half a budget of overtime
    assert late["score"] == pytest.approx(0.5 * 1.1 - 0.5 * 0.5)
    assert late["on_time"] == 0.0


def test_a_rollout_not_played_by_the_timely_loop_is_refused_with_the_fix():
    with pytest.raises(TrainingDataError, match="default_agent_loop=timely_agent"):
        compute_score("timely/math/arithmetic-v1", "Answer: 4", "4", {"index": 0})
