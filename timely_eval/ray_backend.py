"""``--backend ray``: distribute a run's episodes over a pool of Ray actors.

For users who outgrow one machine. The driver keeps everything that makes a run resumable (the
plan, the keys, the JSONL it appends to); workers only play. Policies and tool servers are not
picklable, so each :class:`EpisodeWorker` actor receives the suite (as JSON), builds one
:class:`~timely_eval.episodes.SuiteRuntime` (over a :class:`~timely.rollout.Runtime`) from it
and keeps it for the whole run, both phases: a local model loads once per actor, not once per
chunk. An actor plays a chunk of episode items
through the same :class:`~timely_eval.runner.LocalExecutor` and loop as the local backend and
returns trajectories as JSON lines; the driver hands the next chunk to whichever actor is idle
and appends each chunk's trajectories as soon as it returns, so a killed run loses at most the
chunks in flight.

A worker that dies (its process killed, its node lost) loses no episode: its chunk goes back to
the queue for another actor, the slot gets a fresh actor (``ray.max_restarts``), and the driver
delivers each episode key once, whatever comes back twice. A chunk whose worker died
``ray.max_retries + 1`` times lands in ``errors.jsonl``, like any episode that could not be
played, and is retried on the next start. Locally it starts a private Ray instance
(``ray.num_cpus``); ``ray.address`` joins a cluster instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from timely.types import Trajectory
from timely_eval.plan import EpisodeItem
from timely_eval.suite import Suite

MAX_CHUNK = 64
CHUNKS_PER_WORKER = 4  # several chunks per worker keep workers busy when chunks differ in cost
CLOSE_TIMEOUT_S = 30.0  # how long a run's end waits for workers to close their runtimes

ChunkResult = list[tuple[str, str | None, str | None]]  # (key, trajectory JSON, error)
OnResult = Callable[[EpisodeItem, Trajectory | None, str | None], None]


def chunk_size(n_items: int, workers: int, requested: int = 0) -> int:
    """Episodes per chunk: ``requested`` if set, else about four chunks per worker.

    Args:
        n_items: episodes to play.
        workers: worker actors.
        requested: ``ray.chunk_size`` from the suite (0 = automatic).
    """
    if requested > 0:
        return requested
    return max(1, min(MAX_CHUNK, math.ceil(n_items / max(1, workers * CHUNKS_PER_WORKER))))


def make_chunks(items: Sequence[EpisodeItem], size: int) -> list[list[EpisodeItem]]:
    """Split items into consecutive chunks of ``size`` (the plan is ordered by policy, so a chunk
    tends to need one policy)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class Chunk:
    """Items handed to one worker at a time, and how often a worker died playing them."""

    items: list[EpisodeItem]
    deaths: int = 0


class WorkQueue:
    """The driver's bookkeeping: chunks waiting for a worker, and the keys already delivered.

    Kept free of Ray so that the exactly-once rules can be tested on their own: a key is
    delivered once (a result for a key already delivered is dropped: a chunk may come back after
    it was given up for lost), a chunk whose worker died is queued again with only its
    undelivered items, and gives up after ``max_retries`` retries.

    Args:
        chunks: the items, already chunked.
        max_retries: times a chunk is retried after its worker died.
    """

    def __init__(self, chunks: Sequence[list[EpisodeItem]], max_retries: int) -> None:
        self.pending: deque[Chunk] = deque(Chunk(list(c)) for c in chunks if c)
        self.max_retries = max_retries
        self.delivered: set[str] = set()

    def take(self) -> Chunk | None:
        """The next chunk to play, or None when nothing waits."""
        return self.pending.popleft() if self.pending else None

    def finished(self, results: ChunkResult) -> ChunkResult:
        """A worker returned ``results``: those whose key was not delivered yet."""
        fresh = []
        for key, traj_json, error in results:
            if key not in self.delivered:
                self.delivered.add(key)
                fresh.append((key, traj_json, error))
        return fresh

    def failed(self, chunk: Chunk, error: str) -> list[tuple[EpisodeItem, str]]:
        """The call failed without a death (a bug, not a lost worker): every undelivered item
        fails now with ``error``, since playing it again would fail the same way."""
        return self._give_up(chunk, error)

    def lost(self, chunk: Chunk, reason: str) -> list[tuple[EpisodeItem, str]]:
        """The worker playing ``chunk`` died: queue its undelivered items again (first, so a
        retry is not starved behind the rest of the run) or, after ``max_retries`` retries,
        give them up; returns the items given up, with their error."""
        chunk.deaths += 1
        left = [it for it in chunk.items if it.key not in self.delivered]
        if not left:
            return []
        if chunk.deaths <= self.max_retries:
            self.pending.appendleft(Chunk(left, chunk.deaths))
            return []
        times = "once" if chunk.deaths == 1 else f"{chunk.deaths} times"
        return self._give_up(
            Chunk(left, chunk.deaths),
            f"the Ray worker playing this episode died {times} (ray.max_retries="
            f"{self.max_retries}); last: {reason}. It is retried on the next start; raise "
            "ray.max_retries or look for what kills the workers (memory, a crashing policy).",
        )

    def abandon(self, error: str) -> list[tuple[EpisodeItem, str]]:
        """No worker is left: every item still waiting fails with ``error``."""
        out: list[tuple[EpisodeItem, str]] = []
        while self.pending:
            out += self._give_up(self.pending.popleft(), error)
        return out

    def _give_up(self, chunk: Chunk, error: str) -> list[tuple[EpisodeItem, str]]:
        out = []
        for item in chunk.items:
            if item.key not in self.delivered:
                self.delivered.add(item.key)
                out.append((item, error))
        return out


