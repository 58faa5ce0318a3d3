"""Retries within the budget: transport failures only, with backoff, while a real attempt fits.

Retried: no connection, a dropped connection, HTTP 502/503, and 429 "try later" (honouring
``Retry-After``). A retry is made only while the time left still has room for the wait and a
real attempt; what each failed attempt cost is kept in :class:`Attempts`, so a virtual clock is
charged for retries too and the trajectory records how often a call was re-sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from timely.clock import WallClock
from timely.toolclient.results import json_body, seconds

# Backoff waits in real time whatever the episode clock is: it waits for a real server.
_REAL = WallClock()
RETRY_STATUS = (429, 502, 503)

Request = Callable[
    [str, str, dict[str, Any] | None, dict[str, str], httpx2.Timeout], Awaitable[httpx2.Response]
]


class TimedOut(Exception):
    """The request was sent but no answer came within its time."""


@dataclass
class Attempts:
    """What the attempts of one request have cost so far."""

    retries: int = 0
    last_error: str | None = None
    # Virtual clock: seconds the failed attempts and the waits between them cost (their reported
    # latency plus the backoff), charged with the final answer so retries are not free.
    virtual_s: float = 0.0
    fault: str | None = None  # the last injected fault a failed attempt reported


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries.

    Attributes:
        max_retries: retries at most after the first attempt.
        backoff_s: the first retry's wait; it doubles up to ``max_backoff_s``.
        max_backoff_s: the longest wait between retries.
        margin_s: a retry is made only if more than this is left after its wait.
        connect_timeout_s: the most one connection attempt may take.
    """

    max_retries: int
    backoff_s: float
    max_backoff_s: float
    margin_s: float
    connect_timeout_s: float

    async def send(
        self,
        request: Request,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: Callable[[], dict[str, str]] | dict[str, str],
        time_left: Callable[[], float],
        attempts: Attempts,
        unavailable: Callable[[str, int], Exception],
    ) -> httpx2.Response:
        """Send, retrying transport failures while ``time_left()`` allows.

        Args:
            request: sends one attempt (``ShardedPool.request``).
            method: the HTTP method.
            path: the path on the server.
            body: the JSON body, or None.
            headers: the headers, or a function giving each attempt's (deadlines shrink).
            time_left: real seconds the request may still take.
            attempts: updated with what the attempts cost.
            unavailable: the exception to raise for ``(why, retries)``.

        Returns:
            The answer; a retryable one (429, 502, 503) as is once no retry fits, so the caller
            can report it.

        Raises:
            TimedOut: an attempt was sent but not answered in time.
            Exception: ``unavailable(...)`` when no connection could be made.
        """
        while True:
            left = max(0.001, time_left())
            attempts.last_error = None  # set again only if this attempt fails
            timeout = httpx2.Timeout(left, connect=min(left, self.connect_timeout_s))
            sent = headers() if callable(headers) else headers
            response: httpx2.Response | None = None
            try:
                response = await request(method, path, body, sent, timeout)
            except (httpx2.ReadTimeout, httpx2.WriteTimeout, httpx2.PoolTimeout):
                raise TimedOut from None
            except httpx2.TransportError as exc:
                attempts.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                attempts.last_error = f"HTTP {response.status_code}"
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempts.retries)
            if response is not None:
                delay = max(delay, retry_after(response))
            # Only retry when, after the wait, a real attempt still fits in the time left.
            if attempts.retries >= self.max_retries or time_left() - delay <= self.margin_s:
                if response is not None:
                    return response
                raise unavailable(attempts.last_error, attempts.retries)
            if response is not None:
                payload = json_body(response)
                if isinstance(payload, dict):
                    attempts.fault = payload.get("fault") or attempts.fault
                    attempts.virtual_s += seconds(payload.get("latency_s"))
            attempts.virtual_s += delay
            attempts.retries += 1
            await _REAL.sleep(delay)


def retry_after(response: httpx2.Response) -> float:
    """Seconds a 429/503 asks the client to wait (0 when absent or not a number)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
