"""Runs in flight: each request's episode, its step events, its cancellation and its record.

A :class:`Run` is one request's episode of the one agent loop, played by :class:`RunManager` as
an asyncio task on a wall clock. Its step events (:mod:`timely.events`) are kept and fanned out
to whoever streams them; its end is an :class:`asyncio.Event`, so waiters never await the task
itself (a cancelled task would raise into them). The manager enforces the concurrency limit,
keeps the last ``keep_runs`` finished runs for ``GET /v1/runs/{id}``, appends every finished
trajectory to the run record in ``OUT`` (:class:`~timely.runrecord.EpisodeLog`, keyed by the
run id) and feeds the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from timely.budget import Budget
from timely.clock import WallClock, wall_seconds
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import Policy
from timely.rollout import episode_options
from timely.runrecord import TRAJECTORIES, EpisodeLog
from timely.serve.config import ServeConfig
from timely.serve.errors import ServeError
from timely.serve.metrics import ServeMetrics
from timely.serve.schemas import RunStatus, RunSummary
from timely.task import Task
from timely.toolclient import ToolBackend
from timely.types import Trajectory

log = logging.getLogger("timely.serve")

Api = Literal["runs", "chat"]

# The loop stops every call at the budget itself (model calls within a decode step, tool calls
# at the tool client's deadline, backstops 0.1-0.5 s later). This is the last resort for a
# backend that ignores deadlines: a run still going this long past its budget is cancelled.
BACKSTOP_S = 2.0
# The speed profile a virtual clock would charge generation with: the loop's default, named
# because runs here are played on the wall clock, where generation is measured instead.
SERVE_SPEED = "small-fast"


@dataclass
class Run:
    """One request's episode."""

    id: str
    api: Api
    task: Task
    budget: Budget
    policy: str
    created_at: str  # UTC ISO time the request arrived
    created_unix: int
    started: float  # wall_seconds() when the request arrived
    status: RunStatus = "running"
    trajectory: Trajectory | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    job: asyncio.Task[None] | None = None
    _listeners: list[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=list)

    def summary(self) -> RunSummary:
        base = {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "task_id": self.task.id,
            "policy": self.policy,
            "budget_s": self.budget.seconds,
            "error": self.error,
        }
        if self.trajectory is not None:
            base.pop("error")
        return RunSummary.of(base, self.trajectory)

    async def publish(self, event: Any) -> None:
        """The loop's observer: keep the event and hand it to every listener."""
        data = {"run_id": self.id, **event.model_dump(mode="json")}
        self.events.append(data)
        for queue in self._listeners:
            queue.put_nowait(data)

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of the run, past ones first, until the run is over."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        past = list(self.events)
        self._listeners.append(queue)
        try:
            for event in past:
                yield event
            while not (self.done.is_set() and queue.empty()):
                event = await queue.get()
                if event is None:
                    break
                yield event
        finally:
            self._listeners.remove(queue)

    def _close_streams(self) -> None:
        for queue in self._listeners:
            queue.put_nowait(None)


