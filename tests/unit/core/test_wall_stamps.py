"""Trajectories carry UTC wall stamps beside their clock times; old records still load."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.helpers.env import in_process_tools
from tests.helpers.policies import CrashingPolicy
from timely.budget import Budget
from timely.clock import VirtualClock, utc_now
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.types import SCHEMA_VERSION, WALL_STAMPS, EndReason, Trajectory


async def _play(policy, seed: int = 0) -> Trajectory:
    async with in_process_tools("constant:1.0") as tools:
        return await run_episode(
            policy,
            make_task("math/arithmetic-v1", seed=seed),
            tools,
            VirtualClock(),
            Budget(seconds=60),
        )


async def test_an_episode_is_stamped_in_utc_between_before_and_after():
    before = utc_now()
    traj = await _play(make_policy("scripted:oracle"))
    after = utc_now()
    assert traj.started_at_utc is not None and traj.ended_at_utc is not None
    assert before <= traj.started_at_utc <= traj.ended_at_utc <= after
    assert traj.started_at_utc.utcoffset().total_seconds() == 0
    # JSON holds ISO 8601 in UTC, which pandas and log tools parse as they are.
    raw = json.loads(traj.model_dump_json())
    assert raw["started_at_utc"].endswith("Z") and "T" in raw["started_at_utc"]
    assert datetime.fromisoformat(raw["ended_at_utc"]).tzinfo is not None
    back = Trajectory.model_validate_json(traj.model_dump_json())
    assert back.started_at_utc == traj.started_at_utc and back.schema_version == SCHEMA_VERSION


async def test_a_failed_episode_is_stamped_too():
    traj = await _play(CrashingPolicy())
    assert traj.end_reason == EndReason.POLICY_ERROR
    assert traj.started_at_utc <= traj.ended_at_utc


async def test_replays_differ_only_in_their_stamps():
    a, b = await _play(make_policy("scripted:oracle")), await _play(make_policy("scripted:oracle"))
    assert a.replay_json() == b.replay_json()
    assert not WALL_STAMPS & json.loads(a.replay_json()).keys()


def test_a_record_older_than_the_stamps_still_loads():
    old = {
        "schema_version": 2,
        "task_id": "math/arithmetic-v1",
        "seed": 3,
        "clock": "virtual",
        "budget_s": 30.0,
        "messages": [{"role": "user", "content": "2+2?"}],
        "end_reason": "answered",
    }
    traj = Trajectory.model_validate_json(json.dumps(old))
    assert traj.started_at_utc is None and traj.ended_at_utc is None
    assert traj.schema_version == 2


def test_a_stamp_without_a_timezone_is_refused():
    import pydantic
    import pytest

    naive = {
        "task_id": "math/arithmetic-v1",
        "seed": 0,
        "clock": "wall",
        "budget_s": 1.0,
        "messages": [],
        "end_reason": "answered",
        "started_at_utc": datetime(2026, 1, 1).isoformat(),  # ambiguous: whose local time?
    }
    with pytest.raises(pydantic.ValidationError, match="timezone"):
        Trajectory.model_validate(naive)
    aware = {**naive, "started_at_utc": datetime(2026, 1, 1, tzinfo=UTC).isoformat()}
    assert Trajectory.model_validate(aware).started_at_utc.year == 2026