class EpisodeWorker:
    """The body of one Ray actor: a :class:`~timely_eval.episodes.SuiteRuntime` of the suite,
    kept across chunks.

    All methods are coroutines, so Ray runs the actor as an async actor: one event loop in the
    actor's process, alive between calls, which the runtime's policies, locks and in-process
    tool servers are bound to.

    Args:
        suite_json: the suite as JSON.
    """

    def __init__(self, suite_json: str) -> None:
        import timely_eval.tasks  # noqa: F401 - registers the built-in families in this worker

        self.suite = Suite.model_validate_json(suite_json)
        self._stack = contextlib.AsyncExitStack()
        self._runtime: Any = None

    async def ready(self) -> int:
        """Answers once the actor is up; its process id."""
        return os.getpid()

    async def play(self, items_json: list[str]) -> ChunkResult:
        """Play a chunk of episode items; ``(key, trajectory JSON or None, error or None)`` each.

        An episode that cannot be played is an error of that episode (as in the local
        backend); only the death of this process fails the call.
        """
        from timely_eval.episodes import SuiteRuntime
        from timely_eval.runner import LocalExecutor

        if self._runtime is None:  # built on first use, inside the actor's event loop
            self._runtime = await self._stack.enter_async_context(SuiteRuntime(self.suite))
        items = [EpisodeItem.model_validate_json(s) for s in items_json]
        results: ChunkResult = []
        await LocalExecutor(self._runtime).execute(
            items,
            lambda item, traj, error: results.append(
                (item.key, traj.model_dump_json() if traj is not None else None, error)
            ),
        )
        return results

    async def close(self) -> None:
        """Close the runtime (policies, tool servers); the actor can be killed afterwards."""
        await self._stack.aclose()
        self._runtime = None


@dataclass
class _Slot:
    """One place in the pool: its current actor and how many replaced a dead one."""

    actor: Any = None  # None: dead, no restarts left
    restarts: int = 0


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Ray's exceptions that mean the worker (or its node) is gone, not that a call failed."""
    import ray.exceptions as rex

    names = (
        "RayActorError",  # ActorDiedError, ActorUnavailableError
        "WorkerCrashedError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "OutOfMemoryError",
        "ObjectLostError",
        "OwnerDiedError",
    )
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def _describe(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0].rstrip('.') if lines else 'no message'}"


