"""Both relative-budget protocols: per-policy calibrated time and one shared oracle reference.

Scripted policies on a virtual clock, so every number is deterministic: the oracle's time on an
instance is the reference, and ``answer-now`` (which answers at once) shows how different the
per-policy protocol's seconds are from the shared one.
"""

from __future__ import annotations

import pytest

from timely.runrecord import CALIBRATION, TRAJECTORIES, EpisodeLog
from timely_eval.leaderboard import report_from_runs
from timely_eval.plan import fingerprint, plan_calibration
from timely_eval.runner import run_suite
from timely_eval.suite import REFERENCE_LABEL, Suite

BASE = {
    "name": "protocols",
    "tasks": ["math/arithmetic-v1"],
    "policies": [
        {"spec": "scripted:oracle", "label": "oracle"},
        {"spec": "scripted:answer-now", "label": "answer-now"},
    ],
    "episodes": 2,
    "latencies": ["constant:0.2", "constant:2.0"],
    "budgets": {"multipliers": {"math": [0.5, 2.0]}},
}


def suite(reference: str, **budgets) -> Suite:
    return Suite.model_validate(
        {**BASE, "budgets": {**BASE["budgets"], "reference": reference, **budgets}}
    )


def test_the_shared_reference_is_calibrated_once_per_instance_and_latency():
    items = plan_calibration(suite("oracle"))
    assert {i.policy for i in items} == {REFERENCE_LABEL}
    assert len(items) == 2 * 2  # seeds x latencies, not x policies
    per_policy = plan_calibration(suite("policy"))
    assert {i.policy for i in per_policy} == {"oracle", "answer-now"} and len(per_policy) == 8
    assert len(plan_calibration(suite("both"))) == 12


def test_the_protocol_is_in_the_labels_not_the_fingerprint():
    # The label (and so each episode key) names the protocol; the fingerprint stays what it was,
    # so a run can add the other protocol and resume.
    assert fingerprint(suite("policy")) == fingerprint(suite("oracle"))
    assert fingerprint(suite("policy")) != fingerprint(
        suite("oracle", reference_policy="scripted:budget-aware")
    )


def test_the_reference_label_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        Suite.model_validate(
            {**BASE, "policies": [{"spec": "scripted:oracle", "label": "reference"}]}
        )


async def test_both_protocols_give_the_expected_seconds(tmp_path):
    s = suite("both")
    report = await run_suite(s, tmp_path / "run")
    assert report.counts["calibration"].done == 12 and not report.problems
    calib = EpisodeLog(tmp_path / "run" / CALIBRATION).records.values()
    own = {(t.metadata["label"], t.seed, t.latency): t.elapsed_s for t in calib}
    trajs = list(EpisodeLog(tmp_path / "run" / TRAJECTORIES).records.values())
    assert {t.metadata["budget_label"] for t in trajs} == {"x0.5", "x2", "x0.5@oracle", "x2@oracle"}
    floor = s.calibration.min_budget_s
    for t in trajs:
        label, m = t.metadata["budget_label"], (0.5 if "0.5" in t.metadata["budget_label"] else 2.0)
        if label.endswith("@oracle"):  # the oracle's time on this instance, for every policy
            expected = max(floor, m * own[(REFERENCE_LABEL, t.seed, t.latency)])
            assert t.budget_s == pytest.approx(expected, abs=2e-6)
            assert t.budget_s >= m * own[(REFERENCE_LABEL, t.seed, t.latency)]  # rounded up
        else:  # the policy's own unconstrained time
            expected = max(floor, m * own[(t.metadata["label"], t.seed, t.latency)])
            assert t.budget_s == pytest.approx(expected, abs=2e-6)
    shared = {}
    for t in trajs:
        if t.metadata["budget_label"].endswith("@oracle"):
            shared.setdefault((t.seed, t.latency, t.metadata["budget_label"]), set()).add(
                t.budget_s
            )
    assert shared and all(len(v) == 1 for v in shared.values())  # same seconds for every row
    by = {(t.metadata["label"], t.seed, t.latency, t.metadata["budget_label"]): t for t in trajs}
    # answer-now's own time is tiny: its per-policy x2 is the floor, far below the shared x2
    assert by[("answer-now", 0, "constant:2.0", "x2")].budget_s == floor
    assert by[("answer-now", 0, "constant:2.0", "x2@oracle")].budget_s > 5 * floor
    # the oracle is on time at twice the reference and out of time at half of it
    assert by[("oracle", 0, "constant:2.0", "x2@oracle")].score == 1.0
    assert by[("oracle", 0, "constant:2.0", "x0.5@oracle")].score == 0.0

    fam = report_from_runs([tmp_path / "run"])["families"][0]
    assert fam["auc_protocols"] == ["policy", "oracle"]
    assert {(r["policy"], r["protocol"]) for r in fam["anytime"]} == {
        (p, q) for p in ("oracle", "answer-now") for q in ("policy", "oracle")
    }
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "| AUC | AUC@oracle |" in summary and "x oracle time" in summary
