"""The agent loop under the virtual clock with the in-process tool server (no sockets)."""

import pytest

from tests.helpers.env import in_process_tools
from tests.helpers.policies import CrashingPolicy, ReplayPolicy
from timely.budget import Budget, TimeAwareness
from timely.clock import VirtualClock
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import make_policy
from timely.reward import RewardConfig
from timely.task import make_task
from timely.types import Completion, EndReason, ToolCall

TASK = "math/arithmetic-v1"


async def _episode(
    policy="scripted:oracle",
    *,
    budget=60.0,
    latency="constant:1.0",
    seed=0,
    overrun="hard",
    options=None,
    task=TASK,
):
    pol = make_policy(policy) if isinstance(policy, str) else policy
    async with in_process_tools(latency) as tools:
        return await run_episode(
            pol,
            make_task(task, seed=seed),
            tools,
            VirtualClock(),
            Budget(seconds=budget, overrun=overrun),
            options=options or EpisodeOptions(),
        )


async def test_oracle_solves_within_budget():
    traj = await _episode()
    assert traj.end_reason == EndReason.ANSWERED
    assert traj.score == 1.0 and traj.compliant and traj.reward == 1.0
    n_calls = traj.n_tool_calls
    assert n_calls >= 1
    assert len(traj.steps) == n_calls + 1  # one Step per model turn
    assert traj.tool_s == pytest.approx(n_calls * 1.0, rel=1e-6)  # virtual: exactly the latency
    assert traj.elapsed_s == pytest.approx(traj.gen_s + traj.tool_s)


async def test_virtual_clock_is_deterministic():
    a = await _episode(seed=3, latency="lognormal:1.0,0.6")
    b = await _episode(seed=3, latency="lognormal:1.0,0.6")
    assert a.replay_json() == b.replay_json()  # all but the wall stamps (when it ran)
    c = await _episode(seed=4, latency="lognormal:1.0,0.6")
    assert c.model_dump_json() != a.model_dump_json()


async def test_hard_overrun_cuts_off_and_fails():
    traj = await _episode(budget=1.5, latency="constant:1.0")
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.final_answer is None
    assert traj.score == 0 and not traj.compliant and traj.reward == 0
    assert traj.elapsed_s <= 1.5 + 1e-9  # no call outlives the budget


async def test_late_overrun_records_answer_but_not_compliant():
    full = await _episode()
    budget = full.elapsed_s * 0.6
    late = await _episode(budget=budget, overrun="late")
    assert late.end_reason == EndReason.ANSWERED
    assert late.score == 1.0 and not late.compliant
    assert late.elapsed_s > budget
    assert late.reward == 0.0  # compliance reward
    paper = await _episode(
        budget=budget, overrun="late", options=EpisodeOptions(reward=RewardConfig(variant="paper"))
    )
    assert 0 < paper.reward < 1.1


async def test_deadline_propagates_to_tool_calls():
    # a 10 s tool with 3 s left: the call is charged only up to the budget, never past it
    traj = await _episode(budget=3.0, latency="constant:10")
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.elapsed_s == pytest.approx(3.0)
    result = traj.steps[0].tool_results[0]
    assert result.error == "deadline_exceeded"


async def test_budget_aware_beats_oracle_when_time_is_short():
    full = await _episode()
    tight = full.elapsed_s * 0.7
    oracle = await _episode(budget=tight)
    aware = await _episode("scripted:budget-aware", budget=tight)
    assert oracle.end_reason == EndReason.BUDGET_EXHAUSTED
    assert aware.end_reason == EndReason.ANSWERED and aware.compliant


async def test_malformed_and_unknown_tool_calls_become_observations():
    policy = ReplayPolicy(
        [
            Completion(
                text="<tool_call>{oops</tool_call>", malformed=["could not parse tool call"]
            ),
            Completion(text="", tool_calls=[ToolCall(id="a", name="teleport", arguments={})]),
            Completion(
                text="",
                tool_calls=[ToolCall(id="b", name="calculator", arguments={"expression": "1/0"})],
            ),
            Completion(text="Answer: 5"),
        ]
    )
    traj = await _episode(policy)
    assert traj.end_reason == EndReason.ANSWERED
    assert traj.n_malformed == 1
    assert traj.steps[0].malformed_calls == 1
    assert "could not be parsed" in traj.messages[2].content
    assert traj.steps[1].unknown_tool_calls == 1
    assert "no tool named 'teleport'" in traj.steps[1].tool_results[0].content
    assert traj.steps[1].tool_results[0].charged_s == 0.0
    assert traj.steps[2].tool_errors == 1
    # the model saw every error as a message it can act on
    assert any(m.role == "tool" and "teleport" in m.content for m in traj.messages)


async def test_policy_crash_is_recorded_not_raised():
    traj = await _episode(CrashingPolicy())
    assert traj.end_reason == EndReason.POLICY_ERROR
    assert "model server exploded" in traj.error
    assert traj.reward == 0


async def test_max_turns():
    call = ToolCall(id="x", name="calculator", arguments={"expression": "1+1"})
    traj = await _episode(
        ReplayPolicy([Completion(tool_calls=[call])]), options=EpisodeOptions(max_turns=3)
    )
    assert traj.end_reason == EndReason.MAX_TURNS
    assert len(traj.steps) == 3 and traj.reward == 0


async def test_push_status_and_budget_line():
    traj = await _episode(options=EpisodeOptions(time=TimeAwareness(mode="push")))
    assert (
        "time budget of 60 seconds" in traj.messages[0].content
        or "time budget of 60 seconds" in traj.messages[1].content
    )
    tool_msgs = [m for m in traj.messages if m.role == "tool"]
    assert tool_msgs and all("[time]" in m.content for m in tool_msgs)


async def test_pull_mode_offers_get_duration_and_paper_wording():
    call = ToolCall(id="d", name="get_duration", arguments={})
    policy = ReplayPolicy(
        [Completion(tool_calls=[call], completion_tokens=10), Completion(text="Answer: 1")]
    )
    traj = await _episode(policy, options=EpisodeOptions(time="paper"))
    offered = [t["function"]["name"] for t in policy.calls[0][1]]
    assert "get_duration" in offered  # math prefers pull; paper preset resolves auto -> pull
    user = next(m for m in traj.messages if m.role == "user")
    assert user.content.endswith("Please answer within 60 seconds.")
    assert traj.messages[-2].content.startswith("You have spent ")


async def test_generation_is_charged_from_tokens_in_virtual_time():
    policy = ReplayPolicy([Completion(text="Answer: 1", prompt_tokens=3000, completion_tokens=30)])
    opts = EpisodeOptions(speed="large-slow")  # 3000 tok/s prefill, 30 tok/s decode, 0.4 s
    traj = await _episode(policy, options=opts)
    assert traj.elapsed_s == pytest.approx(0.4 + 1.0 + 1.0)


async def test_generation_that_cannot_fit_is_cut_at_the_deadline():
    policy = ReplayPolicy([Completion(text="Answer: 1", prompt_tokens=10, completion_tokens=3000)])
    traj = await _episode(policy, budget=5.0, options=EpisodeOptions(speed="large-slow"))
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED
    assert traj.elapsed_s == pytest.approx(5.0)
    # the policy was told how many tokens would fit
    assert policy.calls[0][2].max_new_tokens < 3000