class RayExecutor:
    """Plays items on a pool of :class:`EpisodeWorker` actors; a context manager that starts
    (and stops) local Ray if needed and the actors, which live for both phases of a run.

    Args:
        suite: the suite (``suite.ray`` holds the address, pool size, chunking and retries).
    """

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self._started = False
        self._actor_class: Any = None
        self._suite_ref: Any = None
        self._slots: list[_Slot] = []

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is in the dev extra
            from timely.errors import ConfigError

            raise ConfigError(
                "the Ray backend needs ray: pip install 'timely-machine[ray]'"
            ) from None
        if not ray.is_initialized():
            opts = self.suite.ray
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if opts.address:
                ray.init(address=opts.address, **kwargs)
            else:  # "local": a private instance, even where `ray start` left a cluster behind
                ray.init(address="local", num_cpus=opts.num_cpus, **kwargs)
            self._started = True
        opts = self.suite.ray
        # Restarts and retries are the driver's (below): Ray's own would replay a chunk on the
        # same slot without the driver knowing, and could not give a chunk up after N deaths.
        self._actor_class = ray.remote(
            num_cpus=opts.num_cpus_per_worker,
            num_gpus=opts.num_gpus_per_worker,
            max_restarts=0,
            max_task_retries=0,
        )(EpisodeWorker)
        self._suite_ref = ray.put(self.suite.model_dump_json())
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        actors = [s.actor for s in self._slots if s.actor is not None]
        with contextlib.suppress(Exception):  # a worker that cannot close is killed anyway
            ray.get([a.close.remote() for a in actors], timeout=CLOSE_TIMEOUT_S)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._slots = []
        if self._started:
            ray.shutdown()

    def workers(self) -> int:
        """The pool size: ``ray.workers``, else the free CPUs / ``ray.num_cpus_per_worker``."""
        import ray

        opts = self.suite.ray
        if opts.workers:
            return opts.workers
        cpus = ray.available_resources().get("CPU", opts.num_cpus)
        return max(1, int(cpus // opts.num_cpus_per_worker))

    def _grow(self, n: int) -> None:
        """Start actors until the pool has ``n`` slots (each loads its policies on first use)."""
        while len(self._slots) < n:
            slot = _Slot()
            slot.actor = self._actor_class.remote(self._suite_ref)
            self._slots.append(slot)

    def _replace(self, slot: _Slot) -> bool:
        """Give ``slot`` a fresh actor after its actor died; False when its restarts are used."""
        import ray

        with contextlib.suppress(Exception):
            ray.kill(slot.actor)
        limit = self.suite.ray.max_restarts
        if limit != -1 and slot.restarts >= limit:
            slot.actor = None
            return False
        slot.restarts += 1
        slot.actor = self._actor_class.remote(self._suite_ref)
        return True

    async def execute(self, items: list[EpisodeItem], on_result: OnResult) -> None:
        """Play ``items`` on the pool; ``on_result(item, trajectory or None, error or None)`` is
        called once per item, on the driver, as chunks return."""
        if not items:
            return
        opts = self.suite.ray
        target = self.workers()
        chunks = make_chunks(items, chunk_size(len(items), target, opts.chunk_size))
        self._grow(min(target, len(chunks)))  # never more model copies than chunks to play
        queue = WorkQueue(chunks, opts.max_retries)
        by_key = {item.key: item for item in items}
        lost = _lost_worker_errors()
        # A future is either a slot's "ready" probe (an actor that answers joins the idle
        # workers, so a replacement still waiting for resources never holds a chunk) or a chunk
        # being played on that slot.
        running: dict[asyncio.Future[Any], tuple[_Slot, Chunk | None]] = {}
        idle: deque[_Slot] = deque()
        last_death = ""

        def probe(slot: _Slot) -> None:
            running[asyncio.wrap_future(slot.actor.ready.remote().future())] = (slot, None)

        def report(failures: list[tuple[EpisodeItem, str]]) -> None:
            for item, error in failures:
                on_result(item, None, error)

        for slot in self._slots:
            if slot.actor is not None:
                probe(slot)
        while True:
            while idle and queue.pending:
                slot, chunk = idle.popleft(), queue.take()
                assert chunk is not None
                ref = slot.actor.play.remote([it.model_dump_json() for it in chunk.items])
                running[asyncio.wrap_future(ref.future())] = (slot, chunk)
            if not queue.pending and not any(c is not None for _, c in running.values()):
                break  # everything delivered; probes still waiting are not needed now
            if not running:
                break  # work left but no worker: given up below
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                slot, chunk = running.pop(fut)
                try:
                    value = fut.result()
                except lost as exc:
                    last_death = _describe(exc)
                    if chunk is not None:
                        report(queue.lost(chunk, last_death))
                    if self._replace(slot):
                        probe(slot)
                    continue
                except Exception as exc:  # the worker lives, the call failed: no retry
                    if chunk is not None:
                        report(queue.failed(chunk, f"Ray worker call failed: {_describe(exc)}"))
                    idle.append(slot)
                    continue
                if chunk is not None:
                    for key, traj_json, error in queue.finished(value):
                        traj = Trajectory.model_validate_json(traj_json) if traj_json else None
                        on_result(by_key[key], traj, error)
                idle.append(slot)
        for fut in running:  # probes of actors nobody waits for now (the next phase asks again)
            fut.cancel()
        report(
            queue.abandon(
                f"no Ray worker left: every worker slot died and used its ray.max_restarts="
                f"{opts.max_restarts} replacements; last: {last_death or 'unknown'}. "
                "Retried on the next start."
            )
        )
