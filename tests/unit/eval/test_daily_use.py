"""Running conveniences of ``timely eval``, in-process: any registered task, ``-T`` options,
``--limit``, ``--epochs`` with pass@k, and policies checked before any episode runs."""

from __future__ import annotations

import math

import pytest

from timely.errors import ConfigError
from timely.types import EndReason, Trajectory
from timely_eval.leaderboard import overview_columns, report_from_runs
from timely_eval.metrics import cell_metrics, pass_at_k
from timely_eval.plan import plan_eval
from timely_eval.runner import run_suite
from timely_eval.suite import Suite, check_policies, select

SMALL = {
    "name": "unit",
    "tasks": [{"id": "math/arithmetic-v1", "difficulty": 1}],
    "policies": [{"spec": "scripted:oracle", "label": "oracle"}],
    "episodes": 3,
    "latencies": ["constant:0.2"],
    "budgets": {"seconds": [30]},
}


def small_suite(**update) -> Suite:
    return Suite.model_validate({**SMALL, **update})


def plan(suite):
    return plan_eval(suite, default_budget=lambda t, s: 60.0)[0]


def test_tasks_outside_the_suite_are_taken_from_the_registry():
    suite = small_suite()
    picked = select(suite, tasks=["math/arithmetic", "math/multistep", "ml/dir-v1"])
    # The suite's own entry keeps its settings; an unversioned id names the versioned task;
    # an exact id is taken even when the task needs options (-T gives them).
    assert [(t.id, t.difficulty) for t in picked.tasks] == [
        ("math/arithmetic-v1", 1),
        ("math/multistep-v1", None),
        ("ml/dir-v1", None),
    ]
    games = select(suite, tasks=["games"])
    ids = [t.id for t in games.tasks]
    assert "games/treasure-v1" in ids  # a whole family ...
    assert (
        "games/jericho-v1" not in ids and "games/textworld-v1" not in ids
    )  # ... that needs no files
    assert all(i.endswith("-v1") for i in ids)  # no aliases twice
    with pytest.raises(ConfigError, match=r"no registered task\. Did you mean: math/arithmetic"):
        select(suite, tasks=["math/arithmetc"])


def test_task_options_reach_every_task_and_typos_fail_now():
    suite = small_suite(tasks=["math/arithmetic-v1", "math/chain-v1"])
    picked = select(suite, task_options={"difficulty": 3})
    assert [t.difficulty for t in picked.tasks] == [3, 3]
    with pytest.raises(ConfigError, match="unexpected keyword argument 'colour'"):
        select(suite, task_options={"colour": "red"})
    with pytest.raises(ConfigError, match="invalid selection"):
        select(suite, task_options={"difficulty": 0})


def test_limit_caps_seeds_per_cell_and_epochs_add_samples_with_stable_keys():
    base = plan(small_suite())
    limited = plan(small_suite(limit=2))
    assert [i.seed for i in limited] == [0, 1] and len(base) == 3
    epochs = plan(small_suite(epochs=3))
    assert len(epochs) == 9 and len({i.key for i in epochs}) == 9
    assert sorted((i.seed, i.sample) for i in epochs) == [
        (s, k) for s in range(3) for k in range(3)
    ]
    # Sample 0 keeps the key a run without epochs has: --epochs extends a finished run.
    assert {i.key for i in epochs if i.sample == 0} == {i.key for i in base}
    assert plan(small_suite(limit=10)) == base  # a limit above the episodes changes nothing


def traj(seed: int, score: float, *, sample: int = 0, on_time: bool = True) -> Trajectory:
    return Trajectory(
        task_id="math/arithmetic-v1",
        seed=seed,
        split="test",
        policy="p",
        clock="virtual",
        budget_s=30,
        sample=sample,
        score=score,
        compliant=on_time,
        end_reason=EndReason.ANSWERED,
        latency="constant:0.2",
        messages=[],
        metadata={"budget_label": "30s", "difficulty": 1},
    )


def test_pass_at_k_is_the_unbiased_estimator_over_instances():
    # Instance 0: 1 of 3 samples right; instance 1: none; instance 2: all three.
    trajs = [traj(0, float(k == 0), sample=k) for k in range(3)]
    trajs += [traj(1, 0.0, sample=k) for k in range(3)]
    trajs += [traj(2, 1.0, sample=k) for k in range(3)]
    assert pass_at_k(trajs) == (3, pytest.approx((1 + 0 + 1) / 3))
    # Four samples, two right: pass@4 is 1; beside an instance of two, k=2: 1 - C(2,2)/C(4,2).
    four = [traj(0, float(k < 2), sample=k) for k in range(4)]
    assert pass_at_k(four) == (4, 1.0)
    assert pass_at_k([*four, traj(1, 1.0), traj(1, 0.0, sample=1)])[1] == pytest.approx(
        ((1 - math.comb(2, 2) / math.comb(4, 2)) + 1.0) / 2  # 1 of 2 right is 1 at k=2
    )
    # A late right answer counts as wrong; partial scores and single samples have no pass@k.
    assert pass_at_k([traj(0, 1.0, on_time=False), traj(0, 0.0, sample=1)]) == (2, 0.0)
    assert pass_at_k([traj(0, 0.5), traj(0, 1.0, sample=1)]) == (2, None)
    assert pass_at_k([traj(0, 1.0), traj(1, 1.0)]) == (1, None)
    cell = cell_metrics(trajs)
    assert cell["epochs"] == 3 and cell["pass_at_k"] == pytest.approx(2 / 3)


async def test_an_epochs_run_reports_mean_and_pass_at_k(tmp_path):
    suite = small_suite(policies=["scripted:oracle"], episodes=2, epochs=2)
    report = await run_suite(suite, tmp_path / "run")
    assert report.counts["eval"].done == 4
    (cell,) = report.results["cells"]
    assert cell["n"] == 4 and cell["epochs"] == 2 and cell["pass_at_k"] == cell["score"] == 1.0
    header, rows = overview_columns(report_from_runs([tmp_path / "run"])["families"][0])
    assert "Pass@k" in header and rows[0][header.index("Pass@k")] == "1.00 (k=2)"
    # Without epochs the column stays out of the way.
    await run_suite(small_suite(), tmp_path / "plain")
    header, _ = overview_columns(report_from_runs([tmp_path / "plain"])["families"][0])
    assert "Pass@k" not in header


async def test_a_mistyped_policy_fails_before_any_episode(tmp_path):
    suite = small_suite(policies=["scripted:oracle", {"spec": "scripted:oracel", "label": "x"}])
    with pytest.raises(ConfigError, match=r"policy x: .*Did you mean scripted:oracle\?"):
        check_policies(suite)
    with pytest.raises(ConfigError, match="Did you mean scripted:oracle"):
        await run_suite(suite, tmp_path / "run")
    assert not (tmp_path / "run" / "trajectories.jsonl").exists()
    assert not (tmp_path / "run" / "errors.jsonl").exists()
    bad_option = small_suite(policies=[{"spec": "scripted:oracle", "options": {"safty": 2}}])
    with pytest.raises(ConfigError, match="unknown option"):
        check_policies(bad_option)
