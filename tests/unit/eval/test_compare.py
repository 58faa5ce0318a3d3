"""`timely compare` (timely_eval.compare): pairing, per-cell deltas, verdicts, files, errors."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from timely.errors import ConfigError
from timely.runrecord import append_trajectories
from timely.types import EndReason, Message, Trajectory
from timely_eval.compare import compare_runs, write_compare


def _traj(
    seed,
    score,
    *,
    label="oracle",
    task="math/arithmetic-v1",
    latency="constant:0.2",
    budget="30s",
    elapsed=1.0,
    compliant=True,
    clock="virtual",
    sample=0,
) -> Trajectory:
    return Trajectory(
        task_id=task,
        seed=seed,
        sample=sample,
        policy=f"scripted:{label}",
        clock=clock,
        budget_s=float(budget.removesuffix("s")),
        latency=latency,
        messages=[Message(role="user", content="q")],
        score=score,
        compliant=compliant,
        elapsed_s=elapsed,
        end_reason=EndReason.ANSWERED,
        metadata={
            "label": label,
            "budget_label": budget,
            "key": f"{label}-{task}-{seed}-{latency}-{budget}",
        },
    )


def _run(tmp_path, name, trajs):
    append_trajectories(tmp_path / name / "trajectories.jsonl", trajs)
    return tmp_path / name


def test_cells_pair_the_same_episodes_and_give_a_paired_t_interval(tmp_path):
    a_scores = [0.2, 0.5, 0.4, 0.9, 0.1]
    b_scores = [0.4, 0.6, 0.7, 1.0, 0.3]
    a = _run(tmp_path, "a", [_traj(s, x) for s, x in enumerate(a_scores)] + [_traj(9, 1.0)])
    b = _run(tmp_path, "b", [_traj(s, x) for s, x in enumerate(b_scores)] + [_traj(7, 0.0)])
    report = compare_runs(a, b)
    [cell] = report["cells"]
    assert (cell["policy"], cell["task"], cell["latency"], cell["budget"]) == (
        "oracle", "math/arithmetic-v1", "constant:0.2", "30s",
    )  # fmt: skip
    ref = stats.ttest_rel(b_scores, a_scores)
    assert cell["n"] == 5 and cell["delta"] == pytest.approx(0.18)
    assert cell["p_value"] == pytest.approx(ref.pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (cell["lo"], cell["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert cell["verdict"] == "better"  # every pair rose: the interval excludes 0
    assert report["unmatched"] == {"a_only": 1, "b_only": 1, "duplicates": 0}
    assert report["overall"][0]["n"] == 5


def test_a_late_answer_counts_zero_and_times_are_paired_too(tmp_path):
    a = _run(tmp_path, "a", [_traj(s, 1.0, elapsed=10.0 + s) for s in range(4)])
    b = _run(tmp_path, "b", [_traj(s, 1.0, elapsed=5.0 + s, compliant=s > 0) for s in range(4)])
    [row] = compare_runs(a, b)["overall"]
    assert row["score_b"] == 0.75 and row["compliance_delta"] == -0.25
    assert row["elapsed_delta"] == -5.0 and row["elapsed_lo"] == row["elapsed_hi"] == -5.0


def test_verdicts_say_when_there_is_no_interval(tmp_path):
    same = [_traj(s, 1.0) for s in range(3)]
    assert (
        compare_runs(_run(tmp_path, "a", same), _run(tmp_path, "b", same))["cells"][0]["verdict"]
        == "same"
    )
    up = _run(tmp_path, "up", [_traj(s, 1.0) for s in range(3)])
    down = _run(tmp_path, "down", [_traj(s, 0.0) for s in range(3)])
    assert compare_runs(up, down)["cells"][0]["verdict"] == "worse (every pair)"
    one = compare_runs(_run(tmp_path, "x", [_traj(0, 1.0)]), _run(tmp_path, "y", [_traj(0, 0.5)]))
    assert one["cells"][0]["verdict"] == "one pair" and one["cells"][0]["lo"] == -1
    noisy = compare_runs(
        _run(tmp_path, "n1", [_traj(s, x) for s, x in enumerate([0.2, 0.8, 0.5])]),
        _run(tmp_path, "n2", [_traj(s, x) for s, x in enumerate([0.8, 0.2, 0.6])]),
    )
    assert noisy["cells"][0]["verdict"] == "no clear change"


def test_cells_split_by_policy_latency_and_budget(tmp_path):
    def grid(score):
        return [
            _traj(s, score, label=p, latency=lat, budget=bud)
            for p in ("oracle", "budget-aware")
            for lat in ("constant:0.2", "constant:3.0")
            for bud in ("5s", "30s")
            for s in range(2)
        ]

    report = compare_runs(_run(tmp_path, "a", grid(1.0)), _run(tmp_path, "b", grid(0.0)))
    assert len(report["cells"]) == 8 and len(report["overall"]) == 2
    assert [c["budget"] for c in report["cells"][:2]] == ["5s", "30s"]  # budgets in order


def test_two_single_policy_runs_compare_their_policies(tmp_path):
    a = _run(tmp_path, "a", [_traj(s, 1.0, label="small") for s in range(3)])
    b = _run(tmp_path, "b", [_traj(s, 0.0, label="large") for s in range(3)])
    assert compare_runs(a, b)["overall"][0]["policy"] == "small → large"


def test_runs_that_share_nothing_get_a_clear_error(tmp_path):
    a = _run(tmp_path, "a", [_traj(0, 1.0, label="p"), _traj(0, 1.0, label="q")])
    b = _run(tmp_path, "b", [_traj(0, 1.0, label="r")])
    with pytest.raises(ConfigError, match="share no policy: A has p, q; B has r"):
        compare_runs(a, b)
    c = _run(tmp_path, "c", [_traj(0, 1.0, task="games/treasure-v1", budget="60s")])
    with pytest.raises(ConfigError, match="share no episode.*task: A math/arithmetic-v1; B games"):
        compare_runs(_run(tmp_path, "d", [_traj(0, 1.0)]), c)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "trajectories.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no episodes to compare"):
        compare_runs(tmp_path / "empty", c)
    with pytest.raises(ConfigError, match="no trajectories.jsonl"):
        compare_runs(tmp_path / "missing", c)


def test_a_clock_change_is_noted(tmp_path):
    a = _run(tmp_path, "a", [_traj(s, 1.0) for s in range(2)])
    b = _run(tmp_path, "b", [_traj(s, 1.0, clock="wall") for s in range(2)])
    assert "virtual clock and B on wall" in compare_runs(a, b)["notes"][0]


def test_files_hold_the_tables(tmp_path):
    a = _run(tmp_path, "a", [_traj(s, x) for s, x in enumerate([0.0, 0.5, 0.2])])
    b = _run(tmp_path, "b", [_traj(s, x) for s, x in enumerate([0.9, 1.0, 0.9])])
    files = write_compare(a, b, tmp_path / "report")
    report = json.loads(files["compare.json"].read_text())
    assert report["cells"][0]["verdict"] == "better"
    md = files["compare.md"].read_text()
    assert "| oracle | math/arithmetic-v1 | 0.2s | 30s | 3 |" in md and "## Per cell" in md
    html = files["compare.html"].read_text()
    assert '<td class="better">better</td>' in html and "<script>" in html