class RunManager:
    """Starts, tracks, cancels and records runs.

    Args:
        policy: the policy every run uses (concurrent runs share it; batching backends batch).
        tools: the tool backend (a client of the tool server), or None if nothing needs tools.
        config: the server settings.
        metrics: where finished runs are counted.
    """

    def __init__(
        self,
        policy: Policy,
        tools: ToolBackend | None,
        config: ServeConfig,
        metrics: ServeMetrics,
    ) -> None:
        self.policy, self.tools, self.config, self.metrics = policy, tools, config, metrics
        self.runs: OrderedDict[str, Run] = OrderedDict()
        self.in_flight = 0
        # Run ids are unique: nothing to resume or deduplicate, so the old records are not read.
        self.record = (
            EpisodeLog(Path(config.out) / TRAJECTORIES, load=False) if config.out else None
        )

    def start(self, api: Api, task: Task, budget: Budget, *, max_turns: int | None) -> Run:
        """Start a run now, or refuse with 429 when ``max_concurrent_runs`` are in flight."""
        if self.in_flight >= self.config.max_concurrent_runs:
            self.metrics.rejected.labels("concurrency").inc()
            raise ServeError(
                429,
                "too_many_runs",
                f"{self.in_flight} runs are in flight, the most this server takes "
                f"(max_concurrent_runs={self.config.max_concurrent_runs}); retry after "
                f"{self.config.retry_after_s} s",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        now = datetime.now(UTC)
        run = Run(
            id=f"run_{secrets.token_hex(8)}",
            api=api,
            task=task,
            budget=budget,
            policy=self.policy.name,
            created_at=now.isoformat(timespec="milliseconds"),
            created_unix=int(now.timestamp()),
            started=wall_seconds(),
        )
        self.runs[run.id] = run
        self.in_flight += 1
        self.metrics.in_flight.inc()
        run.job = asyncio.create_task(self._play(run, max_turns), name=run.id)
        return run

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise ServeError(
                404,
                "not_found",
                f"no run {run_id!r}: it never existed or is older than the last "
                f"{self.config.keep_runs} runs this server keeps",
            )
        return run

    def cancel(self, run: Run) -> None:
        """Stop a running run; its tool session is ended by the task's teardown."""
        if run.job is not None and not run.job.done():
            run.job.cancel()

    async def close(self) -> None:
        """Cancel every run still going (server shutdown) and wait for them to wind down."""
        jobs = [r.job for r in self.runs.values() if r.job is not None and not r.job.done()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self.record is not None:
            self.record.close()

    def _options(self, max_turns: int | None) -> EpisodeOptions:
        turns = min(max_turns or self.config.max_turns, self.config.max_turns)
        return episode_options(time=self.config.time_status, speed=SERVE_SPEED, max_turns=turns)

    async def _play(self, run: Run, max_turns: int | None) -> None:
        wrap_up = self.config.wrap_up_fraction * run.budget.seconds or None
        try:
            async with asyncio.timeout(run.budget.stop_at + BACKSTOP_S):
                traj = await run_episode(
                    self.policy,
                    run.task,
                    self.tools,
                    WallClock(),
                    run.budget,
                    options=self._options(max_turns),
                    observer=run.publish,
                    wrap_up_s=wrap_up,
                )
            traj.metadata["run_id"] = run.id
            run.trajectory, run.status = traj, "done"
            self.metrics.finished(run.api, traj, wall_seconds() - run.started)
            if self.record is not None:
                await asyncio.to_thread(self.record.append, traj)
        except asyncio.CancelledError:
            run.status, run.error = "cancelled", "cancelled by the client"
            self.metrics.runs.labels(run.api, "cancelled").inc()
            raise
        except TimeoutError:
            run.status = "failed"
            run.error = f"the run overran its budget by more than {BACKSTOP_S} s and was stopped"
            self.metrics.runs.labels(run.api, "failed").inc()
        except Exception as exc:  # a failed run is reported, the server goes on
            log.exception("run %s failed", run.id)
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
            self.metrics.runs.labels(run.api, "failed").inc()
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            run.done.set()
            run._close_streams()
            self._forget_old()

    def _forget_old(self) -> None:
        finished = [rid for rid, r in self.runs.items() if r.done.is_set()]
        for rid in finished[: max(0, len(finished) - self.config.keep_runs)]:
            del self.runs[rid]


async def wait_for_run(run: Run, receive: Any | None) -> bool:
    """Wait until ``run`` ends; True if the client disconnected first.

    Args:
        run: the run.
        receive: the request's ASGI ``receive`` (its body already read), whose next message is
            ``http.disconnect`` when the client goes away; None: do not watch the client.
    """
    ended = asyncio.create_task(run.done.wait())
    watchers = {ended}
    gone: asyncio.Task[None] | None = None
    if receive is not None:
        gone = asyncio.create_task(_client_gone(receive))
        watchers.add(gone)
    try:
        await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return gone is not None and gone.done() and not gone.cancelled() and not run.done.is_set()


async def _client_gone(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
