"""Precise waits: an injected latency ends within microseconds of its target, without spinning.

The server is a measuring instrument, so a 200 ms latency must take 200 ms, not 201-202. An
asyncio timer cannot do that on Python 3.11: the selector rounds its timeout up to whole
milliseconds twice (``EpollSelector``, then ``epoll`` itself), so a plain sleep ends up to ~2 ms
late. The server used to spend the last 2.2 ms of every wait yielding to the event loop in a
loop; that was precise on an idle machine, but it burnt a core for 2.2 ms per call (about half a
core at 250 calls/s), and on a shared machine a process that burns CPU is the one the kernel
schedules last, which is how the spin came to cost more precision than it bought.

Now the bulk of a wait still runs on the event loop's timer (a caller's ``wait``, which also
notices a client that goes away), and the last stretch is handed to one timer thread: a
condition-variable wait has microsecond resolution, and waking the loop from a thread goes
through its self-pipe, which ends ``epoll`` at once. The thread wakes :data:`_EARLY_S` before the
target (the kernel's timer slack plus the hop to the loop), and the waiter yields to the loop for
what is left, a few dozen microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
from collections.abc import Awaitable, Callable

import anyio.lowlevel

from timely.clock import WallClock, wall_seconds

__all__ = ["Wait", "wait_until"]

_WALL = WallClock()

# Waits up to the given seconds (a façade's waiter also returns early by raising ClientGone).
Wait = Callable[[float], Awaitable[None]]

# The loop's timer ends up to ~2 ms late, so it hands over this long before the target.
_HANDOVER_S = 0.0022
# The timer thread wakes this long before the target: Linux's default timer slack (50 µs) plus
# the hop through the loop's self-pipe; the waiter yields to the loop for the rest.
_EARLY_S = 0.00012


async def wait_until(end: float, wait: Wait = _WALL.sleep) -> None:
    """Wait until ``wall_seconds() >= end``: ``wait`` for the bulk, the timer thread for the rest.

    Args:
        end: the target, a ``wall_seconds()`` reading.
        wait: how to wait for the bulk (a façade's waiter raises ClientGone when its client
            goes away; the last 2.2 ms are not watched).
    """
    left = end - wall_seconds()
    if left > _HANDOVER_S:
        await wait(left - _HANDOVER_S)
    if end - wall_seconds() > _EARLY_S:
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        _TIMER.wake(end - _EARLY_S, loop, woken)
        await woken
    while wall_seconds() < end:
        await anyio.lowlevel.checkpoint()


class _TimerThread:
    """One daemon thread that resolves futures at given ``wall_seconds()`` readings."""

    def __init__(self) -> None:
        self._reset()
        # A forked child has no timer thread and maybe a lock the parent's thread held.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._due: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._seq = 0  # ties in the heap never compare loops or futures

    def wake(
        self, at: float, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        """Resolve ``future`` on ``loop`` once ``wall_seconds() >= at``."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="timely-precise-timer", daemon=True
                )
                self._thread.start()
            self._seq += 1
            heapq.heappush(self._due, (at, self._seq, loop, future))
            if self._due[0][1] == self._seq:  # the new earliest: the thread must wake sooner
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._due:
                    self._cond.wait()
                    continue
                left = self._due[0][0] - wall_seconds()
                if left > 0:
                    self._cond.wait(left)
                    continue
                _, _, loop, future = heapq.heappop(self._due)
                try:
                    loop.call_soon_threadsafe(_resolve, future)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter leaves its future behind
        future.set_result(None)


_TIMER = _TimerThread()
