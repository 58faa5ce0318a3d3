"""The training results page (issue 20's protocol) on hand-built scripted rows: the anytime
AUC, the rank correlation, both budget protocols kept apart, on-time with and without the slack,
paired differences and the Targets table; and the eval stage's suite and rows."""

from __future__ import annotations

import pytest

from timely.runrecord import append_trajectories
from timely.train.config import EvalStageConfig
from timely.types import EndReason, Message, Step, ToolCall, Trajectory
from timely_eval import training_report as report
from timely_eval.suite import Suite
from timely_eval.training import eval_policies, eval_suite, write_results

MULTIPLIERS = (0.5, 0.75, 1.0, 2.0)
TASKS = {"math": ("math/arithmetic-v1", "math/chain-v1"), "games": ("games/treasure-v1",)}
LATENCIES = ("constant:0.2", "constant:2.0")


def _row(label: str, family: str, m: float) -> tuple[float, int, float]:
    """(score, tool calls, elapsed / budget) of a made-up row at multiplier ``m``."""
    if label == "rl":  # does more with more time; at 1x on math it is late within the slack
        return min(1.0, m), int(4 * m), 1.05 if (family == "math" and m == 1.0) else 0.9
    if label == "sft":
        return 0.5 * min(1.0, m), 3, 0.9
    fixed = {"base": 0.1, "rl-notime": 0.3, "base+tracker": 0.2, "sft+tracker": 0.4}
    return fixed[label], 4, 0.9


def _traj(label, task, family, seed, latency, m, protocol) -> Trajectory:
    score, calls, share = _row(label, family, m)
    budget_s = 10.0 * m
    steps = [
        Step(
            index=i,
            clock="virtual",
            started_at=float(i),
            ended_at=float(i + 1),
            gen_s=0.5,
            completion_tokens=20,
            tool_calls=[ToolCall(id=f"c{i}", name="calculator", arguments={})],
        )
        for i in range(calls)
    ]
    elapsed = share * budget_s
    return Trajectory(
        task_id=task,
        seed=seed,
        policy=label,
        clock="virtual",
        budget_s=budget_s,
        overrun="late",
        latency=latency,
        messages=[Message(role="user", content="q")],
        steps=steps,
        score=score,
        compliant=elapsed <= budget_s * (1.1 if family == "math" else 1.0),
        elapsed_s=elapsed,
        end_reason=EndReason.ANSWERED,
        metadata={"label": label, "budget_label": f"x{m:g}" + ("@oracle" if protocol else "")},
    )


def _trajs(labels=report.ROW_ORDER) -> list[Trajectory]:
    return [
        _traj(label, task, family, seed, latency, m, protocol)
        for protocol in (True, False)
        for label in labels
        for family, tasks in TASKS.items()
        for task in tasks
        for seed in range(4)
        for latency in LATENCIES
        for m in MULTIPLIERS
    ]


def _targets(trajs) -> dict[tuple[str, str], report.Target]:
    return {(t.target, t.protocol): t for t in report.target_checks(trajs)}


def test_the_targets_are_measured_under_both_protocols():
    targets = _targets(_trajs())
    for protocol in ("oracle", "policy"):
        auc = targets[("anytime AUC RL > SFT > base (math)", protocol)]
        # rl: points (0.5, .5) (.75, .75) (1, 1) (2, 1): area 1.375 over a range of 1.5.
        assert auc.met and auc.measured == "rl 0.917 / sft 0.458 / base 0.100"
        assert targets[("anytime AUC RL > RL-notime > base (games)", protocol)].met
        separated = targets[("paired AUC interval separates RL from SFT (games)", protocol)]
        assert separated.met and "n=8" in separated.measured  # 4 seeds x 2 latencies
        rho = targets[("RL's tool calls rise with the budget: rho >= 0.8 (math)", protocol)]
        assert rho.met and rho.measured == "rho +1.00"
        # RL-notime's calls do not move at all: no rank correlation, which counts as 0.
        gap = targets[("RL-notime's rise much less: rho at least 0.3 below RL's (games)", protocol)]
        assert gap.met and "RL-notime —" in gap.measured
        assert targets[("RL beats the budget-tracker prompt rows on AUC (math)", protocol)].met
        # Late within the 1.1 slack on math at 1x: on time with the slack, not without it.
        strict = targets[("RL on-time rate >= 95% at >= 1x, without slack", protocol)]
        assert not strict.met and strict.measured == "67% of 48"  # 16 math episodes late
        assert targets[("RL on-time rate >= 75% at 0.5x, without slack", protocol)].met


def test_targets_whose_rows_were_not_played_say_so():
    targets = _targets(_trajs(labels=("base", "rl")))
    missing = targets[("anytime AUC RL > SFT > base (math)", "oracle")]
    assert missing.met is None and missing.measured == "not measured (no sft row)"
    assert targets[("RL beats the budget-tracker prompt rows on AUC (games)", "policy")].met is None


