"""Unique sessions per rollout: identical concurrent episodes (a GRPO group) never share one."""

from __future__ import annotations

import asyncio

from tests.helpers.env import in_process_tools
from timely.budget import Budget
from timely.clock import VirtualClock
from timely.loop import episode_session_id, run_episode
from timely.policies.base import make_policy
from timely.task import make_task
from timely.types import EndReason

GAME = "games/treasure-v1"


class _Recording:
    """A tool backend that remembers the sessions it was asked to create and call into."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.created: list[str] = []
        self.called: set[str] = set()

    async def list_tools(self):
        return await self.inner.list_tools()

    async def create_session(self, session_id=None, **kw):
        self.created.append(session_id)
        return await self.inner.create_session(session_id, **kw)

    async def end_session(self, session_id):
        return await self.inner.end_session(session_id)

    async def call(self, name, arguments, *, call_id, session_id, deadline):
        self.called.add(session_id)
        return await self.inner.call(
            name, arguments, call_id=call_id, session_id=session_id, deadline=deadline
        )


async def test_eight_identical_concurrent_game_episodes_get_eight_sessions():
    async with in_process_tools("constant:0.5") as client:
        tools = _Recording(client)
        policy = make_policy("scripted:oracle")

        async def one():
            return await run_episode(
                policy,
                make_task(GAME, seed=0, difficulty=2),
                tools,
                VirtualClock(),
                Budget(seconds=600),
            )

        trajectories = await asyncio.gather(*(one() for _ in range(8)))
    assert len(set(tools.created)) == 8 and tools.called == set(tools.created)
    for traj in trajectories:  # eight independent games, none killed by a sibling
        assert traj.end_reason == EndReason.ANSWERED, traj.error
        assert traj.score == 1.0
        assert not any(r.error for s in traj.steps for r in s.tool_results)
    # ... and the same latency stream for each, so a group is a controlled comparison.
    assert len({t.replay_json() for t in trajectories}) == 1  # identical but when they ran


async def test_session_ids_are_unique_but_keep_a_deterministic_stream_key():
    task = make_task(GAME, seed=0)
    a, b = episode_session_id(task, "p"), episode_session_id(task, "p")
    assert a != b and a.partition("#")[0] == b.partition("#")[0]
    other = episode_session_id(task, "p", sample=1)
    assert other.partition("#")[0] != a.partition("#")[0]


async def test_samples_draw_their_own_latencies():
    async with in_process_tools("lognormal:1.0,0.6") as tools:
        policy = make_policy("scripted:oracle")
        runs = [
            await run_episode(
                policy,
                make_task("math/arithmetic-v1", seed=0),
                tools,
                VirtualClock(),
                Budget(seconds=600),
                sample=s,
            )
            for s in (0, 0, 1)
        ]
    assert runs[0].tool_s == runs[1].tool_s != runs[2].tool_s
    assert [r.sample for r in runs] == [0, 0, 1]


async def test_a_live_session_id_is_never_taken_over():
    async with in_process_tools("constant:0.5") as tools:
        policy = make_policy("scripted:oracle")
        task = make_task(GAME, seed=0)
        await tools.create_session("mine")
        traj = await run_episode(
            policy, task, tools, VirtualClock(), Budget(seconds=600), session_id="mine"
        )
        assert traj.end_reason == EndReason.POLICY_ERROR
        assert "already live" in (traj.error or "")
        assert await tools.end_session("mine")  # still live: nobody ended it
