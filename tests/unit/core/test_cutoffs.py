"""Honest cut-offs and timing: a deadline-stopped generation is never the answer, elapsed time
is fixed when the episode ends, hard budgets cut late answers, token caps count the prompt."""

from __future__ import annotations

import pytest

from tests.helpers.env import in_process_tools
from tests.helpers.policies import ReplayPolicy
from timely.budget import Budget
from timely.clock import VirtualClock, WallClock
from timely.loop import EpisodeOptions, run_episode
from timely.prompting import estimate_prompt_tokens
from timely.reward import RewardConfig
from timely.task import make_task
from timely.types import Completion, EndReason

TASK = "math/arithmetic-v1"
VARIANTS = [
    RewardConfig(),
    RewardConfig(variant="paper"),
    RewardConfig(variant="paper", bonus_shape="linear"),
    RewardConfig(variant="paper", bonus_shape="step"),
]


async def _play(policy, *, clock=None, budget=60.0, overrun="hard", reward=None, task=None):
    async with in_process_tools("constant:0.5") as tools:
        return await run_episode(
            policy,
            task or make_task(TASK, seed=0),
            tools,
            clock or VirtualClock(),
            Budget(seconds=budget, overrun=overrun),
            options=EpisodeOptions(reward=reward or RewardConfig()),
        )


def _gold_answer() -> str:
    return make_task(TASK, seed=0).solution().answer


@pytest.mark.parametrize("reward", VARIANTS, ids=lambda r: f"{r.variant}-{r.bonus_shape}")
async def test_deadline_stopped_generation_is_never_the_answer(reward):
    # A correct-looking text, but the backend says the deadline stopped it: truncated.
    cut = Completion(text=_gold_answer(), completion_tokens=5, finish_reason="deadline")
    traj = await _play(ReplayPolicy([cut]), reward=reward)
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.final_answer is None and traj.score == 0 and traj.reward == 0
    assert traj.steps[-1].finish_reason == "deadline"


async def test_deadline_stopped_tool_calls_are_not_run():
    from timely.types import ToolCall

    call = ToolCall(id="c", name="calculator", arguments={"expression": "1+1"})
    cut = Completion(tool_calls=[call], completion_tokens=5, finish_reason="deadline")
    traj = await _play(ReplayPolicy([cut]))
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.steps[-1].tool_results == []


class _LateWallPolicy:
    """Answers correctly, but only after really waiting past the budget (ignoring the cutoff
    the way a blocking backend would: the wait is shielded from cancellation)."""

    name = "test:late-wall"

    def __init__(self, seconds: float, answer: str) -> None:
        self.seconds, self.answer = seconds, answer

    async def generate(self, messages, tools, *, deadline):
        import asyncio

        await asyncio.shield(WallClock().sleep(self.seconds))
        return Completion(text=self.answer, completion_tokens=3)


async def test_wall_clock_answer_after_a_hard_budget_is_a_cut_off():
    traj = await _play(_LateWallPolicy(0.3, _gold_answer()), clock=WallClock(), budget=0.1)
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.final_answer is None and traj.reward == 0


async def test_late_overrun_keeps_late_credit_on_a_wall_clock():
    paper = RewardConfig(variant="paper")
    traj = await _play(
        _LateWallPolicy(0.3, _gold_answer()),
        clock=WallClock(),
        budget=0.25,
        overrun="late",
        reward=paper,
    )
    assert traj.end_reason == EndReason.ANSWERED and not traj.compliant
    assert traj.score == 1.0
    assert 0 < traj.reward < paper.late_credit * (paper.format_credit + 1) + 1e-9


def _slow_teardown_task(seconds: float):
    task = make_task(TASK, seed=0)
    clock_holder: dict = {}

    async def teardown(tools, session_id):
        await clock_holder["clock"].sleep(seconds)  # closing a big workspace takes time

    task.teardown = teardown  # type: ignore[method-assign]
    return task, clock_holder


@pytest.mark.parametrize("kind", ["virtual", "wall"])
async def test_teardown_is_not_agent_time(kind):
    from timely.policies.base import make_policy

    clock = VirtualClock() if kind == "virtual" else WallClock()
    task, holder = _slow_teardown_task(100.0 if kind == "virtual" else 0.3)
    holder["clock"] = clock
    traj = await _play(make_policy("scripted:oracle"), clock=clock, budget=30, task=task)
    assert traj.end_reason == EndReason.ANSWERED and traj.compliant
    assert traj.elapsed_s < 30
    assert traj.elapsed_s == pytest.approx(traj.steps[-1].ended_at, abs=0.05)


class _CountingPolicy(ReplayPolicy):
    """Reports a prompt size through ``count_prompt_tokens``, as local backends do."""

    def __init__(self, prompt_tokens: int) -> None:
        super().__init__([Completion(text="Answer: 1", completion_tokens=1)])
        self._prompt_tokens = prompt_tokens

    def count_prompt_tokens(self, messages, tools) -> int:
        return self._prompt_tokens


async def test_token_cap_counts_the_prompt_with_the_policys_tokenizer():
    from timely.clock import speed_profile

    speed = speed_profile("small-fast")
    small, large = _CountingPolicy(10), _CountingPolicy(150_000)
    await _play(small, budget=5)
    await _play(large, budget=5)
    cap_small = small.calls[0][2].max_new_tokens
    cap_large = large.calls[0][2].max_new_tokens
    assert cap_small == speed.max_tokens_within(5, 10)
    assert cap_large == speed.max_tokens_within(5, 150_000) < cap_small


async def test_token_cap_estimate_includes_tool_schemas_and_template():
    from timely.clock import speed_profile

    replay = ReplayPolicy([Completion(text="Answer: 1", completion_tokens=1)])
    await _play(replay, budget=5)
    messages, tools, deadline = replay.calls[0]
    content_only = sum(len(m.content) for m in messages) // 4
    prompt = estimate_prompt_tokens(messages, tools)
    assert prompt > content_only + 50  # the tools section and headers are counted
    assert deadline.max_new_tokens == speed_profile("small-fast").max_tokens_within(5, prompt)


async def test_trajectory_records_the_offered_tools():
    from timely.policies.base import make_policy

    traj = await _play(make_policy("scripted:oracle"))
    names = [t["function"]["name"] for t in traj.tools]
    assert names[: len(make_task(TASK, seed=0).spec.tools)] == list(
        make_task(TASK, seed=0).spec.tools
    )
    assert all("parameters" in t["function"] for t in traj.tools)


async def test_trajectory_records_the_target():
    from timely.policies.base import make_policy

    traj = await _play(make_policy("scripted:oracle"))
    assert traj.target == make_task(TASK, seed=0).target() is not None