def test_points_keep_protocols_apart_and_report_both_on_time_rates():
    groups = report.by_protocol(_trajs())
    assert list(groups) == ["oracle", "policy"]
    rows = report.point_rows(groups["oracle"], ("policy", "family", "budget"))
    rl_math_1x = next(
        r for r in rows if (r["policy"], r["family"], r["budget"]) == ("rl", "math", "x1@oracle")
    )
    assert rl_math_1x["n"] == 16 and rl_math_1x["compliance"] == 1.0 and rl_math_1x["strict"] == 0
    assert [r["policy"] for r in rows[:: len(rows) // 6]] == list(report.ROW_ORDER)
    assert all(
        "@oracle" not in r["budget"] for r in report.point_rows(groups["policy"], ("budget",))
    )


def test_paired_differences_pair_the_same_episodes():
    trajs = report.by_protocol(_trajs())["oracle"]
    d = report.paired_scores(trajs, "rl", "sft", "games")
    assert d is not None and d.n == 32  # 4 seeds x 2 latencies x 4 multipliers
    assert d.delta == pytest.approx(sum(m - 0.5 * min(1, m) for m in (0.5, 0.75, 1, 1)) / 4)
    auc = report.paired_aucs(trajs, "rl", "base", "math")
    assert auc is not None and auc.n == 16 and auc.delta == pytest.approx(0.917 - 0.1, abs=1e-3)


def test_write_results_gives_the_page_and_the_figure(tmp_path):
    append_trajectories(tmp_path / "run" / "trajectories.jsonl", _trajs())
    page = write_results(tmp_path).read_text()
    assert (
        "## Targets" in page and "| anytime AUC RL > SFT > base (math) | shared (oracle) |" in page
    )
    assert (
        "| RL on-time rate >= 95% at >= 1x, without slack | per-policy | 67% of 48 | missed |"
        in page
    )
    assert "## Budgets relative to one shared reference (x2@oracle)" in page
    assert "## Budgets relative to per-policy reference (x2)" in page
    assert "| rl | math | x1@oracle | 16 | 1.00 [0.81, 1.00] | 100% | 0% |" in page
    assert "| rl | math | 0.917 [" in page  # the anytime table
    assert "| rl − sft | games |" in page
    # 16 math and 8 game episodes a point: below the protocol's 24, and said so.
    assert "Points with fewer than 24 episodes: base games x0.5 (8)" in page
    assert (tmp_path / "figure3.png").stat().st_size > 1000


def test_the_eval_stage_plays_issue_20s_protocol():
    config = EvalStageConfig(adapters={"rl": "runs/other/rl/adapter", "rl-notime": None})
    found = {
        "base": {"spec": "hf:smollm2-135m", "precision": "bf16"},
        "sft": {"spec": "hf:smollm2-135m", "adapter": "runs/train/sft/adapter"},
        "rl-notime": {"spec": "hf:smollm2-135m", "adapter": "runs/train/rl-notime/adapter"},
    }
    rows = eval_policies(found, config)
    assert list(rows) == ["base", "sft", "rl", "base+tracker", "sft+tracker"]
    assert rows["rl"] == {**found["base"], "adapter": "runs/other/rl/adapter"}
    assert rows["sft+tracker"]["spec"] == "tracker:hf:smollm2-135m"
    assert rows["sft+tracker"]["adapter"] == "runs/train/sft/adapter"
    suite = Suite.model_validate(eval_suite(rows, config, speed="smollm2-cpu"))
    assert suite.split == "test" and suite.budgets.protocols == ["policy", "oracle"]
    assert suite.budgets.multipliers == {
        "games": [0.5, 0.75, 1.0, 2.0],
        "math": [0.5, 0.75, 1.0, 2.0],
    }
    assert suite.budgets.reference_policy == "scripted:oracle@smollm2-cpu"
    assert suite.calibration.time == "default"  # the reference is timed with the eval prompt
    assert len(suite.latencies) == 2
    per_family: dict[str, int] = {}
    for t in suite.tasks:
        n = (t.episodes or suite.episodes) * len(suite.latencies)
        per_family[t.family] = per_family.get(t.family, 0) + n
    assert per_family == {"math": 48, "games": 24}  # at least the protocol's 24 a point
    assert suite.backend == "local"


def test_eval_workers_play_on_a_private_local_ray():
    rows = {"base": {"spec": "hf:smollm2-135m"}}
    suite = Suite.model_validate(eval_suite(rows, EvalStageConfig(workers=2), speed="smollm2-cpu"))
    assert suite.backend == "ray" and suite.ray.address is None
    assert (suite.ray.num_cpus, suite.ray.workers, suite.ray.num_cpus_per_worker) == (2, 2, 1.0)
