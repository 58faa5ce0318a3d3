"""Prometheus metrics of the agent endpoint (``GET /metrics``), all prefixed ``timely_``.

Each app has its own registry, so two apps in one process (tests) never share counters.
A finished run's ``outcome`` label is the run record's (:func:`timely.runrecord.outcome`:
on_time, wrong, late, cut_off, no_answer, failed), the words ``timely show`` and the dashboard
filter by; a run that ended without a trajectory counts as ``cancelled`` or ``failed``.
Compliance is ``timely_runs_compliant_total / timely_runs_total`` in PromQL.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from timely.runrecord import outcome
from timely.types import Trajectory

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
_OVERSHOOT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "timely_runs", "Finished runs by API and outcome.", ["api", "outcome"], registry=r
        )
        self.compliant = Counter(
            "timely_runs_compliant", "Runs answered within their budget.", ["api"], registry=r
        )
        self.rejected = Counter(
            "timely_requests_rejected",
            "Requests refused before a run started.",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge("timely_runs_in_flight", "Runs being played now.", registry=r)
        self.latency = Histogram(
            "timely_run_seconds",
            "Wall seconds from request to the end of the run.",
            ["api"],
            buckets=_SECONDS,
            registry=r,
        )
        self.budget_use = Histogram(
            "timely_run_budget_fraction",
            "Elapsed time over budget of finished runs.",
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.05, 1.25, 2.0),
            registry=r,
        )
        self.overshoot = Histogram(
            "timely_run_overshoot_seconds",
            "Seconds a run ended past its budget (0 when it ended within it).",
            buckets=_OVERSHOOT,
            registry=r,
        )
        self.tokens = Counter(
            "timely_tokens", "Model tokens of finished runs.", ["kind"], registry=r
        )

    def finished(self, api: str, traj: Trajectory, wall_s: float) -> None:
        self.runs.labels(api, outcome(traj).value).inc()
        if traj.compliant:
            self.compliant.labels(api).inc()
        self.latency.labels(api).observe(wall_s)
        self.budget_use.observe(traj.elapsed_s / traj.budget_s)
        self.overshoot.observe(max(0.0, traj.elapsed_s - traj.budget_s))
        self.tokens.labels("prompt").inc(sum(s.prompt_tokens for s in traj.steps))
        self.tokens.labels("completion").inc(sum(s.completion_tokens for s in traj.steps))

    def render(self) -> bytes:
        return generate_latest(self.registry)
