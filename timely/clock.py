"""Clocks: the one place where time is read, waited on and accounted for.

Everything that takes time in an episode charges it to a :class:`Clock`. ``WallClock`` measures
real time (serving, real deployments); ``VirtualClock`` is deterministic simulated time in which
nothing sleeps: a tool call advances it by the latency the tool server sampled, and generation is
charged from token counts through a :class:`SpeedProfile`. No other module may call
``time.time()``, ``time.perf_counter()`` or ``asyncio.sleep()`` directly (ruff enforces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

ClockKind = Literal["wall", "virtual"]
ChargeKind = Literal["generation", "tool", "other"]


class SpeedProfile(BaseModel):
    """How fast a simulated model generates; used to charge generation time on a virtual clock.

    seconds = overhead_s + prompt_tokens / prefill_tok_s + completion_tokens / decode_tok_s
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("custom", description="Preset name, for the run record.")
    prefill_tok_s: float = Field(gt=0, description="Prompt tokens processed per second.")
    decode_tok_s: float = Field(gt=0, description="New tokens generated per second.")
    overhead_s: float = Field(0.0, ge=0, description="Fixed cost per call (queueing, TTFT floor).")

    def generation_seconds(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Simulated seconds for one model call."""
        return (
            self.overhead_s
            + prompt_tokens / self.prefill_tok_s
            + completion_tokens / self.decode_tok_s
        )

    def max_tokens_within(self, seconds: float, prompt_tokens: int) -> int:
        """The most new tokens that fit in ``seconds`` after the fixed cost and prefill."""
        left = seconds - self.overhead_s - prompt_tokens / self.prefill_tok_s
        return max(0, int(left * self.decode_tok_s))


# Presets. Values are public single-stream figures (see docs/concepts.md for sources):
# small-fast ~ an 8B model on one H100 with vLLM; large-slow ~ a 70B model per GPU;
# smollm2-cpu ~ the embedded 135M model measured on a 2-core CPU with transformers.
SPEED_PRESETS: dict[str, SpeedProfile] = {
    "instant": SpeedProfile(name="instant", prefill_tok_s=1e12, decode_tok_s=1e12, overhead_s=0.0),
    "small-fast": SpeedProfile(
        name="small-fast", prefill_tok_s=20000, decode_tok_s=150, overhead_s=0.05
    ),
    "large-slow": SpeedProfile(
        name="large-slow", prefill_tok_s=3000, decode_tok_s=30, overhead_s=0.4
    ),
    "smollm2-cpu": SpeedProfile(
        name="smollm2-cpu", prefill_tok_s=400, decode_tok_s=23, overhead_s=0.02
    ),
}


def speed_profile(name_or_profile: str | SpeedProfile) -> SpeedProfile:
    """Resolve a preset name (or pass a profile through)."""
    if isinstance(name_or_profile, SpeedProfile):
        return name_or_profile
    try:
        return SPEED_PRESETS[name_or_profile]
    except KeyError:
        known = ", ".join(sorted(SPEED_PRESETS))
        raise ValueError(
            f"unknown speed profile {name_or_profile!r}; known presets: {known}"
        ) from None


@runtime_checkable
class Clock(Protocol):
    """The time contract every component uses."""

    kind: ClockKind

    def now(self) -> float:
        """Seconds since the clock started."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wall: really sleep. Virtual: advance simulated time."""
        ...

    def charge(self, seconds: float, kind: ChargeKind) -> None:
        """Account ``seconds`` of work of ``kind``.

        Wall: the time has already passed, so this only records the breakdown.
        Virtual: this is what moves time forward.
        """
        ...

    def cutoff(self, at: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Cancel the enclosed await when the clock reaches ``at`` (wall); no-op when virtual."""
        ...


class _Accounting:
    def __init__(self) -> None:
        self.charged: dict[str, float] = defaultdict(float)

    def _record(self, seconds: float, kind: ChargeKind) -> None:
        if seconds < 0:
            raise ValueError(f"cannot charge negative time ({seconds})")
        self.charged[kind] += seconds


class WallClock(_Accounting):
    """Real time, measured with a monotonic high-resolution counter."""

    kind: ClockKind = "wall"

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def charge(self, seconds: float, kind: ChargeKind) -> None:
        self._record(seconds, kind)

    @contextlib.asynccontextmanager
    async def cutoff(self, at: float) -> AsyncIterator[None]:
        async with asyncio.timeout(max(0.0, at - self.now())):
            yield


class VirtualClock(_Accounting):
    """Deterministic simulated time: it only moves when something is charged or slept."""

    kind: ClockKind = "virtual"

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._advance(seconds)
        await asyncio.sleep(0)  # stay a real await point so cancellation still works

    def charge(self, seconds: float, kind: ChargeKind) -> None:
        self._record(seconds, kind)
        self._advance(seconds)

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    @contextlib.asynccontextmanager
    async def cutoff(self, at: float) -> AsyncIterator[None]:
        yield


def make_clock(kind: ClockKind) -> Clock:
    """Build a fresh clock of the given kind."""
    if kind == "wall":
        return WallClock()
    if kind == "virtual":
        return VirtualClock()
    raise ValueError(f"unknown clock kind {kind!r}; use 'wall' or 'virtual'")


def wall_seconds() -> float:
    """A raw monotonic reading, for measuring real durations (e.g. model calls) outside a Clock."""
    return time.perf_counter()


def utc_now() -> datetime:
    """The current UTC date and time (timezone-aware), for stamping records.

    Not an episode clock: a virtual clock's seconds say nothing about *when* an episode ran,
    and people join trajectories with server and model logs by that.
    """
    return datetime.now(UTC)
