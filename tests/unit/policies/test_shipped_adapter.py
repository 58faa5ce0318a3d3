"""The budget-aware adapter shipped in the package (``hf:smollm2-135m-timely``): it loads without
training and, unlike the base model, answers a train-split prompt with a tool call."""

from __future__ import annotations

from timely.budget import Budget, TimeAwareness
from timely.clock import VirtualClock
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import make_policy
from timely.rollout import Runtime
from timely.task import make_task


async def test_the_shipped_adapter_calls_the_calculator_on_a_train_prompt():
    policy = make_policy("hf:smollm2-135m-timely", max_new_tokens=64)
    task = make_task("math/arithmetic-v1", seed=0, split="train")
    async with Runtime() as runtime:
        traj = await run_episode(
            policy,
            task,
            await runtime.tools("constant:1.0"),
            VirtualClock(),
            Budget(seconds=60.0),
            options=EpisodeOptions(time=TimeAwareness(mode="push"), max_turns=2),
        )
    first = traj.steps[0]
    assert first.tool_calls, f"no tool call in {first.text!r}"
    assert first.tool_calls[0].name == "calculator"
    assert first.tool_calls[0].arguments.get("expression")
