"""An asyncio micro-batcher: many concurrent ``generate`` calls, one model call.

A local model is far more efficient on a batch than on one sequence (the embedded model: about
5x the throughput at batch 8 on two cores). Episodes of an eval run or of a GRPO group call
``policy.generate`` concurrently and independently; the batcher queues those requests, and a
worker takes up to ``max_batch_size`` of them that arrived within ``window_s`` of the first one
and runs them as one blocking batch function in a worker thread, then hands each caller its
result. While a batch runs, new requests queue up and form the next batch.

:class:`ContinuousBatcher` goes further for wall-clock work (eval, serving): requests join the
running batch between decode steps and each caller gets its result as soon as its row ends.

The batching window is real time by nature (it waits for other callers, not for the episode),
so it is measured on a :class:`~timely.clock.WallClock`, never on an episode clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from timely.clock import WallClock

R = TypeVar("R")  # request
T = TypeVar("T")  # result


@dataclass
class Pending(Generic[R, T]):
    """One queued request and the future its caller awaits."""

    request: R
    future: asyncio.Future[T]
    abandoned: bool = field(default=False)  # the caller stopped waiting (cancelled)


class _QueuedBatcher(Generic[R, T]):
    """What both batchers share: the queue, its worker task on the caller's event loop, the
    batching window and shutdown. Subclasses say how queued requests are run (``_work``).

    The queue is guarded by a lock: a continuous run takes requests from its worker thread.
    """

    _worker_name = "timely-batcher"

    def __init__(self, *, max_batch_size: int, window_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.window_s = max(0.0, window_s)
        self.queue: list[Pending[R, T]] = []
        self.guard = threading.Lock()
        self._wall = WallClock()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self.batches_run = 0  # for tests and metrics
        self.batch_sizes: list[int] = []

    async def submit(self, request: R) -> T:
        """Queue ``request`` and wait for its result (an exception of its batch propagates)."""
        self._ensure_worker()
        assert self._arrived is not None
        item: Pending[R, T] = Pending(request, asyncio.get_running_loop().create_future())
        with self.guard:
            self.queue.append(item)
        self._arrived.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.abandoned = True
            raise

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # A new event loop (e.g. one per test) needs its own worker, event and queue.
            if self._loop is not loop:
                with self.guard:
                    self.queue = []
            self._loop = loop
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work(), name=self._worker_name)

    async def _work(self) -> None:
        raise NotImplementedError

    async def _wait_for_work(self) -> None:
        """Wait for a first request, then up to ``window_s`` for the batch to fill."""
        assert self._arrived is not None
        if not self.queue:
            self._arrived.clear()
            await self._arrived.wait()
        end = self._wall.now() + self.window_s
        while len(self.queue) < self.max_batch_size and self._wall.now() < end:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with self._wall.cutoff(end):
                    await self._arrived.wait()

    async def aclose(self) -> None:
        """Stop the worker (pending callers get CancelledError)."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        with self.guard:
            for p in self.queue:
                p.future.cancel()
            self.queue = []


class MicroBatcher(_QueuedBatcher[R, T]):
    """Collects concurrent requests into batches for a blocking ``run_batch`` function.

    Args:
        run_batch: ``(requests, is_abandoned) -> results`` (same order); it runs in a worker
            thread. ``is_abandoned(i)`` tells it that the caller of request ``i`` stopped
            waiting, so it may stop work on that row early.
        max_batch_size: most requests per batch.
        window_s: after the first request of a batch arrives, wait at most this long (real
            seconds) for the batch to fill.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[R], Callable[[int], bool]], Sequence[T]],
        *,
        max_batch_size: int = 8,
        window_s: float = 0.01,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, window_s=window_s)
        self._run_batch = run_batch

    _worker_name = "timely-micro-batcher"

    async def _work(self) -> None:
        while True:
            await self._wait_for_work()
            with self.guard:
                batch = [p for p in self.queue[: self.max_batch_size] if not p.abandoned]
                del self.queue[: self.max_batch_size]
            if not batch:
                continue
            self.batches_run += 1
            self.batch_sizes.append(len(batch))

            def abandoned(i: int, batch: list[Pending[R, T]] = batch) -> bool:
                return batch[i].abandoned

            try:
                results = await asyncio.to_thread(
                    self._run_batch, [p.request for p in batch], abandoned
                )
            except Exception as e:  # one failed batch fails its callers, not the worker
                for p in batch:
                    if p.abandoned:
                        p.future.cancel()  # nobody would retrieve the exception
                    elif not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)


class Feed(Generic[R, T]):
    """What a continuous run sees of the queue, from its worker thread: it takes requests as
    room frees up and hands back each result as soon as that row ends."""

    def __init__(self, batcher: ContinuousBatcher[R, T], loop: asyncio.AbstractEventLoop) -> None:
        self._batcher, self._loop = batcher, loop
        self.open: list[Pending[R, T]] = []  # taken, not yet answered

    def take(self, fits: Callable[[R, int], bool]) -> list[Pending[R, T]]:
        """Queued requests in arrival order while ``fits(request, n_taken_so_far)`` holds
        (the first that does not fit waits, so no request is overtaken forever)."""
        taken: list[Pending[R, T]] = []
        with self._batcher.guard:
            queue = self._batcher.queue
            while queue and (queue[0].abandoned or fits(queue[0].request, len(taken))):
                item = queue.pop(0)
                if item.abandoned:
                    self._loop.call_soon_threadsafe(item.future.cancel)
                else:
                    taken.append(item)
        self.open.extend(taken)
        if taken:
            self._batcher.batch_sizes.append(len(taken))
        return taken

    def answer(self, item: Pending[R, T], result: T) -> None:
        """Give ``item``'s caller its result now."""
        self.open.remove(item)
        self._loop.call_soon_threadsafe(_resolve, item.future, result, None)

    def fail(self, error: BaseException) -> None:
        """Fail every taken request not answered yet."""
        for item in self.open:
            self._loop.call_soon_threadsafe(_resolve, item.future, None, error)
        self.open = []


def _resolve(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class ContinuousBatcher(_QueuedBatcher[R, T]):
    """Continuous batching: requests join a running batch between its steps, leave as they end.

    Unlike :class:`MicroBatcher`, a request that arrives while the model decodes does not wait
    for the whole batch to end, and a caller whose row ends early gets its result at once. The
    blocking ``run(feed)`` owns the model while any request is open: it calls
    ``feed.take(fits)`` between decode steps to admit queued requests (``fits`` keeps the batch
    within its size and token budget), ``feed.answer`` as each row ends, and returns once it
    has no rows and ``take`` gives nothing.

    Args:
        run: the blocking decode loop, run in a worker thread.
        window_s: after the first request of an idle batcher arrives, wait at most this long
            (real seconds) for others, so they start together.
        max_batch_size: most requests in the first take (``run`` enforces it afterwards).
    """

    def __init__(
        self,
        run: Callable[[Feed[R, T]], None],
        *,
        max_batch_size: int = 8,
        window_s: float = 0.01,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, window_s=window_s)
        self._run = run

    _worker_name = "timely-continuous-batcher"

    async def _work(self) -> None:
        assert self._loop is not None
        while True:
            await self._wait_for_work()
            feed: Feed[R, T] = Feed(self, self._loop)
            self.batches_run += 1  # runs of ``run`` (each lasts while requests keep it busy)
            try:
                await asyncio.to_thread(self._run, feed)
            except Exception as e:  # one failed run fails its callers, not the worker
                feed.fail(e)
            else:
                feed.fail(RuntimeError("the decode loop returned without answering"))
