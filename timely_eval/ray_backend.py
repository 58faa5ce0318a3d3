"""``--backend ray``: distribute a run's episodes over Ray workers.

For users who outgrow one machine. The driver keeps everything that makes a run resumable (the
plan, the keys, the JSONL it appends to); workers only play. Policies and tool servers are not
picklable, so a Ray task receives the suite (as JSON) and a chunk of episode items, rebuilds the
policy and an in-process tool server from the suite, plays the chunk through the same
:class:`~timely_eval.episodes.Runtime` and loop as the local backend, and returns trajectories as
JSON lines. Chunks amortise that rebuild (a local model loads once per chunk); the driver
appends each chunk's trajectories as soon as it returns, so a killed run loses at most the chunks
in flight. Locally it starts a private Ray instance (``ray.num_cpus``); ``ray.address`` joins a
cluster instead.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from timely.types import Trajectory
from timely_eval.plan import EpisodeItem
from timely_eval.suite import Suite

MAX_CHUNK = 64
CHUNKS_PER_WORKER = 4  # several chunks per worker keep workers busy when chunks differ in cost

ChunkResult = list[tuple[str, str | None, str | None]]  # (key, trajectory JSON, error)


def chunk_size(n_items: int, workers: int, requested: int = 0) -> int:
    """Episodes per Ray task: ``requested`` if set, else about four chunks per worker.

    Args:
        n_items: episodes to play.
        workers: parallel Ray workers (CPUs).
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


def play_chunk(suite_json: str, items_json: list[str]) -> ChunkResult:
    """Play a chunk of episodes in this process (the body of a Ray task).

    Args:
        suite_json: the suite as JSON.
        items_json: the episode items as JSON.

    Returns:
        ``(key, trajectory JSON or None, error or None)`` for every item.
    """
    import timely_eval.tasks  # noqa: F401 - registers the built-in families in this worker
    from timely_eval.episodes import Runtime
    from timely_eval.runner import LocalExecutor

    suite = Suite.model_validate_json(suite_json)
    items = [EpisodeItem.model_validate_json(s) for s in items_json]
    results: ChunkResult = []

    async def main() -> None:
        async with Runtime(suite) as runtime:
            await LocalExecutor(runtime).execute(
                items,
                lambda item, traj, error: results.append(
                    (item.key, traj.model_dump_json() if traj is not None else None, error)
                ),
            )

    asyncio.run(main())
    return results


class RayExecutor:
    """Plays items on Ray; a context manager that starts (and stops) local Ray if needed.

    Args:
        suite: the suite (``suite.ray`` holds the address, CPUs and chunk size).
    """

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self._started = False
        self._remote: Any = None

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
            else:
                # "local" starts a private instance even where another Ray cluster runs on
                # this machine (without it, ray.init joins that one and refuses num_cpus).
                ray.init(address="local", num_cpus=opts.num_cpus, **kwargs)
            self._started = True
        self._remote = ray.remote(num_cpus=1, max_retries=1)(play_chunk)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            import ray

            ray.shutdown()

    def workers(self) -> int:
        import ray

        return max(1, int(ray.available_resources().get("CPU", self.suite.ray.num_cpus)))

    async def execute(self, items: list[EpisodeItem], on_result: Any) -> None:
        """Play ``items`` on Ray; ``on_result(item, trajectory or None, error or None)``."""
        import ray

        if not items:
            return
        suite_ref = ray.put(self.suite.model_dump_json())
        size = chunk_size(len(items), self.workers(), self.suite.ray.chunk_size)
        by_key = {item.key: item for item in items}
        pending: dict[asyncio.Future[Any], list[EpisodeItem]] = {}
        for chunk in make_chunks(items, size):
            ref = self._remote.remote(suite_ref, [it.model_dump_json() for it in chunk])
            pending[asyncio.wrap_future(ref.future())] = chunk
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                chunk = pending.pop(fut)
                try:
                    results: ChunkResult = fut.result()
                except Exception as exc:  # a lost worker fails its chunk, not the run
                    for item in chunk:
                        on_result(item, None, f"Ray task failed: {type(exc).__name__}: {exc}")
                    continue
                for key, traj_json, error in results:
                    traj = Trajectory.model_validate_json(traj_json) if traj_json else None
                    on_result(by_key[key], traj, error)
