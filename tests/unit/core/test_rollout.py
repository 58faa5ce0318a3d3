"""The rollout engine: what episodes share is built once, and the engine only arranges episodes."""

from __future__ import annotations

import numpy as np
import pytest

from timely.budget import Budget, TimeAwareness
from timely.clock import VirtualClock
from timely.loop import run_episode
from timely.rollout import (
    CalibrationKey,
    EpisodeSpec,
    Runtime,
    draw_speed_factor,
    episode_options,
    opening,
    time_awareness,
)
from timely.task import make_task
from timely.types import Completion


async def test_one_tool_server_per_latency_and_one_policy_per_spec():
    async with Runtime() as runtime:
        fast, slow = await runtime.tools("constant:0.1"), await runtime.tools("constant:2")
        assert fast is await runtime.tools("constant:0.1") and fast is not slow
        policy = await runtime.policy("scripted:oracle")
        assert policy is await runtime.policy("scripted:oracle", {})
        assert policy is not await runtime.policy("scripted:budget-aware")


async def test_play_is_run_episode_with_the_specs_settings():
    spec = EpisodeSpec(
        task_id="math/arithmetic-v1",
        seed=3,
        latency="constant:1.0",
        budget=Budget(seconds=60),
        time=time_awareness("push"),
        key="ep-fixed",
    )
    async with Runtime() as runtime:
        policy = await runtime.policy("scripted:oracle")
        played = await runtime.play(spec, policy)
        direct = await run_episode(
            policy,
            spec.make_task(),
            await runtime.tools(spec.latency),
            VirtualClock(),
            spec.budget,
            options=episode_options(time="push", speed=spec.speed),
            session_id="ep-fixed",
            latency=spec.latency,
        )
    a, b = (t.model_dump(exclude={"started_at_utc", "ended_at_utc"}) for t in (played, direct))
    assert a == b and played.score == 1.0 and played.latency == "constant:1.0"
    with pytest.raises(ValueError):  # frozen: a spec is a value
        spec.seed = 4  # type: ignore[misc]


async def test_the_calibrator_plays_each_key_once():
    task = make_task("math/arithmetic-v1", seed=0, split="train")
    async with Runtime() as runtime:
        first = await runtime.calibrator.oracle_seconds(task, "constant:1.0", "smollm2-cpu")
        again = await runtime.calibrator.oracle_seconds(task, "constant:1.0", "smollm2-cpu")
        slower = await runtime.calibrator.oracle_seconds(task, "constant:3.0", "smollm2-cpu")
        keys = list(runtime.calibrator.cache)
    assert first == again and slower > first
    assert len(keys) == 2 and all(isinstance(k, CalibrationKey) for k in keys)
    async with Runtime() as fresh:  # the cache is the runtime's, not the module's
        assert fresh.calibrator.cache == {}


def test_a_degenerate_speed_range_is_its_value_and_draws_nothing():
    rng, untouched = np.random.default_rng(5), np.random.default_rng(5)
    assert draw_speed_factor(rng, (1.5, 1.5)) == 1.5
    assert rng.random() == untouched.random()
    factors = [draw_speed_factor(rng, (0.5, 2.0)) for _ in range(200)]
    assert 0.5 <= min(factors) < 1.0 < max(factors) <= 2.0


def test_time_modes_map_to_the_presets_and_none_is_told_nothing():
    assert time_awareness("push") == TimeAwareness(mode="push")
    assert time_awareness("none") == TimeAwareness(mode="none", show_budget=False)
    assert time_awareness("auto") == TimeAwareness()


@pytest.mark.parametrize("mode", ["push", "pull", "none"])
async def test_opening_is_the_first_prompt_the_loop_sends(mode):
    seen = []

    class FirstCall:
        name = "first-call"

        async def generate(self, messages, tools, *, deadline):
            seen.append((list(messages), list(tools)))  # the loop extends its own list
            return Completion(text="done")

    task = make_task("games/treasure-v1", seed=1, split="train", difficulty=1)
    options = episode_options(time=mode, speed="smollm2-cpu")
    async with Runtime() as runtime:
        tools = await runtime.tools("constant:0.5")
        await run_episode(
            FirstCall(), task, tools, VirtualClock(), Budget(seconds=40), options=options
        )
        messages, schemas = await opening(task, options, 40, tools)
    assert (messages, schemas) == seen[0]
    assert any(s["function"]["name"] == "get_duration" for s in schemas) == (mode == "pull")
