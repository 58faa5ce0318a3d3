"""The budget-aware expert on the *shown* time (``scripted:timely``): reading statuses, its
stopping rule on hand-built conversations, clock reads where the time is pulled, salvaging
cut-off episodes, and the status every training time mode shows after each tool result."""

from __future__ import annotations

import re

import numpy as np
import pytest

from timely.budget import (
    ANSWER_RESERVE_STEPS,
    GET_DURATION_TOOL,
    SHOWN_RESOLUTION_S,
    TIME_AWARENESS_PRESETS,
    Budget,
    TimeAwareness,
    TimeStatus,
    get_duration_schema,
    read_status,
)
from timely.clock import VirtualClock
from timely.policies.base import Deadline, bind_policy, make_policy
from timely.policies.scripted import CLOCK_TEXT, answer_now, shown_times
from timely.rollout import EpisodeSpec, Runtime, time_awareness
from timely.task import make_task
from timely.train.config import DataConfig
from timely.train.expert_gap import expert_gap
from timely.train.experts import play_expert, salvage, task_steps
from timely.types import EndReason, Message

CHAIN = make_task("math/chain-v1", seed=0, split="test", difficulty=2)  # 6 parts
SOLUTION = CHAIN.solution()
CALCULATOR = {
    "type": "function",
    "function": {"name": "calculator", "parameters": {"type": "object", "properties": {}}},
}
PUSH = TimeAwareness(mode="push")


def _conversation(readings: list[float | None], budget: float = 30.0) -> list[Message]:
    """The chain's prompt with ``budget`` stated, then one step per reading: the step's call
    and its result, with the status line pushed at ``elapsed`` (None: nothing shown)."""
    messages = [Message(role="user", content=f"{CHAIN.spec.prompt}\n\n{PUSH.budget_line(budget)}")]
    for i, elapsed in enumerate(readings):
        call = SOLUTION.calls[i]
        content = "42"
        if elapsed is not None:
            content += "\n" + PUSH.status_line(TimeStatus(budget=budget, elapsed=elapsed))
        messages += [
            Message(role="assistant", content=f"Step {i + 1}", tool_calls=[call]),
            Message(role="tool", content=content, tool_call_id=call.id, name=call.name),
        ]
    return messages


async def _turn(messages, tools=(CALCULATOR,), deadline_at: float = 1e9, **options):
    """The timely expert's reply; the deadline is far away (it must not matter)."""
    expert = bind_policy(make_policy("scripted:timely", **options), CHAIN)
    deadline = Deadline(at=deadline_at, clock=VirtualClock())
    return await expert.generate(messages, list(tools), deadline=deadline)


@pytest.mark.parametrize("wording", ["default", "paper"])
def test_a_status_line_reads_back_as_shown(wording):
    time = TimeAwareness(wording=wording)
    line = time.status_line(TimeStatus(budget=12.5, elapsed=3.24))
    status = read_status(f"You open the door.\n[score 1/4]\n{line}", budget_s=12.5)
    assert status == TimeStatus(budget=12.5, elapsed=3.2)
    assert read_status("no time here", 12.5) is None
    if wording == "paper":  # elapsed only: the budget comes from the prompt
        assert read_status(line) is None


def test_shown_times_take_the_latest_reading_and_the_costlier_recent_step():
    shown = shown_times(_conversation([2.0, 4.0, 7.0]))
    assert (shown.steps, shown.elapsed, shown.remaining) == (3, 7.0, 23.0)
    assert shown.step_s == pytest.approx(3.0)  # the last step (3 s) over the average (2.33 s)
    assert shown_times(_conversation([])).step_s is None  # the start: 0 s used, nothing seen
    no_budget = [Message(role="user", content=CHAIN.spec.prompt)]
    assert shown_times(no_budget) is None and not answer_now(None, 3, safety=2.0)


