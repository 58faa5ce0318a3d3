"""The anytime view (AUC over budget multipliers) and the Figure-3 view, on hand-built rows.

Every expected number here is worked out by hand from the rows, so the tests pin the
definitions documented in timely_eval/anytime.py and docs/timely-eval.md.
"""

from __future__ import annotations

import pytest

from timely.types import EndReason, Message, Step, ToolCall, Trajectory
from timely_eval.anytime import anytime_rows, normalized_auc, rank_correlation
from timely_eval.leaderboard import Run, render_html, render_markdown, report_from_runs
from timely_eval.plan import budget_label, budget_sort_key, parse_budget


def row(
    budget: str,
    score: float,
    *,
    policy: str = "p",
    task: str = "math/chain-v1",
    seed: int = 0,
    latency: str = "constant:1.0",
    calls: int = 1,
    tokens: int = 10,
    compliant: bool = True,
) -> Trajectory:
    """One scripted episode: ``calls`` tool calls, then an answer; ``tokens`` generated."""
    steps = [
        Step(
            index=i,
            clock="virtual",
            started_at=float(i),
            ended_at=float(i) + 0.5,
            gen_s=0.5,
            completion_tokens=tokens if i == 0 else 0,
            tool_calls=[ToolCall(id=f"c{i}", name="calculator")] if i < calls else [],
        )
        for i in range(calls + 1)
    ]
    return Trajectory(
        task_id=task,
        seed=seed,
        clock="virtual",
        latency=latency,
        budget_s=10.0,
        messages=[Message(role="user", content="q")],
        steps=steps,
        score=score,
        compliant=compliant,
        elapsed_s=float(calls + 1),
        end_reason=EndReason.ANSWERED,
        metadata={
            "label": policy,
            "budget_label": budget,
            "key": f"{policy}-{task}-{seed}-{budget}",
        },
    )


def test_auc_is_the_normalised_trapezoid():
    # (0.5, 0) -> (1, 0.5) -> (2, 1): areas 0.125 + 0.75 over a range of 1.5.
    assert normalized_auc([(0.5, 0.0), (1.0, 0.5), (2.0, 1.0)]) == pytest.approx(0.875 / 1.5)
    assert normalized_auc([(1.0, 0.3), (3.0, 0.3)]) == pytest.approx(0.3)  # flat: its height
    assert normalized_auc([(2.0, 1.0), (1.0, 0.0)]) == pytest.approx(0.5)  # order-free
    assert normalized_auc([(1.0, 0.2), (1.0, 0.4), (2.0, 0.3)]) == pytest.approx(0.3)  # mean at x
    assert normalized_auc([(1.0, 0.7)]) is None  # one budget: no AUC, not a zero
    assert normalized_auc([]) is None


def test_budget_labels_carry_the_protocol():
    assert budget_label("x", 2.0) == "x2" and budget_label("x", 0.5, "oracle") == "x0.5@oracle"
    assert parse_budget("x2") == ("policy", 2.0)
    assert parse_budget("x0.75@oracle") == ("oracle", 0.75)
    assert parse_budget("30s") is None and parse_budget("default") is None
    assert parse_budget("xyz") is None
    ordered = ["default", "10s", "x0.5", "x2", "x0.5@oracle", "x2@oracle", "calibration"]
    assert sorted(reversed(ordered), key=budget_sort_key) == ordered


def test_anytime_rows_pool_each_policy_and_keep_protocols_apart():
    trajs = [
        # policy a, two instances (seeds), each at x0.5, x1, x2
        row("x0.5", 0.0, policy="a", seed=0),
        row("x1", 0.5, policy="a", seed=0),
        row("x2", 1.0, policy="a", seed=0),
        row("x0.5", 0.0, policy="a", seed=1),
        row("x1", 1.0, policy="a", seed=1),
        row("x2", 1.0, policy="a", seed=1),
        # policy a under the shared reference: a different curve, never pooled with the above
        row("x1@oracle", 0.0, policy="a"),
        row("x2@oracle", 1.0, policy="a"),
        # a late answer scores 0 on time
        row("x1", 1.0, policy="b", compliant=False),
        row("x2", 1.0, policy="b"),
        row("30s", 1.0, policy="b"),  # absolute budgets are off the multiplier axis
    ]
    rows = {(r["policy"], r["protocol"]): r for r in anytime_rows(trajs)}
    assert set(rows) == {("a", "policy"), ("a", "oracle"), ("b", "policy")}
    a = rows[("a", "policy")]
    assert a["multipliers"] == [0.5, 1.0, 2.0]
    assert [p["score"] for p in a["curve"]] == [0.0, 0.75, 1.0]
    # (0.5 * (0 + 0.75) / 2 + 1 * (0.75 + 1) / 2) / 1.5
    assert a["auc"] == pytest.approx((0.1875 + 0.875) / 1.5)
    # instance AUCs: seed 0 (0.125 + 0.75) / 1.5, seed 1 (0.25 + 1) / 1.5; their mean is the AUC
    assert a["instances"] == 2 and a["auc_lo"] <= a["auc"] <= a["auc_hi"]
    assert rows[("a", "oracle")]["auc"] == pytest.approx(0.5)
    assert rows[("b", "policy")]["auc"] == pytest.approx(0.5)  # 0 at x1 (late), 1 at x2


