"""Prometheus metrics of one tool server (``GET /metrics``), names prefixed ``timely_``.

The server is a measuring instrument, so it reports on itself: how many calls each tool got and
how they ended, the latency it injected next to the time it actually spent, what is in flight,
and how many sessions are live. Each app owns its own ``CollectorRegistry`` so several servers
in one process (tests, benchmarks) never share or collide on series.

The series every call updates (requests, the four histograms, in flight) are plain numbers
behind a small collector instead of ``prometheus_client``'s metric objects: those take a lock
and re-check their type on every update, which came to ~10 µs of a zero-latency call. The
server updates them from its event loop only, and scrapes run there too, so no lock is needed;
``/metrics`` renders the same text as the library's own Counter, Histogram and Gauge
(``tests/unit/server/test_metrics_and_profiles.py`` compares them).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from timely.clock import utc_now

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
        self.requests = LoopCounter(
            "timely_tool_requests",
            "Tool calls by tool, HTTP status (or MCP outcome) and transport.",
            ["tool", "status", "transport"],
            registry=r,
        )
        self.faults = Counter(
            "timely_tool_faults", "Injected faults by tool and kind.", ["tool", "kind"], registry=r
        )
        self.injected = LoopHistogram(
            "timely_tool_injected_latency_seconds",
            "Latency injected into a call (sampled from its model).",
            ["tool"],
            registry=r,
        )
        self.service = LoopHistogram(
            "timely_tool_service_seconds",
            "Observed seconds of a tool's own work (the handler), without injected latency.",
            ["tool"],
            registry=r,
        )
        self.work = LoopHistogram(
            "timely_tool_work_seconds",
            "Modelled seconds of a tool's work (its deterministic work model) reported to "
            "virtual-clock callers, who charge it with the injected latency.",
            ["tool"],
            registry=r,
        )
        self.duration = LoopHistogram(
            "timely_tool_request_duration_seconds",
            "Observed seconds a call spent in the server, injected latency included.",
            ["tool"],
            registry=r,
        )
        self.in_flight = LoopGauge(
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


class _Series:
    """One labelled series of a loop metric: a number (or bucket counts) and when it started."""

    __slots__ = ("value", "counts", "created")

    def __init__(self, buckets: int) -> None:
        self.value = 0.0  # counter or gauge value; a histogram's sum
        self.counts = [0] * buckets
        self.created = utc_now().timestamp()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def observe(self, amount: float) -> None:
        self.value += amount
        if amount == amount:  # as prometheus_client: NaN goes into the sum, into no bucket
            self.counts[bisect_left(_BOUNDS, amount)] += 1  # "le": the first bound >= amount


_BOUNDS = (*_BUCKETS, math.inf)


class _LoopMetric(Collector):
    """A labelled metric updated from the event loop only, collected like the library's own.

    Args:
        name: the metric name (a counter's without ``_total``, as ``prometheus_client`` takes it).
        documentation: the HELP text.
        labelnames: the label names, in the order ``labels()`` takes their values.
        registry: the registry to register with.
    """

    kind = ""

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        """The series of these label values (created on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        found = self._series.get(values)
        if found is None:
            found = self._series[values] = _Series(len(_BOUNDS) if self.kind == "histogram" else 0)
        return found

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self._series.items()):
            self._add(family, list(values), series)
        yield family

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Any, values: list[str], series: _Series) -> None:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    """A Counter (``<name>_total`` and ``<name>_created``)."""

    kind = "counter"

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: list[str], series: _Series) -> None:
        family.add_metric(values, series.value, created=series.created)


class LoopGauge(_LoopMetric):
    """A Gauge."""

    kind = "gauge"

    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: list[str], series: _Series) -> None:
        family.add_metric(values, series.value)


class LoopHistogram(_LoopMetric):
    """A Histogram over :data:`_BUCKETS` (buckets, count, sum and ``_created``)."""

    kind = "histogram"

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: list[str], series: _Series) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip(_BOUNDS, series.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(values, buckets, series.value)
        labels = dict(zip(self.labelnames, values, strict=True))
        family.samples.append(Sample(f"{self.name}_created", labels, series.created))
