"""Confidence intervals of Timely-Eval numbers, from scipy.stats.

Which interval goes with which number, and why (docs/timely-eval.md repeats this table):

* **Rates** (compliance, a score whose every value is 0 or 1): the Wilson score interval
  (``binomtest(k, n).proportion_ci(method="wilson")``). Unlike the normal approximation it stays
  inside [0, 1] and keeps its coverage at the 0 % and 100 % a benchmark often sees with few
  episodes.
* **Mean scores** (partial credit in [0, 1]) and **mean times**: a Student t interval on the mean
  (``scipy.stats.t``). A mean of bounded values is close to normal by a few dozen episodes, and t
  widens the interval honestly below that; scores are clipped to [0, 1].
* **Quantiles** (p95 elapsed time): a percentile bootstrap (``scipy.stats.bootstrap``), since no
  closed form fits a quantile of an arbitrary latency distribution. Its generator is seeded from
  the data, so a report recomputed from the same trajectories has the same numbers.
* **Paired differences** (``timely compare``): a paired t interval on per-episode differences
  (``scipy.stats.ttest_rel``), whose p-value is the same test's. Pairing on the same task, seed,
  latency, budget and sample removes the variance between instances, which is most of it.

An interval that cannot be computed honestly is said so: one observation gives the whole range
of a bounded number and ``None`` for an unbounded one; pairs that all differ by the same amount
give a zero-width interval with method ``"constant"`` (more seeds are needed for a real one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from timely.rng import make_rng

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# Resamples evaluated at once: bounds the bootstrap's memory on cells of thousands of episodes.
_BOOTSTRAP_BATCH = 200


@dataclass(frozen=True)
class Interval:
    """A confidence interval and the method that made it (wilson, t, bootstrap, constant, none)."""

    lo: float | None
    hi: float | None
    method: str


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _clip(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return float(lo), float(hi)
    return max(bounds[0], float(lo)), min(bounds[1], float(hi))


def rate_ci(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion ``successes / n``; (0, 1) when ``n == 0``.

    Raises:
        ValueError: successes is not a whole number in [0, n].
    """
    if n == 0:
        return Interval(0.0, 1.0, "none")
    if successes != int(successes) or not 0 <= successes <= n:
        raise ValueError(f"a rate needs whole successes in [0, {n}], got {successes}")
    ci = stats.binomtest(int(successes), n).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return Interval(float(ci.low), float(ci.high), "wilson")


def t_ci(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """Student t interval of the mean of ``values``, clipped to ``bounds`` when given.

    With fewer than two values the interval is ``bounds`` (or ``None`` without bounds): one
    observation says nothing about spread.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        lo, hi = bounds if bounds is not None else (None, None)
        return Interval(lo, hi, "none")
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0:  # scipy rejects scale 0; identical values give a zero-width interval
        return Interval(mean, mean, "constant")
    lo, hi = stats.t.interval(confidence, df=len(x) - 1, loc=mean, scale=sem)
    return Interval(*_clip(lo, hi, bounds), "t")


def score_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Interval of a mean score in [0, 1]: Wilson when every score is 0 or 1, else t."""
    x = np.asarray(values, dtype=float)
    if len(x) and _is_binary(x):
        return rate_ci(int(x.sum()), len(x), confidence)
    return t_ci(x, confidence, bounds=(0.0, 1.0))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., Any],
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (vectorised: takes ``axis``).

    The resampling generator is seeded from the values, so the same data give the same
    interval in every report. Fewer than two values give ``None``.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return Interval(None, None, "none")
    if np.all(x == x[0]):
        v = float(statistic(x, axis=-1))
        return Interval(v, v, "constant")
    res = stats.bootstrap(
        (x,),
        statistic,
        n_resamples=n_resamples,
        batch=_BOOTSTRAP_BATCH,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=make_rng("bootstrap", x.tobytes().hex()),
    )
    ci = res.confidence_interval
    return Interval(float(ci.low), float(ci.high), "bootstrap")


def _p95(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.percentile(x, 95, axis=axis)


def p95_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Bootstrap interval of the 95th percentile (of elapsed times)."""
    return bootstrap_ci(values, _p95, confidence)


@dataclass(frozen=True)
class PairedDelta:
    """``b - a`` over paired observations, with a paired t interval and its p-value."""

    n: int
    mean_a: float
    mean_b: float
    delta: float
    lo: float | None
    hi: float | None
    p_value: float | None
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (a change at the chosen confidence)."""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def paired_delta(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] | None = None,
) -> PairedDelta:
    """Paired difference ``b - a`` of matched observations (same episode in two runs).

    Args:
        a: values of run A, in pair order.
        b: values of run B, the same length.
        confidence: interval level.
        bounds: clip the interval to these (``(-1, 1)`` for score differences).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) != len(xb):
        raise ValueError(f"paired values need equal lengths, got {len(xa)} and {len(xb)}")
    if len(xa) == 0:
        raise ValueError("paired_delta needs at least one pair")
    d = xb - xa
    n, delta = len(d), float(d.mean())
    common = {"n": n, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()), "delta": delta}
    if n < 2:
        lo, hi = bounds if bounds is not None else (None, None)
        return PairedDelta(**common, lo=lo, hi=hi, p_value=None, method="none")
    if np.all(d == d[0]):  # no spread among pairs: ttest_rel is undefined
        return PairedDelta(**common, lo=delta, hi=delta, p_value=None, method="constant")
    res = stats.ttest_rel(xb, xa)
    ci = res.confidence_interval(confidence_level=confidence)
    lo, hi = _clip(ci.low, ci.high, bounds)
    return PairedDelta(**common, lo=lo, hi=hi, p_value=float(res.pvalue), method="paired-t")
