"""Decision points: the stop-or-continue choices of recorded episodes, by the steps shown."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.cli_rl import app
from timely.rng import make_rng
from timely.rollout import Runtime
from timely.runrecord.trajectories import append_trajectories
from timely.task import make_task
from timely.train.config import DataConfig
from timely.train.decisions import (
    BUCKETS,
    answer_probabilities,
    decision_points,
    decision_table,
    per_bucket,
)
from timely.train.experts import play_expert
from timely.types import Message


async def _expert_episodes(n: int = 12) -> list:
    """The budget-aware expert on math/batch under short and long budgets, status pushed."""
    config = DataConfig(
        expert="scripted:timely",
        budget_multipliers=(0.4, 2.0),
        no_limit_share=0.0,
        time_modes=("push",),
        latencies=("constant:1.0",),
        timing="estimate",
    )
    rng = make_rng("decisions-test", 0)
    async with Runtime(clock="virtual") as runtime:
        return [
            await play_expert(
                config,
                runtime,
                make_task("math/batch-v1", seed=s, split="train", difficulty=2),
                rng,
                {"difficulty": 2},
            )
            for s in range(n)
        ]


async def test_the_expert_answers_exactly_where_the_status_shows_no_step_before_the_answer():
    trajectories = await _expert_episodes()
    points = decision_points(trajectories, "math/batch")
    assert points and all(p.answered is not None for p in points)  # the expert is never cut
    stops = [p for p in points if p.answered]
    # Every stop shows "~0" (no step fits before the answer), or comes after the last part
    # (nothing to call).
    for p in stops:
        calls = sum(len(m.tool_calls) for m in p.messages if m.role == "assistant")
        assert p.steps_left == 0 or calls == 6, (p.steps_left, calls)
    # And the expert never calls again at "~0".
    assert not [p for p in points if p.steps_left == 0 and not p.answered]
    assert {p.bucket for p in points} <= set(BUCKETS)
    assert any(p.steps_left == 0 for p in stops)  # short budgets were drawn


def test_the_table_groups_points_by_the_steps_shown():
    def point(steps_left, answered):
        from timely.train.decisions import DecisionPoint

        return DecisionPoint([Message(role="user", content="x")], [], steps_left, answered)

    points = [point(0, None), point(1, True), point(1, False), point(5, False), point(3, False)]
    rows = decision_table(points, [0.9, 0.8, 0.6, 0.1, 0.3])
    by = {r["steps_left"]: r for r in rows}
    assert list(by) == ["0", "1", "3+"]  # no point showed 2
    assert by["0"] == {
        "steps_left": "0",
        "points": 1,
        "recorded_answered": None,
        "cut_off": 1,
        "p_answer": 0.9,
    }
    assert by["1"]["recorded_answered"] == 0.5 and by["1"]["p_answer"] == pytest.approx(0.7)
    assert by["3+"]["points"] == 2 and by["3+"]["p_answer"] == pytest.approx(0.2)
    # At most one point a bucket: the first of each, in order.
    assert per_bucket(points, 1) == [points[0], points[1], points[3]]


async def test_answer_probabilities_are_the_next_token_probability_of_the_prefix():
    import torch

    trajectories = await _expert_episodes(2)
    points = decision_points(trajectories)[:3]
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=1).eval()
    probs = answer_probabilities(model, tok, points, answer_prefix="Answer")
    assert len(probs) == 3 and all(0.0 < p < 1.0 for p in probs)
    # Another prefix's first token has its own probability: the prefix is what is measured.
    other = answer_probabilities(model, tok, points, answer_prefix="Zebra")
    assert other != probs
    # It is the softmax of the last prompt position, as a direct forward pass computes it.
    from timely.prompting import prompt_token_ids

    ids = prompt_token_ids(tok, points[0].messages, points[0].tools)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    first = tok("Answer", add_special_tokens=False)["input_ids"][0]
    assert probs[0] == pytest.approx(float(torch.softmax(logits.float(), -1)[first]), rel=1e-5)


async def test_the_command_refuses_a_run_without_step_counts(tmp_path):
    trajectories = await _expert_episodes(1)
    blind = [t.model_copy(update={"task_id": "math/other-v1"}) for t in trajectories]
    append_trajectories(tmp_path / "trajectories.jsonl", blind)
    result = CliRunner().invoke(app, ["decisions", str(tmp_path)])
    assert result.exit_code == 2
    assert "no tool result with a step count" in result.output
