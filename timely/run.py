"""``timely run``: play a few episodes of one task with one policy and record them.

This module wires config to components (policy, tool backend, clocks) and hands each episode to
:func:`timely.loop.run_episode`; it does no episode logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from timely.clock import make_clock
from timely.config import RunConfig, config_hash
from timely.events import Observer
from timely.loop import run_episode
from timely.policies.base import Policy, make_policy
from timely.runrecord import write_run_record
from timely.task import make_task
from timely.tool_servers import in_process_app
from timely.toolclient import ToolBackend, ToolClient
from timely.types import Trajectory, write_jsonl


@dataclass
class RunResult:
    run_dir: Path
    trajectories: list[Trajectory]


@contextlib.asynccontextmanager
async def open_tools(
    url: str | None = None,
    *,
    latency: str = "constant:0",
    tool_latency: dict[str, str] | None = None,
    seed: int = 0,
) -> AsyncIterator[ToolBackend]:
    """A tool backend: a client for a running server at ``url``, else an in-process server.

    Args:
        url: a running tool server (``timely tool-server``); None: serve the built-in tools
            in-process (the ``default`` entry of :mod:`timely.tool_servers`), without sockets.
        latency: in-process only: the latency spec of every tool, e.g. ``constant:1.0``.
        tool_latency: in-process only: latency overrides by tool name.
        seed: in-process only: seed of the server's latency and fault streams.
    """
    if url:
        client = ToolClient(url)
    else:
        app = in_process_app(latency=latency, per_tool_latency=tool_latency, seed=seed)
        client = ToolClient.in_process(app)
    async with client:
        yield client


async def run(
    config: RunConfig,
    *,
    policy: Policy | None = None,
    on_episode: Callable[[Trajectory], None] | None = None,
    observer: Callable[[int], Observer] | None = None,
) -> RunResult:
    """Run ``config.episodes`` episodes and write the run directory.

    Args:
        config: the resolved run config.
        policy: an already built policy (otherwise built from ``config.policy``).
        on_episode: called with each trajectory as it finishes (progress, traces).
        observer: ``seed -> observer`` for each episode's step events (live traces).
    """
    seeds = [config.seed + i for i in range(config.episodes)]
    run_dir = write_run_record(config.out, config, seeds=seeds)
    out_file = run_dir / "trajectories.jsonl"
    out_file.unlink(missing_ok=True)  # `timely run` records one fresh set of episodes
    policy = policy or make_policy(config.policy, **config.policy_options)
    chash = config_hash(config, exclude={"out", "seed", "episodes", "concurrency"})
    limiter = asyncio.Semaphore(config.concurrency)
    done: list[Trajectory] = []

    async with open_tools(
        config.tool_server,
        latency=config.latency,
        tool_latency=config.tool_latency,
        seed=config.seed,
    ) as tools:

        async def one(seed: int) -> None:
            async with limiter:
                task = make_task(
                    config.task,
                    seed=seed,
                    split=config.split,
                    difficulty=config.difficulty,
                    **config.task_options,
                )
                traj = await run_episode(
                    policy,
                    task,
                    tools,
                    make_clock(config.clock),
                    config.budget.for_task(task.spec.default_budget_s),
                    options=config.episode,
                    observer=observer(seed) if observer else None,
                    config_hash=chash,
                    latency=config.latency,
                )
            write_jsonl(out_file, [traj])
            done.append(traj)
            if on_episode:
                on_episode(traj)

        try:
            await asyncio.gather(*(one(s) for s in seeds))
        finally:
            aclose = getattr(policy, "aclose", None)
            if aclose is not None:
                await aclose()
    done.sort(key=lambda t: t.seed)
    return RunResult(run_dir=run_dir, trajectories=done)
