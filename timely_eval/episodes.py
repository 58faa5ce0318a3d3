"""Playing planned episodes: the pieces shared by the local runner and the Ray workers.

:class:`SuiteRuntime` turns an :class:`~timely_eval.plan.EpisodeItem` into an
:class:`~timely.rollout.EpisodeSpec` and plays it on the suite's :class:`~timely.rollout.Runtime`
(policies built once per spec and options, one tool backend per latency, a fresh clock per
episode), which hands it to :func:`timely.loop.run_episode`, the one agent loop. The tool-server
session is the episode key, so concurrent episodes of the same task at different latencies
never share state or latency streams. The runner records what they return through
:mod:`timely.runrecord`.
"""

from __future__ import annotations

import asyncio

from timely.budget import Budget
from timely.policies.base import Policy
from timely.rollout import EpisodeSpec, Runtime, time_awareness
from timely.task import make_task
from timely.types import Trajectory
from timely_eval.plan import EpisodeItem, fingerprint
from timely_eval.suite import Suite, family_of


class SuiteRuntime:
    """A suite's view of the rollout :class:`~timely.rollout.Runtime`; use as an async context
    manager.

    Args:
        suite: the suite the items come from.
    """

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.fingerprint = fingerprint(suite)
        self.runtime = Runtime(clock=suite.clock, seed=suite.seed, concurrency=suite.concurrency)

    async def __aenter__(self) -> SuiteRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.aclose()

    async def policy(self, label: str) -> Policy:
        """The policy of a suite label; entries with the same spec and options share one."""
        entry = self.suite.policy(label)
        return await self.runtime.policy(entry.spec, entry.options)

    def budget(self, item: EpisodeItem) -> Budget:
        grid = self.suite.budgets
        return Budget(
            seconds=item.budget_s,
            overrun="hard" if item.phase == "calibration" else grid.overrun,
            on_time_slack=item.slack,
            late_limit_factor=grid.late_limit_factor,
        )

    def spec(self, item: EpisodeItem) -> EpisodeSpec:
        """The episode of an item: the suite's settings, the policy's speed and time awareness
        (the calibration phase shows time as ``calibration.time`` says)."""
        entry = self.suite.policy(item.policy)
        task_entry = self.suite.tasks[item.task_index]
        base = self.suite.episode
        if item.phase == "calibration":
            time = self.suite.calibration.time
        else:
            time = entry.time or base.time
        return EpisodeSpec(
            task_id=task_entry.id,
            seed=item.seed,
            split=self.suite.split,
            difficulty=task_entry.difficulty,
            task_options=task_entry.options,
            policy=entry.spec,
            latency=item.latency,
            budget=self.budget(item),
            time=time_awareness(time),
            speed=entry.speed_profile(base.speed),
            sample=item.sample,
            key=item.key,
        )

    async def play(self, item: EpisodeItem) -> Trajectory:
        """Play one item through the runtime and label its trajectory.

        Raises:
            Exception: when the episode could not be played at all (the task cannot be built,
                the policy cannot be loaded, the loop refused a misconfigured task); a failure
                *inside* the episode is recorded in the trajectory instead.
        """
        spec = self.spec(item)
        task = await asyncio.to_thread(
            make_task,
            spec.task_id,
            seed=spec.seed,
            split=spec.split,
            difficulty=spec.difficulty,
            **spec.task_options,
        )
        policy = await self.policy(item.policy)
        base = self.suite.episode
        traj = await self.runtime.play(
            spec,
            policy,
            task=task,
            reward=base.reward,
            max_turns=base.max_turns,
            config_hash=self.fingerprint,
        )
        traj.metadata.update(
            key=item.key,
            phase=item.phase,
            label=item.policy,
            policy_spec=spec.policy,
            speed=spec.speed.name if self.suite.clock == "virtual" else "measured",
            family=family_of(item.task_id),
            difficulty=task.spec.difficulty,
            budget_label=item.budget,
            suite=self.suite.name,
        )
        if "reference_steps" in task.spec.metadata:
            traj.metadata["reference_steps"] = task.spec.metadata["reference_steps"]
        if self.suite.tool_server:
            traj.metadata["tool_server"] = self.suite.tool_server
        return traj