def test_the_rule_stops_when_less_than_safety_steps_are_left():
    shown = shown_times(_conversation([2.0, 4.0, 6.0]))  # 2 s a step, 24 s left
    assert not answer_now(shown, 3, safety=2.0)
    late = shown_times(_conversation([2.0, 4.0, 27.0], budget=30.0))  # 3 s left, 21 s a step
    assert answer_now(late, 3, safety=2.0)
    # Steps taken since the latest reading are charged at the step cost seen.
    assert answer_now(shown, 3 + 10, safety=2.0)


async def test_ample_time_takes_the_next_step():
    out = await _turn(_conversation([2.0, 4.0]), safety=2.0)
    assert out.tool_calls == [SOLUTION.calls[2]]


async def test_too_little_time_answers_with_the_parts_found_so_far():
    messages = _conversation([8.0, 16.0, 24.0])  # 8 s a step, 6 s left
    out = await _turn(messages, safety=2.0)
    assert not out.tool_calls and out.text == SOLUTION.fallback_answers[3]
    finished = [p for p in CHAIN.problem.parts if p.last_step < 3]
    assert CHAIN.score(out.text) == pytest.approx(len(finished) / len(CHAIN.problem.parts))
    # The deadline it is given (which the model never sees) changes nothing.
    assert (await _turn(messages, deadline_at=0.001, safety=2.0)).text == out.text
    assert (await _turn(_conversation([2.0, 4.0]), deadline_at=0.001)).tool_calls


async def test_a_budget_too_short_for_one_step_answers_at_once():
    out = await _turn(_conversation([], budget=3.0), safety=2.0, first_step_s=2.0)
    assert not out.tool_calls and out.text == SOLUTION.fallback_answers[0]


async def test_where_time_is_pulled_it_reads_the_clock_before_deciding():
    tools = (CALCULATOR, get_duration_schema())
    unread = _conversation([2.0, None, None])  # read after step 1, nothing since
    out = await _turn(unread, tools, clock_every=2)
    assert [c.name for c in out.tool_calls] == [GET_DURATION_TOOL] and out.text == CLOCK_TEXT
    # Extrapolated close to the end: read before stopping, even without clock_every.
    tight = _conversation([8.0, None], budget=30.0)  # ~14 s left by extrapolation, 8 s a step
    out = await _turn(tight, tools, clock_every=0, safety=2.0)
    assert [c.name for c in out.tool_calls] == [GET_DURATION_TOOL]
    # Once read, it decides on the reading (clock reads are no steps of the script).
    status = PUSH.status_line(TimeStatus(budget=30.0, elapsed=17.0))
    tight += [
        Message(role="assistant", content=CLOCK_TEXT, tool_calls=[out.tool_calls[0]]),
        Message(role="tool", content=status, tool_call_id="clock_0", name=GET_DURATION_TOOL),
    ]
    out = await _turn(tight, tools, clock_every=0, safety=2.0)
    assert not out.tool_calls and out.text == SOLUTION.fallback_answers[2]


async def test_wrapping_up_without_tools_answers():
    out = await _turn(_conversation([1.0]), tools=())
    assert not out.tool_calls and out.text == SOLUTION.fallback_answers[1]


@pytest.mark.parametrize("mode", ["push", "both"])
async def test_training_time_modes_push_elapsed_and_remaining_after_every_tool_result(mode):
    assert time_awareness(mode) == TIME_AWARENESS_PRESETS[mode]
    async with Runtime() as runtime:
        rows = await expert_gap(
            tasks=("games/treasure-v1",), multipliers=(1.0,), seeds=1, time_mode=mode
        )
        assert rows[0].expert_on_time == 1.0
        task = make_task("games/treasure-v1", seed=0, split="train", difficulty=1)
        config = DataConfig(
            expert="scripted:timely",
            time_modes=(mode,),
            no_limit_share=0.0,
            latencies=("constant:1.0",),
            timing="estimate",
        )
        traj = await play_expert(config, runtime, task, np.random.default_rng(0), {})
    budget = traj.budget_s
    results = [m for m in traj.messages if m.role == "tool"]
    assert results and traj.end_reason == EndReason.ANSWERED
    for n, m in enumerate(results, 1):  # the last line of every result: used, budget, left
        line = m.content.splitlines()[-1]
        found = re.fullmatch(
            r"\[time\] ([\d.]+)s used of ([\d.]+)s, ([\d.]+)s left, "
            r"room for ~(\d+) steps? of ([\d.]+)s and the answer",
            line,
        )
        assert found is not None, line
        used, shown_budget, left, steps, step_s = (float(g) for g in found.groups())
        assert shown_budget == pytest.approx(budget, abs=0.05)
        assert used + left == pytest.approx(shown_budget, abs=0.11)
        # The step cost is at least the average so far, and the count is what fits in the rest
        # once the answer's turn (one step) is held back.
        assert step_s >= used / n - 0.05
        fits = (left - SHOWN_RESOLUTION_S) / step_s
        assert steps == max(0, int(fits) - ANSWER_RESERVE_STEPS) or abs(fits - round(fits)) < 0.05


