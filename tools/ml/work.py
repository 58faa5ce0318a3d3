"""The ML tools' work model: what a fit or a prediction costs in virtual seconds.

On a virtual clock a tool call costs its injected latency plus the work its tool reports
(:class:`timely_tools.base.WorkMeter`); the real fit time is not charged there, because it varies
from run to run. So that a 500-tree forest still costs more than a linear model, ``train_model``,
``evaluate_model`` and ``submit_model`` report the seconds this model assigns to each fit and
prediction. It reads only the call's inputs (estimator, hyperparameters, rows, features, classes),
never a measurement or the fitted model, so the same call costs the same seconds on every run and
every machine.

Each estimator costs ``base + per_model * M + rate * units`` per fit and per prediction, where M
is the sub-models it builds (T trees for forests, T x K stages for boosting, else 1) and
``units`` counts the operations its algorithm scales with (n = rows, d = features used, K =
classes when more than two, else 1, T = trees or iterations, depth = the depth the rows allow):

==========================  ================================  ==============================
estimator                   fit units                         predict units (m rows)
==========================  ================================  ==============================
linear, ridge, lasso        n d                               m d
logistic_regression         n d K                             m d K
svm                         n^2 (d + 16) (1 + K/4)            n m (d + 16)
knn                         n d                               m d log2(n)
decision_tree               n d depth                         m depth
random_forest, extra_trees  T n d_split depth                 T m depth
gradient_boosting           T K n subsample d depth           T K m depth
hist_gradient_boosting      T K n d                           T K m log2(leaves)
==========================  ================================  ==============================

``d_split`` is the features a split looks at (``max_features``: sqrt(d) for classifier forests,
d for regressors, as scikit-learn's defaults). ``depth`` is ``max_depth`` when set, else
``ceil(log2(n / min_samples_leaf))``; gradient boosting's default depth is 3. Logarithms and
roots are taken in integers, so the seconds are the same floating-point number everywhere.

The constants in :data:`COSTS` were fitted to single-threaded fit and predict times of
scikit-learn 1.9 on the project machine (2 vCPUs, x86-64, Python 3.11) over 100-1,600 rows, 8-64
features and 2 or 10 classes; ``python bench/work_model.py --ml-only`` measures them again and
prints model / measured ratios. docs/tool-server.md ("Work model") has the figures.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Cost(NamedTuple):
    """Seconds of one fit and of one prediction: ``base + per_model * M + rate * units`` each,
    where M is the trees, or boosting stages times K, the estimator builds (1 for the others)."""

    fit_base: float
    fit_per_model: float
    fit_rate: float
    predict_base: float
    predict_per_model: float
    predict_rate: float


# Fitted to the times bench/work_model.py measures (module docstring); seconds, seconds per unit.
COSTS: dict[str, Cost] = {
    "logistic_regression": Cost(0.01, 0, 7.9e-08, 0.0012, 0, 1.4e-09),
    "linear_regression": Cost(0.0059, 0, 5.7e-08, 0.0011, 0, 2.8e-09),
    "ridge": Cost(0.0049, 0, 2.5e-08, 0.00077, 0, 4.2e-09),
    "lasso": Cost(0.0036, 0, 3.2e-08, 0.0008, 0, 1.4e-09),
    "svm": Cost(0.005, 0, 6.1e-10, 0.0012, 0, 9.5e-10),
    "knn": Cost(0.0032, 0, 1.9e-08, 0.0016, 0, 2.2e-08),
    "decision_tree": Cost(0.002, 0, 1.1e-07, 0.00046, 0, 3.2e-08),
    "random_forest": Cost(0.0038, 0.0023, 6.2e-08, 0.0013, 0.00013, 1.3e-08),
    "extra_trees": Cost(0.0064, 0.0016, 2.5e-08, 0.00037, 0.00017, 2.7e-08),
    "gradient_boosting": Cost(0, 0.00081, 1.2e-07, 0.00061, 2.3e-06, 8.9e-09),
    "hist_gradient_boosting": Cost(0.014, 0.00058, 1.4e-07, 0.0003, 1.6e-05, 2.3e-08),
}

_LINEAR = ("linear_regression", "ridge", "lasso")
_FORESTS = ("random_forest", "extra_trees")


def _k(kind: str, classes: int) -> int:
    """Models fitted per class: one for regression and binary tasks, K for K > 2 classes."""
    return classes if kind == "classification" and classes > 2 else 1


def _log2_up(x: int) -> int:
    """ceil(log2(x)) for x >= 1, in integers: no libm call, so identical on every machine."""
    return (max(1, x) - 1).bit_length()


def _depth(rows: int, max_depth: Any, min_leaf: Any) -> int:
    """``max_depth`` if set, else the depth at which leaves hold ``min_samples_leaf`` rows."""
    leaf = max(1, int(min_leaf or 1))
    grown = max(1, _log2_up(-(-rows // leaf)))
    return min(grown, int(max_depth)) if max_depth else grown


def _split_features(max_features: Any, d: int) -> float:
    """Features one split looks at, for scikit-learn's ``max_features`` (None: all of them)."""
    if max_features == "sqrt":
        return float(max(1, math.isqrt(d)))
    if max_features == "log2":
        return float(max(1, d.bit_length() - 1))
    if isinstance(max_features, int | float) and not isinstance(max_features, bool):
        return float(max(1, math.floor(max_features * d)))
    return float(d)


