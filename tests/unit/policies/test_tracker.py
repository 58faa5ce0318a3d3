"""The budget-tracker prompt (``tracker:<inner>``): the time left restated before every turn,
with the numbers the conversation shows, and nothing charged twice on the clock."""

from __future__ import annotations

import pytest

from timely.budget import Budget, TimeAwareness, read_status
from timely.clock import VirtualClock, speed_profile
from timely.errors import ConfigError
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import Deadline, bind_policy, check_policy, make_policy
from timely.policies.tracker import TrackerPolicy, reminder
from timely.rollout import Runtime
from timely.task import make_task
from timely.types import Completion, Message


class Recorder:
    """Passes turns to ``inner`` and keeps the messages it was given."""

    def __init__(self, inner, seen: list[list[Message]]) -> None:
        self.inner, self.seen, self.name = inner, seen, inner.name

    def bind(self, task):
        return Recorder(bind_policy(self.inner, task), self.seen)

    async def generate(self, messages, tools, *, deadline) -> Completion:
        self.seen.append(list(messages))
        return await self.inner.generate(messages, tools, deadline=deadline)


async def _play(policy, budget_s: float = 60.0):
    task = make_task("math/chain-v1", seed=3, split="test")
    clock = VirtualClock()
    async with Runtime() as runtime:
        traj = await run_episode(
            policy,
            task,
            await runtime.tools("constant:2.0"),
            clock,
            Budget(seconds=budget_s),
            options=EpisodeOptions(time=TimeAwareness(mode="push")),
        )
    return traj, clock


async def test_the_restatement_reaches_the_inner_policy_with_the_shown_numbers():
    seen: list[list[Message]] = []
    traj, _ = await _play(TrackerPolicy(Recorder(make_policy("scripted:oracle"), seen)))
    assert len(seen) == len(traj.steps) > 2
    for messages in seen:
        last = messages[-1]
        assert last.role == "user" and last.content.startswith("Time check:")
        shown = [read_status(m.content) for m in messages if m.role == "tool"]
        shown = [s for s in shown if s is not None]
        if not shown:  # the first turn: nothing used yet, the stated budget left
            assert "0.0s used, 60.0s left" in last.content
            continue
        latest = shown[-1]
        assert f"{latest.elapsed:.1f}s used, {latest.remaining:.1f}s left" in last.content
    # The reminder is transient: the episode's own record has none of it.
    assert not any(m.content.startswith("Time check:") for m in traj.messages)


async def test_nothing_is_charged_twice():
    traj, clock = await _play(make_policy("tracker:scripted:oracle"))
    speed = speed_profile("small-fast")
    gen = [s.gen_s for s in traj.steps]
    expected = [speed.generation_seconds(s.prompt_tokens, s.completion_tokens) for s in traj.steps]
    assert gen == pytest.approx(expected)  # one charge per turn, of the prompt the model saw
    assert clock.charged["generation"] == pytest.approx(sum(gen))
    assert clock.now() == pytest.approx(sum(s.gen_s + s.tool_s for s in traj.steps))
    assert traj.policy == "tracker:scripted:oracle"
    # The reminder's tokens are part of the prompt (charged once, as prompt), no more.
    plain, _ = await _play(make_policy("scripted:oracle"))
    pairs = zip(traj.steps, plain.steps, strict=True)
    extra = [a.prompt_tokens - b.prompt_tokens for a, b in pairs]
    assert all(0 < e < 120 for e in extra)


def test_short_time_says_answer_now_with_the_best_partial_result():
    messages = [
        Message(
            role="user", content="Solve it. You have a time budget of 10 seconds for this task."
        ),
        Message(role="assistant", content="step"),
        Message(role="tool", content="7\n[time] 8.0s used of 10s, 2.0s left"),
    ]
    text = reminder(messages)
    assert "8.0s used, 2.0s left" in text and "8.0s so far" in text
    assert "answer now with your best partial result" in text
    plenty = [*messages[:2], Message(role="tool", content="7\n[time] 1.0s used of 10s, 9.0s left")]
    assert "answer now" not in reminder(plenty)


def test_without_a_stated_budget_the_deadline_is_restated():
    clock = VirtualClock()
    text = reminder([Message(role="user", content="hi")], Deadline(at=12.5, clock=clock))
    assert "12.5s left" in text
    assert reminder([Message(role="user", content="hi")]) is None


def test_spec_checks_and_help():
    check_policy("tracker:scripted:oracle")
    with pytest.raises(ConfigError):
        check_policy("tracker:nope:x")
    from timely.policies.base import backend_help

    assert "tracker" in backend_help()


class Counting:
    """An inner policy with a tokenizer: counts one token per character."""

    name = "counting"

    def count_prompt_tokens(self, messages, tools) -> int:
        return sum(len(m.content) for m in messages)

    async def generate(self, messages, tools, *, deadline) -> Completion:
        return Completion(text="done", prompt_tokens=self.count_prompt_tokens(messages, tools))


async def test_the_token_cap_counts_the_prompt_the_inner_policy_sees():
    messages = [Message(role="user", content="Go. You have a time budget of 10 seconds.")]
    tracker = TrackerPolicy(Counting())
    seen = await tracker.generate(messages, [], deadline=Deadline(at=10.0, clock=VirtualClock()))
    assert tracker.count_prompt_tokens(messages, []) == seen.prompt_tokens
    assert seen.prompt_tokens > Counting().count_prompt_tokens(messages, [])
    # An inner policy without a tokenizer leaves the estimate to the loop, as unwrapped.
    assert getattr(make_policy("tracker:scripted:oracle"), "count_prompt_tokens", None) is None
