"""Cold-start data: expert episodes tokenised as the local policy sees them, the parquet round
trip, short budgets answered early, and rejection samples from recorded ids."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers.episodes import play_calculator
from tests.helpers.scripted_model import scripted_model, tool_then_answer
from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.budget import GET_DURATION_TOOL
from timely.errors import TrainingDataError
from timely.policies.hf import HFPolicy
from timely.prompting import assistant_text, render_prompt
from timely.rollout import Runtime
from timely.task import make_task
from timely.train.config import DataConfig
from timely.train.data import (
    EXPERT_SHARD,
    add_rejection_samples,
    build_dataset,
    load_sft_dataset,
    load_tokenizer,
    read_trajectories,
    trajectory_rows,
    with_token_records,
)
from timely.train.experts import direct_solution, expert_view, play_expert
from timely.train.view import ViewForm, training_view
from timely.types import EndReason

# Every family and time mode, a few episodes each: a couple of seconds to play.
SMALL = DataConfig(episodes_per_task=4, latencies=("constant:0.2", "constant:1.0"))


@pytest.fixture(scope="module")
def etok():
    """The embedded model's tokenizer (from its converted copy: no weights are loaded)."""
    return load_tokenizer()


@pytest.fixture(scope="module")
def built(tmp_path_factory, etok):
    out = tmp_path_factory.mktemp("data") / "cold-start"
    return build_dataset(SMALL, out, tokenizer=etok, progress=False)


@pytest.fixture(scope="module")
def kept(built):
    return [t for t in read_trajectories(built) if t.end_reason == EndReason.ANSWERED]


def _runs(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    """Maximal runs of equal mask values: (value, ids)."""
    runs: list[tuple[int, list[int]]] = []
    for i, m in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(i)
        else:
            runs.append((m, [i]))
    return runs


def test_expert_ids_decode_to_the_rendered_conversation_and_mask_only_assistant_turns(kept, etok):
    families = {t.task_id.split("/")[0] for t in kept}
    assert families == {"math", "games"}
    for traj in kept:
        (row,) = trajectory_rows(traj, etok)
        full = render_prompt(etok, traj.messages, traj.tools, add_generation_prompt=False)
        assert etok.decode(row["input_ids"]) == full
        runs = _runs(row["input_ids"], row["loss_mask"])
        sampled = [etok.decode(ids) for m, ids in runs if m == 1]
        replies = [m for m in traj.messages if m.role == "assistant"]
        assert sampled == [assistant_text(m.content, m.tool_calls) + "<|im_end|>" for m in replies]
        for k, (m, _) in enumerate(runs):
            if m == 1:  # the header that opens the turn is context, not a target
                assert etok.decode(runs[k - 1][1]).endswith("<|im_start|>assistant\n")
        seen = "".join(etok.decode(ids) for m, ids in runs if m == 0)
        assert seen.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in seen


def test_expert_records_keep_the_prefix_property(kept, etok):
    for traj in kept:
        filled = with_token_records(traj, etok)
        view = training_view(filled)
        assert view.form == ViewForm.SEQUENCE, view.reason
        for step, (start, end) in zip(filled.steps, view.sequence.turn_spans, strict=True):
            assert view.sequence.token_ids[:start] == step.prompt_token_ids
            assert view.sequence.token_ids[start:end] == step.token_ids


def test_expert_turns_are_charged_the_tokens_the_example_trains_on(kept, etok):
    for traj in kept:
        filled = with_token_records(traj, etok)
        for step, tokens in zip(traj.steps, filled.steps, strict=True):
            assert step.prompt_tokens == len(tokens.prompt_token_ids)
            assert step.completion_tokens == len(tokens.token_ids)


def test_the_dataset_round_trips_through_parquet(built, kept, etok, tmp_path):
    from datasets import Dataset

    read = Dataset.from_parquet(str(built / EXPERT_SHARD), cache_dir=str(tmp_path)).to_list()
    assert load_sft_dataset(built).to_list() == read
    expected = [row for t in kept for row in trajectory_rows(t, etok)]

    def key(row):
        return (row["task_id"], row["seed"])

    assert sorted(read, key=key) == sorted(expected, key=key)
    assert {r["split"] for r in read} == {"train"} and {r["source"] for r in read} == {"expert"}
    for row in read:
        assert row["n_tokens"] == len(row["input_ids"]) == len(row["loss_mask"])
        assert (row["multiplier"] is None) == (row["budget_s"] is None)
        tools = json.loads(row["tools"])
        assert render_prompt(etok, row["messages"], tools, add_generation_prompt=False) == (
            etok.decode(row["input_ids"])
        )
    card = (built / "README.md").read_text()
    assert f"rows: **{len(read)}**" in card and "Splits in it: **train**" in card


def test_a_complete_build_is_not_redone(built, etok):
    before = (built / EXPERT_SHARD).stat().st_mtime_ns
    assert build_dataset(SMALL, built, tokenizer=etok, progress=False) == built
    assert (built / EXPERT_SHARD).stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("task_id", "options"),
    [("math/arithmetic-v1", {}), ("games/treasure-v1", {"difficulty": 1})],
)
async def test_half_the_expert_time_gets_an_early_answer_not_a_cut_off(task_id, options, etok):
    config = SMALL.model_copy(
        update={
            "budget_multipliers": (0.5, 0.5),
            "no_limit_share": 0.0,
            "time_modes": ("pull",),
            "latencies": ("constant:1.0",),
            # The reference route has steps to stop between; the direct one (one call) does
            # not fit half its own time at all.
            "solution": "reference",
        }
    )
    rng = np.random.default_rng(0)
    async with Runtime() as runtime:
        for seed in range(4):
            task = make_task(task_id, seed=seed, split="train", **options)
            traj = await play_expert(config, runtime, task, rng, options, etok)
            assert traj.end_reason == EndReason.ANSWERED and traj.compliant
            assert traj.metadata["early"] and traj.metadata["setting"]["multiplier"] == 0.5
            assert traj.final_answer in task.solution().fallback_answers


