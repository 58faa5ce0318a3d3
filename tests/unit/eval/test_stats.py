"""Confidence intervals (timely_eval.stats) and the cell metrics that carry them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from timely.types import EndReason, Message, Trajectory
from timely_eval.metrics import cell_metrics, mean_ci
from timely_eval.stats import p95_ci, paired_delta, rate_ci, score_ci, t_ci


def test_wilson_matches_the_textbook_values():
    ci = rate_ci(3, 10)  # the Wilson 95% bounds of 3/10
    assert ci.method == "wilson"
    assert ci.lo == pytest.approx(0.1078, abs=1e-4) and ci.hi == pytest.approx(0.6032, abs=1e-4)
    zero, full = rate_ci(0, 5), rate_ci(5, 5)
    assert zero.lo == 0.0 and 0.4 < zero.hi < 0.5  # never a zero-width interval at 0 %
    assert full.hi == 1.0 and 0.5 < full.lo < 0.6
    assert rate_ci(0, 0) == type(ci)(0.0, 1.0, "none")


def test_a_rate_needs_whole_successes_within_n():
    with pytest.raises(ValueError, match="whole successes"):
        rate_ci(2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole successes"):
        rate_ci(11, 10)


def test_t_interval_uses_the_t_quantile_and_clips_scores():
    x = [0.2, 0.4, 0.5, 0.6, 0.8]
    ci = t_ci(x)
    half = 2.776 * np.std(x, ddof=1) / math.sqrt(5)  # t(0.975, df=4) = 2.776
    assert ci.method == "t"
    assert ci.lo == pytest.approx(0.5 - half, abs=1e-3) and ci.hi == pytest.approx(
        0.5 + half, abs=1e-3
    )
    clipped = score_ci([0.0, 0.1, 0.9])
    assert clipped.lo == 0.0 and clipped.method == "t"


def test_scores_of_zero_or_one_are_a_rate():
    assert score_ci([1, 0, 1, 1]) == rate_ci(3, 4)


def test_what_one_observation_or_no_spread_gives():
    assert score_ci([0.5]) == type(score_ci([0.5]))(0.0, 1.0, "none")
    assert t_ci([3.0]).lo is None  # unbounded: nothing honest to say
    same = t_ci([0.5, 0.5, 0.5])
    assert (same.lo, same.hi, same.method) == (0.5, 0.5, "constant")


def test_p95_bootstrap_is_deterministic_and_brackets_the_estimate():
    x = np.random.default_rng(1).lognormal(0.0, 0.6, size=200)
    a, b = p95_ci(x), p95_ci(x.copy())
    assert a == b and a.method == "bootstrap"
    assert a.lo < np.percentile(x, 95) < a.hi
    assert p95_ci([2.0]).lo is None
    assert p95_ci([2.0, 2.0]).method == "constant"


def test_paired_delta_is_a_paired_t_test():
    from scipy import stats

    a = [0.1, 0.4, 0.5, 0.3, 0.9, 0.2]
    b = [0.3, 0.5, 0.8, 0.4, 1.0, 0.2]
    d = paired_delta(a, b, bounds=(-1, 1))
    ref = stats.ttest_rel(b, a)
    assert d.n == 6 and d.delta == pytest.approx(np.mean(b) - np.mean(a))
    assert d.p_value == pytest.approx(ref.pvalue) and d.method == "paired-t"
    assert d.lo > 0 and d.significant  # every pair improved or tied
    unchanged = paired_delta([1, 0, 1], [1, 0, 1])
    assert (unchanged.delta, unchanged.lo, unchanged.hi, unchanged.method) == (0, 0, 0, "constant")
    assert not unchanged.significant
    one = paired_delta([0.0], [1.0], bounds=(-1, 1))
    assert (one.lo, one.hi, one.method) == (-1, 1, "none")


def test_paired_delta_refuses_unpaired_input():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_delta([1, 0], [1])
    with pytest.raises(ValueError, match="at least one pair"):
        paired_delta([], [])


def _traj(score: float, compliant: bool, elapsed: float) -> Trajectory:
    return Trajectory(
        task_id="math/arithmetic-v1",
        seed=0,
        clock="virtual",
        budget_s=10.0,
        messages=[Message(role="user", content="q")],
        score=score,
        compliant=compliant,
        elapsed_s=elapsed,
        end_reason=EndReason.ANSWERED,
    )


def test_cell_metrics_carry_each_interval_and_its_method():
    trajs = [_traj(1.0, True, 2.0), _traj(1.0, False, 12.0), _traj(0.0, True, 3.0)]
    m = cell_metrics(trajs)
    assert m["score"] == pytest.approx(1 / 3) and m["score_ci"] == "wilson"
    assert (m["score_lo"], m["score_hi"]) == (rate_ci(1, 3).lo, rate_ci(1, 3).hi)
    assert (m["compliance_lo"], m["compliance_hi"]) == (rate_ci(2, 3).lo, rate_ci(2, 3).hi)
    assert m["mean_elapsed_lo"] >= 0 and m["mean_elapsed_hi"] > m["mean_elapsed_s"]
    assert m["p95_elapsed_lo"] <= m["p95_elapsed_s"] <= m["p95_elapsed_hi"]
    single = cell_metrics(trajs[:1])
    assert single["mean_elapsed_lo"] is None and single["p95_elapsed_hi"] is None


def test_mean_ci_keeps_its_contract():
    mean, lo, hi = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and 0 <= lo < mean < hi <= 1
    assert math.isnan(mean_ci([])[0]) and mean_ci([])[1:] == (0.0, 1.0)