def test_one_budget_gives_no_auc():
    (only,) = anytime_rows([row("x1", 1.0), row("x1", 0.0, seed=1)])
    assert only["auc"] is None and only["auc_lo"] is None and len(only["curve"]) == 1


def test_rank_correlation_of_effort_with_the_budget():
    assert rank_correlation([0.5, 1, 2], [1, 2, 3]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert rank_correlation([0.5, 1, 2], [3, 2, 1])[0] == pytest.approx(-1.0)
    assert rank_correlation([0.5, 1, 2, 3], [1, 3, 2, 4])[0] == pytest.approx(0.8)
    assert rank_correlation([0.5, 1, 2], [2, 2, 2]) == (None, None)  # constant: undefined
    assert rank_correlation([1], [1]) == (None, None)

    trajs = [
        row(b, 1.0, calls=c, tokens=t, seed=s)
        for s in range(2)
        for b, c, t in (("x0.5", 1, 40), ("x1", 2, 20), ("x2", 4, 30))
    ]
    (r,) = anytime_rows(trajs)
    assert [p["tool_calls"] for p in r["curve"]] == [1.0, 2.0, 4.0]
    assert r["effort"]["tool_calls"]["rho"] == pytest.approx(1.0)
    assert r["effort"]["tool_calls"]["rho_episodes"] == pytest.approx(1.0)
    assert r["effort"]["gen_tokens"]["rho"] == pytest.approx(-0.5)  # 40, 20, 30


def _report(trajs: list[Trajectory]) -> dict:
    from pathlib import Path

    run = Run(name="r", path=Path("r"), manifest={"suite": "unit"}, trajectories=trajs)
    return report_from_runs([run])


def test_leaderboard_shows_the_auc_column_and_figure3_table_for_a_sweep():
    trajs = [
        row(b, s, policy=p, calls=c, seed=seed)
        for seed in range(2)
        for p, scores in (("good", (0.5, 1.0, 1.0)), ("blind", (0.0, 0.0, 1.0)))
        for b, s, c in zip(
            ("x0.5@oracle", "x1@oracle", "x2@oracle"), scores, (1, 2, 3), strict=True
        )
    ]
    report = _report(trajs)
    fam = report["families"][0]
    assert fam["auc_protocols"] == ["oracle"]
    good = next(r for r in fam["overview"] if r["policy"] == "good")
    # (0.5 * 0.75 + 1 * 1) / 1.5
    assert good["auc"]["oracle"]["auc"] == pytest.approx(1.375 / 1.5)
    md = render_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| Policy | Score"))
    assert "| AUC@oracle |" in header
    assert "### Anytime view: math" in md and "### Figure-3 view: math" in md
    assert "| good | x oracle time | 0.92" in md
    assert "1.0 / 2.0 / 3.0 | +1.00 | +1.00" in md  # tool calls rise with the budget
    assert "shared reference" in md or "one shared reference" in md
    assert report["runs"][0]["budget_protocols"] == ["oracle"]
    assert "budgets: x oracle time" in md
    html = render_html(report, {})
    assert "budgets: x oracle time" in html
    assert "<th>AUC@oracle</th>" in html and "Figure-3 view" in html and "Anytime view" in html


def test_leaderboard_of_a_one_budget_sweep_has_no_auc_column():
    report = _report([row("x1", 1.0, policy="a"), row("x1", 0.0, policy="b"), row("30s", 1.0)])
    fam = report["families"][0]
    assert fam["auc_protocols"] == []
    md = render_markdown(report)
    assert "AUC" not in md and "Anytime view" not in md and "Figure-3" not in md
    html = render_html(report, {})
    assert "<th>AUC" not in html and "Figure-3 view" not in html


def test_per_policy_relative_protocol_has_its_own_column():
    trajs = [
        row(b, s) for b, s in (("x1", 0.0), ("x2", 1.0), ("x1@oracle", 1.0), ("x2@oracle", 1.0))
    ]
    fam = _report(trajs)["families"][0]
    assert fam["auc_protocols"] == ["policy", "oracle"]
    header = next(
        line
        for line in render_markdown(_report(trajs)).splitlines()
        if line.startswith("| Policy | Score")
    )
    assert "| AUC | AUC@oracle |" in header


def test_compare_pairs_the_auc_by_instance(tmp_path):
    from timely.runrecord import append_trajectories
    from timely_eval.compare import compare_runs, render_html, render_markdown

    def run(name: str, scores: tuple[float, float]) -> str:
        trajs = [
            row(b, s + (0.125 * seed if s < 1 else 0.0), seed=seed)
            for seed in range(3)
            for b, s in zip(("x1@oracle", "x2@oracle"), scores, strict=True)
        ]
        (tmp_path / name).mkdir()
        append_trajectories(tmp_path / name / "trajectories.jsonl", trajs)
        return str(tmp_path / name)

    report = compare_runs(run("a", (0.0, 1.0)), run("b", (0.5, 1.0)))
    (auc,) = report["anytime"]
    assert (auc["family"], auc["protocol"], auc["n"]) == ("math", "oracle", 3)
    # instance AUCs: A (s / 8 + 1) / 2, B (0.5 + s / 8 + 1) / 2: every pair moves by +0.25
    assert auc["delta"] == pytest.approx(0.25) and auc["verdict"] == "better (every pair)"
    assert "## Anytime AUC" in render_markdown(report)
    assert "Anytime AUC (paired by instance)" in render_html(report)
