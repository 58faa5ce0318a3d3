"""Playing planned episodes: the pieces shared by the local runner and the Ray workers.

:class:`SuiteRuntime` turns an :class:`~timely_eval.plan.EpisodeItem` into an
:class:`~timely.rollout.EpisodeSpec` and plays it on the suite's :class:`~timely.rollout.Runtime`
(policies built once per spec and options, one tool backend per latency, a fresh clock per
episode), which hands it to :func:`timely.loop.run_episode`, the one agent loop. The tool-server
session is the episode key, so concurrent episodes of the same task at different latencies
never share state or latency streams. :class:`EpisodeLog` is the append-only, resume-safe JSONL
a run directory keeps.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from timely.budget import Budget
from timely.errors import ConfigError
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


class EpisodeLog:
    """An append-only JSONL of trajectories, keyed by ``metadata['key']``.

    Opening it reads what is there: a torn last line (a writer killed mid-line) is cut off, since
    it holds no complete record, and a repeated key keeps its first record. Every append is one
    line, flushed at once, so a killed run loses at most the episodes in flight.

    Args:
        path: the JSONL file (created on first append).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, Trajectory] = {}
        self.duplicates = 0
        self._fh: Any = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        repair_tail(self.path)
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    traj = Trajectory.model_validate_json(line)
                except ValueError as exc:
                    first = str(exc).splitlines()[0]
                    raise ConfigError(
                        f"{self.path}:{lineno} is not a trajectory ({first}); move the file "
                        "aside or delete that line, then resume"
                    ) from None
                key = traj.metadata.get("key")
                if not isinstance(key, str) or key in self.records:
                    self.duplicates += 1
                    continue
                self.records[key] = traj

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, traj: Trajectory) -> None:
        """Write one trajectory (it must carry ``metadata['key']``) and flush."""
        key = traj.metadata.get("key")
        if not isinstance(key, str):
            raise ValueError("a logged trajectory needs metadata['key']")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(traj.model_dump_json() + "\n")
        self._fh.flush()
        self.records[key] = traj

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def repair_tail(path: Path, block: int = 1 << 16) -> int:
    """Cut a torn last line (no trailing newline) off a JSONL file; returns bytes removed."""
    with path.open("rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:  # scan back block by block for the last complete line
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record (errors.jsonl)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
