"""Prometheus metrics of one tool server (``GET /metrics``), names prefixed ``timely_``.

The server is a measuring instrument, so it reports on itself: how many calls each tool got and
how they ended, the latency it injected next to the time it actually spent, what is in flight,
and how many sessions are live. Each app owns its own ``CollectorRegistry`` so several servers
in one process (tests, benchmarks) never share or collide on series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Seconds: from sub-millisecond overhead to the slowest simulated tools.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Tool names in labels are limited to registered tools (unknown names would explode series).
OTHER_TOOL = "_unknown"


class Metrics:
    """The server's collectors.

    Args:
        live_sessions: read at scrape time for ``timely_sessions_live``.
    """

    def __init__(self, live_sessions: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "timely_tool_requests",
            "Tool calls by tool, HTTP status (or MCP outcome) and transport.",
            ["tool", "status", "transport"],
            registry=r,
        )
        self.faults = Counter(
            "timely_tool_faults", "Injected faults by tool and kind.", ["tool", "kind"], registry=r
        )
        self.injected = Histogram(
            "timely_tool_injected_latency_seconds",
            "Latency injected into a call (sampled from its model).",
            ["tool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.service = Histogram(
            "timely_tool_service_seconds",
            "Observed seconds of a tool's own work (the handler), without injected latency.",
            ["tool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.work = Histogram(
            "timely_tool_work_seconds",
            "Modelled seconds of a tool's work (its deterministic work model) reported to "
            "virtual-clock callers, who charge it with the injected latency.",
            ["tool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "timely_tool_request_duration_seconds",
            "Observed seconds a call spent in the server, injected latency included.",
            ["tool"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "timely_tool_in_flight", "Tool calls being served now.", ["tool"], registry=r
        )
        self.cancelled = Counter(
            "timely_tool_cancelled",
            "Calls abandoned by the client (disconnect or MCP cancel) before they finished.",
            ["tool", "transport"],
            registry=r,
        )
        self.sessions_live = Gauge("timely_sessions_live", "Live sessions.", registry=r)
        self.sessions_live.set_function(live_sessions)
        self.sessions_events = Counter(
            "timely_sessions_events",
            "Sessions created and ended, by event (created, deleted, expired, evicted).",
            ["event"],
            registry=r,
        )

        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: str, *labels: str) -> Any:
        """``getattr(self, metric).labels(*labels)``, cached (label lookups cost a lock each)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = getattr(self, metric).labels(*labels)
        return found

    def session_event(self, kind: str) -> None:
        """Count a session event (the SessionStore's observer)."""
        self.sessions_events.labels(kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
