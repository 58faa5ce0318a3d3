"""Recorded log-probs are exactly what a trainer recomputes from the stored ids.

The sampler records ``log_softmax(logits / temperature)`` of each sampled token (before top-p);
:func:`~timely.policies.logprobs.recompute_logprobs` recomputes that from ``prompt_token_ids +
token_ids`` with one teacher-forced float32 forward pass. The episodes here are multi-turn tool
episodes played by ``run_episode`` (a tiny llama leaning toward scripted calls), so later prompts
hold earlier sampled ids, tool results and time status, and batches are left-padded.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.episodes import play_calculator
from timely.policies.hf import HFPolicy
from timely.policies.logprobs import recompute_logprobs, sample_next, top_p_mask
from timely.types import Trajectory

TEMPERATURE = 0.7
TOLERANCE = 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def max_recompute_error(model, trajectories: list[Trajectory], temperature: float) -> float:
    worst = 0.0
    for traj in trajectories:
        for step in traj.steps:
            assert step.prompt_token_ids and step.token_ids
            assert len(step.logprobs) == len(step.token_ids)
            again = recompute_logprobs(model, step.prompt_token_ids, step.token_ids, temperature)
            worst = max(worst, max(abs(a - b) for a, b in zip(again, step.logprobs, strict=True)))
    return worst


def assert_multi_turn_with_tools(tok, traj: Trajectory) -> None:
    assert len(traj.steps) >= 2, traj.end_reason
    later = tok.decode(traj.steps[-1].prompt_token_ids)
    assert "<tool_response>" in later and "[time]" in later


async def test_multi_turn_tool_episode_logprobs_match_recompute(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=120, temperature=TEMPERATURE, top_p=0.9, seed=1)
    (traj,) = await play_calculator(policy, [0])
    assert_multi_turn_with_tools(tok, traj)
    assert traj.n_tool_calls >= 1
    first = traj.steps[0]
    sampled = first.prompt_token_ids + first.token_ids
    assert traj.steps[1].prompt_token_ids[: len(sampled)] == sampled  # holds earlier samples
    logprobs = [lp for s in traj.steps for lp in s.logprobs]
    assert sum(logprobs) < -1.0 and min(logprobs) < -0.3  # a distribution, not a lookup
    assert max_recompute_error(model, [traj], TEMPERATURE) <= TOLERANCE
    # The records are temperature-scaled: the unscaled distribution does not reproduce them.
    assert max_recompute_error(model, [traj], 1.0) > 10 * TOLERANCE


async def test_batched_left_padded_episodes_match_recompute(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=120, temperature=TEMPERATURE, batch_window_s=0.2)
    trajectories = await play_calculator(policy, [0, 1, 2])
    assert max(policy.batcher.batch_sizes) == 3
    first_prompts = {len(t.steps[0].prompt_token_ids) for t in trajectories}
    assert len(first_prompts) > 1  # rows of one batch had different lengths: left padding
    for traj in trajectories:
        assert_multi_turn_with_tools(tok, traj)
    assert max_recompute_error(model, trajectories, TEMPERATURE) <= TOLERANCE


async def test_greedy_records_the_unscaled_distribution(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=120, batch_window_s=0.2)
    trajectories = await play_calculator(policy, [0, 1], max_turns=2)
    assert max_recompute_error(model, trajectories, 0.0) <= TOLERANCE
    step = trajectories[0].steps[0]
    ids = torch.tensor([step.prompt_token_ids + step.token_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(step.prompt_token_ids) - 1 : -1]
    assert logits.argmax(-1).tolist() == step.token_ids


def test_sampling_draws_inside_the_nucleus_but_records_the_full_distribution():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=gen) * 3
    scaled = logits / TEMPERATURE
    outside = top_p_mask(scaled, 0.5)
    probs = scaled.softmax(-1)
    kept_mass = (probs * ~outside).sum(-1)
    assert bool((kept_mass >= 0.5 - 1e-6).all())
    # Smallest such set: without its least probable kept token the mass is below top_p.
    least = probs.masked_fill(outside, 2.0).min(-1).values
    assert bool((kept_mass - least < 0.5).all())
    tokens, recorded = sample_next(logits, temperature=TEMPERATURE, top_p=0.5, generator=gen)
    assert not bool(outside.gather(1, tokens[:, None]).any())
    full = torch.log_softmax(scaled, -1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(recorded, full)
    greedy, greedy_lp = sample_next(logits, temperature=0.0)
    assert greedy.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(greedy_lp, torch.log_softmax(logits, -1).max(-1).values)


def test_recompute_needs_a_prompt(model):
    with pytest.raises(ValueError, match="prompt"):
        recompute_logprobs(model, [], [5], 1.0)
    assert recompute_logprobs(model, [5], [], 1.0) == []
