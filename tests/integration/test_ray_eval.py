"""Timely-Eval runs on a local Ray instance (CPU): the same episodes as the local backend, one
policy per worker actor, and no episode lost or doubled when a worker dies."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import ray_policies
from timely.runrecord import ERRORS, TRAJECTORIES
from timely_eval.runner import run_suite
from timely_eval.suite import Suite

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]

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


def keys_on_disk(path) -> Counter[str]:
    """Every key in the raw JSONL, counted (EpisodeLog would hide a duplicate)."""
    lines = (path / TRAJECTORIES).read_text().splitlines()
    return Counter(json.loads(line)["metadata"]["key"] for line in lines)


async def test_ray_backend_plays_the_same_episodes_as_local(tmp_path):
    local = Suite.model_validate(SUITE)
    ray_suite = Suite.model_validate({**SUITE, "backend": "ray"})
    await run_suite(local, tmp_path / "local")
    report = await run_suite(ray_suite, tmp_path / "ray")
    assert report.counts["eval"].done == 16 and report.failed == 0
    assert records(tmp_path / "ray") == records(tmp_path / "local")  # virtual clock: identical


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray whose workers know the test policies (the executor joins it, as it would
    join a cluster, and leaves it running)."""
    ray_policies.register()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={
            # workers import the helpers from this checkout, which is not an installed package
            "env_vars": {"PYTHONPATH": str(ROOT)},
            "worker_process_setup_hook": "tests.helpers.ray_policies.register",
        },
    )
    yield
    ray.shutdown()


LATENCIES = ["constant:0.5", "constant:2.0"]


def small_suite(policy: dict, episodes: int, latencies=LATENCIES, **ray_options) -> Suite:
    return Suite.model_validate(
        {
            "name": "ray-workers",
            "tasks": ["math/arithmetic-v1"],
            "policies": [policy],
            "episodes": episodes,
            "latencies": latencies,
            "budgets": {"seconds": [12]},
            "backend": "ray",
            "ray": {"workers": 2, "chunk_size": 2, **ray_options},
        }
    )


async def test_a_policy_is_built_once_per_worker_actor(tmp_path, local_ray):
    log = tmp_path / "builds.txt"
    suite = small_suite({"spec": "test-count:oracle", "options": {"log": str(log)}}, 8)
    report = await run_suite(suite, tmp_path / "run")
    assert report.counts["eval"].done == 16 and report.failed == 0
    pids = log.read_text().split()
    # 8 chunks of 2 on 2 actors: each actor built the policy once and kept it for later chunks
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)
    assert str(os.getpid()) not in pids  # the driver only checks the policy, never builds it


async def test_a_killed_worker_loses_no_episode_and_doubles_none(tmp_path, local_ray):
    marker = tmp_path / "died"
    policy = {"spec": "test-die:oracle", "options": {"at": 3, "marker": str(marker)}}
    suite = small_suite(policy, 6)
    report = await run_suite(suite, tmp_path / "run")
    assert marker.exists()  # one worker did die mid-chunk
    counts = report.counts["eval"]
    assert counts.planned == 12 and counts.done == 12 and report.failed == 0
    keys = keys_on_disk(tmp_path / "run")
    assert len(keys) == 12 and set(keys.values()) == {1}
    assert not (tmp_path / "run" / ERRORS).exists()


async def test_a_chunk_whose_worker_always_dies_lands_in_errors(tmp_path, local_ray):
    policy = {"spec": "test-die:oracle", "options": {"at": 1}}
    suite = small_suite(policy, 1, ["constant:0.5"], max_retries=1, workers=1)
    report = await run_suite(suite, tmp_path)
    assert report.counts["eval"].done == 0 and report.failed == 1
    (error,) = [json.loads(line) for line in (tmp_path / ERRORS).read_text().splitlines()]
    assert "died 2 times (ray.max_retries=1)" in error["error"]


SEEN: list[dict] = []


def fake_eval_command(console, **kwargs):
    """Stands in for timely_eval.commands:eval_command: records what the CLI passed."""
    SEEN.append(kwargs)
    return type("Report", (), {"failed": 0})()


def test_ray_address_implies_the_ray_backend(monkeypatch):
    from typer.testing import CliRunner

    from timely import cli

    monkeypatch.setattr(cli, "EVAL_COMMAND", f"{__name__}:fake_eval_command")
    SEEN.clear()
    result = CliRunner().invoke(cli.app, ["eval", "--ray-address", "auto"])
    assert result.exit_code == 0, result.output
    assert {"backend=ray", "ray.address=auto"} <= set(SEEN[-1]["overrides"])
    result = CliRunner().invoke(cli.app, ["eval", "--backend", "local", "--ray-address", "auto"])
    assert result.exit_code != 0 and len(SEEN) == 1