async def test_a_cut_off_episode_is_replayed_into_an_answer_in_time():
    """An expert that ignores time is cut off; salvage caps its steps until it answers."""
    config = DataConfig(
        expert="scripted:oracle",
        expert_options={},
        budget_multipliers=(0.5, 0.5),
        no_limit_share=0.0,
        time_modes=("push",),
        latencies=("constant:1.0",),
        timing="estimate",
    )
    task = make_task("math/chain-v1", seed=1, split="train", difficulty=2)
    async with Runtime() as runtime:
        traj = await play_expert(config, runtime, task, np.random.default_rng(0), {})
    assert traj.end_reason == EndReason.ANSWERED and traj.compliant
    salvaged = traj.metadata["salvaged"]
    assert task_steps(traj) < salvaged["steps"] and traj.metadata["early"]
    assert traj.final_answer == task.solution().fallback_answers[task_steps(traj)]
    assert 0 < traj.score < 1


async def test_salvage_gives_the_cut_episode_back_when_nothing_fits():
    async with Runtime() as runtime:
        task = make_task("math/chain-v1", seed=1, split="train", difficulty=2)
        cut = await runtime.play(
            _spec(task, budget=0.01), make_policy("scripted:oracle"), task=task
        )
        assert cut.end_reason == EndReason.BUDGET_EXHAUSTED

        async def replay(cap: int):
            return await runtime.play(
                _spec(task, budget=0.01), make_policy("scripted:oracle", stop_after=cap), task=task
            )

        assert await salvage(cut, replay) is cut


def _spec(task, budget: float) -> EpisodeSpec:
    return EpisodeSpec(
        task_id=task.id,
        seed=task.spec.seed,
        split=task.spec.split,
        difficulty=task.spec.difficulty,
        latency="constant:1.0",
        budget=Budget(seconds=budget),
        time=PUSH,
    )


async def test_the_gap_table_puts_the_expert_between_the_oracle_and_hindsight():
    rows = await expert_gap(
        tasks=("math/chain-v1",), multipliers=(0.5, 2.0), seeds=2, latencies=("constant:1.0",)
    )
    short, ample = rows
    assert short.oracle == 0.0 < short.expert <= short.hindsight < 1.0  # cut off vs partial
    assert ample.oracle == ample.expert == ample.hindsight == 1.0
    assert short.expert_on_time == ample.expert_on_time == 1.0 and short.episodes == 2


async def test_in_pull_mode_an_early_answer_follows_a_clock_reading():
    config = DataConfig(
        expert="scripted:timely",
        budget_multipliers=(0.6, 0.6),
        no_limit_share=0.0,
        time_modes=("pull",),
        latencies=("constant:1.0",),
        timing="estimate",
    )
    async with Runtime() as runtime:
        for seed in range(3):
            task = make_task("math/chain-v1", seed=seed, split="train", difficulty=2)
            traj = await play_expert(config, runtime, task, np.random.default_rng(seed), {})
            assert traj.end_reason == EndReason.ANSWERED and traj.compliant
            assert traj.metadata["early"] and "salvaged" not in traj.metadata
            readings = [m for m in traj.messages if m.name == GET_DURATION_TOOL]
            assert readings and traj.messages[-2].name == GET_DURATION_TOOL
            assert read_status(traj.messages[-2].content) is not None
