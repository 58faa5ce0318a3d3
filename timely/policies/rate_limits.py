"""Client-side rate limits and HTTP 429 handling for hosted model APIs.

A hosted API meters requests and tokens per minute. Going over earns a 429 with ``Retry-After``;
both the client-side wait that avoids it and the wait a 429 asks for are time the agent really
loses, so both are **charged to the episode's budget**, never hidden:

* wall clock: the wait passes on the episode clock (``Clock.sleep``) and the loop measures it as
  part of the generation call;
* virtual clock: the real server still needs the real pause (a retry sooner would only earn
  another 429), so the wait is spent in real time *and* the same seconds are charged to the
  simulated clock (``Clock.sleep`` advances it). Results on a throttled API then depend on the
  throttling, as they would in the deployment the virtual clock emulates.

A wait that cannot end before the deadline is not started: the rest of the budget is charged (on
a wall clock by waiting it out) and the call ends as cut at the deadline. A 429 that means "out
of quota" (``insufficient_quota``) will not pass by waiting and raises
:class:`~timely.errors.PolicyError`. The limiter is ``aiolimiter.AsyncLimiter`` (a leaky bucket
that allows a minute's worth in a burst, as the providers' own limits do), one per event loop,
shared by every episode that uses the policy.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from timely.clock import Clock, WallClock, utc_now, wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.policies.base import Deadline

log = logging.getLogger(__name__)

# The window of "per minute" limits (tests shorten it to keep waits brief).
RATE_PERIOD_S = 60.0
# A 429 without Retry-After: wait this long, doubling per consecutive 429, at most MAX_BACKOFF_S.
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# Real time, for pacing a real server whatever clock the episode runs on.
_REAL_TIME = WallClock()


@dataclass
class RateLimitStats:
    """What throttling cost a policy so far (all episodes together).

    Attributes:
        limiter_waits: requests that waited for the client-side limiter.
        throttled: 429 answers received.
        waited_s: seconds of waiting charged to episodes (limiter and 429s).
        cut: calls that ended at the deadline while waiting.
    """

    limiter_waits: int = 0
    throttled: int = 0
    waited_s: float = 0.0
    cut: int = 0


class RateLimits:
    """Requests- and tokens-per-minute limits of one policy, and its 429 waits.

    Args:
        requests_per_minute: requests per minute at most; None = unlimited.
        tokens_per_minute: prompt + token-cap tokens per minute at most (the way providers meter
            a request before it runs); None = unlimited.

    Raises:
        ConfigError: a limit is not a positive number.
    """

    def __init__(
        self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.stats = RateLimitStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiters: list[tuple[AsyncLimiter, str]] = []

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def _for_loop(self) -> list[tuple[AsyncLimiter, str]]:
        """The limiters of the running loop (an AsyncLimiter belongs to one event loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._limiters = []
            if self.requests_per_minute is not None:
                self._limiters.append(
                    (AsyncLimiter(self.requests_per_minute, RATE_PERIOD_S), "requests")
                )
            if self.tokens_per_minute is not None:
                self._limiters.append(
                    (AsyncLimiter(self.tokens_per_minute, RATE_PERIOD_S), "tokens")
                )
        return self._limiters

    async def acquire(self, tokens: int, deadline: Deadline) -> bool:
        """Wait for room for one request of ``tokens`` tokens, charging the wait to the episode.

        Returns:
            True when the request may go; False when the deadline came first (the wait up to it
            is charged).

        Raises:
            PolicyError: one request alone needs more tokens than ``tokens_per_minute``.
        """
        if not self.limited:
            return True
        if self.tokens_per_minute is not None and tokens > self.tokens_per_minute:
            raise PolicyError(
                f"one request needs ~{tokens} tokens (prompt + token cap), more than "
                f"tokens_per_minute={self.tokens_per_minute:g} allows: raise tokens_per_minute "
                "or lower max_tokens"
            )
        limiters = self._for_loop()
        amounts = [(lim, 1 if kind == "requests" else tokens) for lim, kind in limiters]
        if all(lim.has_capacity(n) for lim, n in amounts):
            for lim, n in amounts:
                await lim.acquire(n)  # returns at once: there is room
            return True
        self.stats.limiter_waits += 1
        clock = _pacing_clock(deadline.clock)
        started = wall_seconds()
        ok = True
        try:
            async with clock.cutoff(clock.now() + max(0.0, deadline.remaining())):
                for lim, n in amounts:
                    await lim.acquire(n)
        except TimeoutError:
            ok = False
        waited = wall_seconds() - started
        await self._charge(deadline, waited, ok)
        return ok

    async def wait_after_429(
        self, headers: Mapping[str, str], body: object, attempt: int, deadline: Deadline
    ) -> bool:
        """Wait what a 429 asks for (``Retry-After``), charging it to the episode.

        Args:
            headers: the 429 response's headers.
            body: its JSON body (an OpenAI-style error tells quota from rate).
            attempt: consecutive 429s of this call before this one (for the back-off).
            deadline: the call's deadline.

        Returns:
            True when the request may be retried; False when the wait would outlast the budget
            (the rest of it is charged).

        Raises:
            PolicyError: the API is out of quota, which no wait fixes.
        """
        self.stats.throttled += 1
        if _error_code(body) == "insufficient_quota":
            raise PolicyError(
                "the model API answered 429 insufficient_quota: the account is out of quota "
                "(waiting will not help); check its plan and billing"
            )
        seconds = retry_after(headers)
        if seconds is None:
            seconds = min(MAX_BACKOFF_S, DEFAULT_BACKOFF_S * 2**attempt)
        left = max(0.0, deadline.remaining())
        fits = seconds < left
        wait = seconds if fits else left
        log.info("model API throttled (429): waiting %.3g s (%.3g s left)", wait, left)
        if deadline.clock.kind == "wall":
            await deadline.clock.sleep(wait)
        else:
            if fits:
                await _REAL_TIME.sleep(wait)  # nothing to retry when the budget ends first
            await deadline.clock.sleep(wait)
        self.stats.waited_s += wait
        self.stats.cut += not fits
        return fits

    async def _charge(self, deadline: Deadline, waited: float, ok: bool) -> None:
        """A limiter wait happened in real time: a virtual clock is charged the same seconds."""
        if deadline.clock.kind != "wall":
            waited = min(waited, max(0.0, deadline.remaining()))
            await deadline.clock.sleep(waited)
        self.stats.waited_s += waited
        self.stats.cut += not ok


def _pacing_clock(clock: Clock) -> Clock:
    """The clock a real wait is bounded on: the episode's when it is real time, else real time."""
    return clock if clock.kind == "wall" else _REAL_TIME


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429/503 asks the client to wait: ``retry-after-ms`` (OpenAI), then
    ``Retry-After`` in seconds or as an HTTP date; None when absent or unreadable."""
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utc_now()).total_seconds())


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code") or inner.get("type")
            return str(code) if code is not None else None
    return None
