"""Fault injection: seeded, per tool and global, and always reported.

Real tools fail, and an agent's time budget has to survive it. The server can make a call fail
as a tool error result, as an HTTP 5xx (a transport failure the client may retry), by hanging
until the caller's deadline, or by answering late (slow first byte). Faults are drawn from their
own per-session RNG stream, separate from latency, so turning faults on never changes the
latencies an episode sees; every response names the fault it carried (``"fault": kind``), so the
client and the trajectory know what happened.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_RATES = ("http_5xx_rate", "hang_rate", "error_rate", "slow_first_byte_rate")
_SHORT = {
    "error": "error_rate",
    "5xx": "http_5xx_rate",
    "http_5xx": "http_5xx_rate",
    "hang": "hang_rate",
    "slow": "slow_first_byte_rate",
    "slow_s": "slow_first_byte_s",
}


class Fault(StrEnum):
    """What an injected fault did to a call; the value is what responses report."""

    ERROR = "error"  # 200 with an error result: the tool failed
    HTTP_5XX = "http_5xx"  # 503: the server failed (transport level; retryable)
    HANG = "hang"  # no answer until the caller's deadline, then 504
    SLOW_FIRST_BYTE = "slow_first_byte"  # the answer starts slow_first_byte_s late


class FaultSpec(BaseModel):
    """Fault rates of one tool (or the default of all tools). Rates are per call.

    At most one fault hits a call: one uniform draw is compared with the cumulative rates
    (5xx, hang, error, slow first byte, in that order), so each rate is exact and their sum
    must not exceed 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    error_rate: float = Field(0.0, ge=0, le=1, description="Calls answered as a tool error.")
    http_5xx_rate: float = Field(
        0.0, ge=0, le=1, description="Calls answered HTTP 503 without running the tool."
    )
    hang_rate: float = Field(
        0.0, ge=0, le=1, description="Calls that hang until the caller's deadline, then 504."
    )
    slow_first_byte_rate: float = Field(
        0.0, ge=0, le=1, description="Calls whose answer starts slow_first_byte_s late."
    )
    slow_first_byte_s: float = Field(
        1.0, ge=0, description="Extra seconds before a slow-first-byte answer starts."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return parse_faults(value)

    @model_validator(mode="after")
    def _sum_at_most_one(self) -> FaultSpec:
        total = sum(getattr(self, r) for r in _RATES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}; their sum must be at most 1")
        return self

    @property
    def enabled(self) -> bool:
        """True when any fault can happen."""
        return any(getattr(self, r) > 0 for r in _RATES)

    def draw(self, rng: np.random.Generator) -> Fault | None:
        """The fault of one call (None for a clean call); consumes exactly one draw."""
        u = float(rng.random())
        edge = 0.0
        for rate, fault in zip(
            _RATES, (Fault.HTTP_5XX, Fault.HANG, Fault.ERROR, Fault.SLOW_FIRST_BYTE), strict=True
        ):
            edge += getattr(self, rate)
            if u < edge:
                return fault
        return None

    def describe(self) -> str:
        """Short form for logs, e.g. ``"error=0.05,5xx=0.01"`` (``"none"`` when off)."""
        names = {"error_rate": "error", "http_5xx_rate": "5xx", "hang_rate": "hang"}
        parts = [f"{names[r]}={getattr(self, r):g}" for r in names if getattr(self, r) > 0]
        if self.slow_first_byte_rate > 0:
            parts.append(f"slow={self.slow_first_byte_rate:g}@{self.slow_first_byte_s:g}s")
        return ",".join(parts) or "none"


def parse_faults(value: Any) -> Any:
    """Accept a mapping, a FaultSpec, or a string such as ``"error=0.05,5xx=0.01,slow_s=2"``.

    Keys are the field names or the short names error, 5xx, hang, slow, slow_s.
    """
    if not isinstance(value, str):
        return value
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        key, sep, number = item.partition("=")
        key = _SHORT.get(key.strip(), key.strip())
        if not sep or key not in FaultSpec.model_fields:
            known = ", ".join([*FaultSpec.model_fields, *_SHORT])
            raise ValueError(f"invalid fault setting {item!r}: use KEY=VALUE with KEY in {known}")
        try:
            out[key] = float(number)
        except ValueError:
            raise ValueError(
                f"invalid fault setting {item!r}: {number!r} is not a number"
            ) from None
    return out


# A config field type: a FaultSpec, also written as "error=0.05,5xx=0.01".
FaultField = FaultSpec


class FaultConfig(BaseModel):
    """Which fault rates each tool gets: ``per_tool[name]`` replaces ``default`` for that tool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: FaultField = Field(default_factory=FaultSpec, description="Rates of every tool.")
    per_tool: dict[str, FaultField] = Field(
        default_factory=dict, description="Rates by tool name, replacing the default."
    )

    def spec_for(self, tool: str) -> FaultSpec:
        """The rates that apply to ``tool``."""
        return self.per_tool.get(tool, self.default)

    @cached_property
    def enabled(self) -> bool:
        """True when any tool can fault (draws are skipped entirely otherwise).

        Cached: every call asks, and the config is frozen.
        """
        return self.default.enabled or any(s.enabled for s in self.per_tool.values())

    def describe(self) -> str:
        extra = "".join(f"; {k}={v.describe()}" for k, v in sorted(self.per_tool.items()))
        return self.default.describe() + extra
