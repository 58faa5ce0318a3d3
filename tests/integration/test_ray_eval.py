"""A small Timely-Eval run on a local Ray instance: same episodes as the local backend."""

from __future__ import annotations

import json

import pytest

from timely_eval.runner import TRAJECTORIES, run_suite
from timely_eval.suite import Suite

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(240)

SUITE = {
    "name": "ray-small",
    "tasks": ["math/arithmetic-v1", "math/multistep-v1"],
    "policies": ["scripted:oracle", "scripted:budget-aware"],
    "episodes": 2,
    "latencies": ["constant:0.5", "constant:2.0"],
    "budgets": {"seconds": [12]},
    "ray": {"num_cpus": 2},
}


def records(path):
    out = {}
    for line in (path / TRAJECTORIES).read_text().splitlines():
        d = json.loads(line)
        out[d["metadata"]["key"]] = (d["score"], d["elapsed_s"], d["end_reason"])
    return out


async def test_ray_backend_plays_the_same_episodes_as_local(tmp_path):
    local = Suite.model_validate(SUITE)
    ray_suite = Suite.model_validate({**SUITE, "backend": "ray"})
    await run_suite(local, tmp_path / "local")
    report = await run_suite(ray_suite, tmp_path / "ray")
    assert report.counts["eval"].done == 16 and report.failed == 0
    assert records(tmp_path / "ray") == records(tmp_path / "local")  # virtual clock: identical