def _forest(name: str, kind: str, p: dict[str, Any], n: int, d: int) -> tuple[float, float, int]:
    """(trees, features per split, depth) of a forest or a single tree."""
    depth = _depth(n, p.get("max_depth"), p.get("min_samples_leaf"))
    if name == "decision_tree":
        return 1.0, float(d), depth
    default = "sqrt" if kind == "classification" else None  # scikit-learn's defaults
    split = _split_features(p.get("max_features", default), d)
    return float(p.get("n_estimators", 100)), split, depth


def fit_units(
    name: str, kind: str, params: dict[str, Any], rows: int, d: int, classes: int
) -> float:
    """The operations one fit of ``name`` scales with (see the module docstring)."""
    n, k, p = float(rows), _k(kind, classes), params
    if name in _LINEAR or name == "knn":
        return n * d
    if name == "logistic_regression":
        return n * d * k
    if name == "svm":
        return n * n * (d + 16) * (1 + k / 4)
    if name == "decision_tree" or name in _FORESTS:
        trees, split, depth = _forest(name, kind, p, rows, d)
        return trees * n * split * depth
    if name == "gradient_boosting":
        trees, depth = float(p.get("n_estimators", 100)), int(p.get("max_depth", 3))
        return trees * k * n * float(p.get("subsample", 1.0)) * d * depth
    if name == "hist_gradient_boosting":
        return float(p.get("max_iter", 100)) * k * n * d
    raise ValueError(f"no work model for estimator {name!r}")


def predict_units(
    name: str, kind: str, params: dict[str, Any], fit_rows: int, rows: int, d: int, classes: int
) -> float:
    """The operations predicting ``rows`` rows scales with, for a model fitted on ``fit_rows``."""
    m, k, p = float(rows), _k(kind, classes), params
    if name in _LINEAR:
        return m * d
    if name == "logistic_regression":
        return m * d * k
    if name == "svm":
        return float(fit_rows) * m * (d + 16)
    if name == "knn":
        return m * d * _log2_up(fit_rows)
    if name == "decision_tree" or name in _FORESTS:
        trees, _, depth = _forest(name, kind, p, fit_rows, d)
        return trees * m * depth
    if name == "gradient_boosting":
        return float(p.get("n_estimators", 100)) * k * m * int(p.get("max_depth", 3))
    if name == "hist_gradient_boosting":
        leaves = int(p.get("max_leaf_nodes", 31))
        return float(p.get("max_iter", 100)) * k * m * _log2_up(leaves)
    raise ValueError(f"no work model for estimator {name!r}")


def models(name: str, kind: str, params: dict[str, Any], classes: int) -> float:
    """M: trees (forests) or stages times K (boosting) built by one fit; 1 for the others."""
    if name in _FORESTS:
        return float(params.get("n_estimators", 100))
    if name == "gradient_boosting":
        return float(params.get("n_estimators", 100)) * _k(kind, classes)
    if name == "hist_gradient_boosting":
        return float(params.get("max_iter", 100)) * _k(kind, classes)
    return 1.0


def fit_s(name: str, kind: str, params: dict[str, Any], rows: int, d: int, classes: int) -> float:
    """Modelled seconds of fitting ``name`` on ``rows`` x ``d`` with ``classes`` labels."""
    c = COSTS[name]
    units = fit_units(name, kind, params, rows, d, classes)
    return c.fit_base + c.fit_per_model * models(name, kind, params, classes) + c.fit_rate * units


def predict_s(
    name: str, kind: str, params: dict[str, Any], fit_rows: int, rows: int, d: int, classes: int
) -> float:
    """Modelled seconds of predicting ``rows`` rows with a model fitted on ``fit_rows``."""
    if rows == 0:
        return 0.0
    c = COSTS[name]
    units = predict_units(name, kind, params, fit_rows, rows, d, classes)
    per_model = c.predict_per_model * models(name, kind, params, classes)
    return c.predict_base + per_model + c.predict_rate * units