async def test_pull_mode_experts_read_the_clock_before_answering_early(etok):
    config = SMALL.model_copy(
        update={"budget_multipliers": (0.8, 0.8), "no_limit_share": 0.0, "time_modes": ("pull",)}
    )
    rng = np.random.default_rng(0)
    async with Runtime() as runtime:
        task = make_task("math/word-problems-v1", seed=0, split="train")
        traj = await play_expert(config, runtime, task, rng, {}, etok)
    assert traj.metadata["early"]
    before_answer = traj.messages[-2]
    assert before_answer.role == "tool" and before_answer.name == GET_DURATION_TOOL
    assert "[time]" in before_answer.content


@pytest.fixture(scope="module")
def rollouts():
    """Episodes of a tiny local model with real token records (what RL collects)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run faster on one thread than on two busy cores
    tok = tiny_tokenizer()
    model = scripted_model(tiny_model(len(tok)), tok, tool_then_answer("6*7", "42+1"))
    try:
        return asyncio.run(play_calculator(HFPolicy(model, tok, max_new_tokens=120), [0, 1]))
    finally:
        torch.set_num_threads(threads)


def test_rejection_samples_append_the_recorded_ids(built, rollouts, tmp_path):
    data = shutil.copytree(built, tmp_path / "data")
    experts = len(load_sft_dataset(data))
    assert add_rejection_samples(data, rollouts, min_reward=2.0) == 0  # none that good
    added = add_rejection_samples(data, rollouts, min_reward=0.0)
    assert added == len(rollouts)
    assert add_rejection_samples(data, rollouts, min_reward=0.0) == 0  # same rollouts: once
    rows = load_sft_dataset(data).to_list()
    mine = [r for r in rows if r["source"] == "rejection"]
    assert len(rows) == experts + added
    for traj, row in zip(rollouts, mine, strict=True):
        seq = training_view(traj).sequence
        assert row["input_ids"] == seq.token_ids and row["loss_mask"] == seq.loss_mask
        assert row["policy"] == traj.policy and row["turn"] is None
    assert "rejection: 2" in (data / "README.md").read_text()


def test_a_broken_prefix_gives_one_row_per_turn(rollouts):
    traj = rollouts[0].model_copy(deep=True)
    cut = len(traj.steps[0].prompt_token_ids) + 3
    traj.steps[1].prompt_token_ids[cut] += 1
    rows = trajectory_rows(traj, source="rejection")
    assert [r["turn"] for r in rows] == [s.index for s in traj.steps]
    for step, row in zip(traj.steps, rows, strict=True):
        assert row["input_ids"] == step.prompt_token_ids + step.token_ids
        assert row["loss_mask"] == [0] * len(step.prompt_token_ids) + [1] * len(step.token_ids)
        assert row["messages"][-1]["role"] == "assistant"


async def test_the_direct_expert_calls_the_calculator_once_with_the_whole_expression(etok):
    config = SMALL.model_copy(
        update={"budget_multipliers": (2.0, 2.0), "no_limit_share": 0.0, "solution": "direct"}
    )
    task = make_task("math/arithmetic-v1", seed=2, split="train")
    expression = task.problem.text.removeprefix("Compute the exact value of the expression ")
    async with Runtime() as runtime:
        traj = await play_expert(config, runtime, task, np.random.default_rng(0), {}, etok)
    calls = [c for m in traj.messages for c in (m.tool_calls or []) if c.name == "calculator"]
    assert [c.arguments["expression"] for c in calls] == [expression.removesuffix(".")]
    assert traj.end_reason == EndReason.ANSWERED and traj.score == 1.0 and traj.compliant
    # Other tasks keep their reference route.
    game = make_task("games/treasure-v1", seed=0, split="train", difficulty=1)
    assert expert_view(game, "direct") is game and direct_solution(game) is None


def test_cut_off_and_partial_expert_episodes_are_kept_when_answered_in_time(tmp_path, etok):
    """An expert that ignores time is cut off at half its time; the data keeps each episode
    replayed into an early answer with the parts found so far instead of dropping it."""
    config = SMALL.model_copy(
        update={
            "tasks": ("math/chain-v1",),
            "task_options": {"math/chain-v1": {"difficulty": 2}},
            "episodes_per_task": 3,
            "expert": "scripted:oracle",
            "expert_options": {},
            "budget_multipliers": (0.5, 0.5),
            "no_limit_share": 0.0,
            "time_modes": ("push",),
        }
    )
    out = build_dataset(config, tmp_path / "data", tokenizer=etok, progress=False)
    build = json.loads((out / "build.json").read_text())
    assert build["played"] == build["kept"] == build["salvaged"] == build["early"] == 3
    rows = load_sft_dataset(out).to_list()
    assert len(rows) == 3 and all(r["early"] and r["end_reason"] == "answered" for r in rows)
    assert all(0 < r["score"] < 1 for r in rows)  # partial credit, answered in time
    for traj in read_trajectories(out):
        assert traj.compliant and traj.metadata["salvaged"]["steps"] > traj.n_tool_calls


def test_scored_keeps_only_on_time_answers_that_score(tmp_path, etok):
    """At budgets under one calculator call the arithmetic expert answers at once with nothing
    computed (score 0, on time): ``keep=scored`` drops those rows, ``on_time`` keeps them."""
    config = SMALL.model_copy(
        update={
            "tasks": ("math/arithmetic-v1",),
            "episodes_per_task": 12,
            "expert": "scripted:timely",
            "budget_multipliers": (0.3, 3.0),
            "no_limit_share": 0.0,
            "time_modes": ("push",),
        }
    )
    on_time = build_dataset(config, tmp_path / "on_time", tokenizer=etok, progress=False)
    scored = build_dataset(
        config.model_copy(update={"keep": "scored"}),
        tmp_path / "scored",
        tokenizer=etok,
        progress=False,
    )
    every = load_sft_dataset(on_time).to_list()
    assert any(r["score"] == 0 for r in every)  # the guesses the issue is about
    assert any(r["score"] > 0 for r in every)
    kept = load_sft_dataset(scored).to_list()
    assert kept and all(r["score"] > 0 for r in kept)
    assert len(kept) == sum(1 for r in every if r["score"] > 0)


def test_a_build_that_keeps_nothing_says_why(tmp_path, etok):
    config = SMALL.model_copy(
        update={
            "tasks": ("math/arithmetic-v1",),
            "episodes_per_task": 2,
            "budget_multipliers": (0.01, 0.02),  # no time for anything: every answer a guess
            "no_limit_share": 0.0,
            "keep": "scored",
        }
    )
    with pytest.raises(TrainingDataError, match="kept none of the 2 expert episodes"):
        build_dataset(config, tmp_path / "data", tokenizer=etok, progress=False)
