"""Benchmark: the virtual-clock work model against real time, on this machine.

On a virtual clock the ML tools and the code sandbox report work from a deterministic model
(``tools/ml/work.py``; ``timely_tools.sandbox.core.work_s``) instead of their measured time. This
measures the real times the model stands in for and prints model / measured ratios (1.0 = the
model charges what this machine takes):

- ML: fit and predict of every estimator over a grid of shapes (rows, features, classes) and
  hyperparameters, single-threaded, fastest of up to 3 runs; per estimator the ratio range, and
  the constants a least-squares fit to this run's times would give (compare with COSTS).
- Sandbox: a few programs (pure Python, numpy, pandas, scikit-learn) run plainly and with
  counting; their trace events, real seconds per event (the rate SECONDS_PER_EVENT stands in
  for), and the slowdown counting costs.

Usage: python bench/work_model.py [--quick] [--ml-only | --sandbox-only]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import statistics
import time
from typing import Any

import numpy as np

from timely_tools.ml import blas, recipe, work
from timely_tools.sandbox.core import SECONDS_PER_EVENT, Workspace, run_code

SHAPES = [(100, 8), (400, 32), (1600, 64), (1600, 8)]  # (fit rows, features)
ESTIMATORS: list[tuple[str, tuple[str, ...], list[dict[str, Any]]]] = [
    ("logistic_regression", ("classification",), [{}]),
    ("linear_regression", ("regression",), [{}]),
    ("ridge", ("regression",), [{}]),
    ("lasso", ("regression",), [{"alpha": 0.1}]),
    ("svm", ("classification", "regression"), [{}]),
    ("knn", ("classification", "regression"), [{}]),
    ("decision_tree", ("classification", "regression"), [{}, {"max_depth": 4}]),
    (
        "random_forest",
        ("classification", "regression"),
        [{"n_estimators": 10}, {"n_estimators": 100}, {"n_estimators": 50, "max_depth": 4}],
    ),
    ("extra_trees", ("classification", "regression"),
     [{"n_estimators": 10}, {"n_estimators": 100}]),
    (
        "gradient_boosting",
        ("classification", "regression"),
        [{"n_estimators": 20}, {"n_estimators": 100}],
    ),
    ("hist_gradient_boosting", ("classification", "regression"),
     [{"max_iter": 20}, {"max_iter": 100}]),
]  # fmt: skip

PROGRAMS = {
    "python loop": "s = 0\nfor i in range(3_000_000):\n    s += i * i\nprint(s)",
    "python calls": "def f(n):\n    return n if n < 2 else f(n - 1) + f(n - 2)\nprint(f(24))",
    "numpy import": "import numpy as np\nprint(np.arange(10).sum())",
    "numpy matmul": "import numpy as np\na = np.random.default_rng(0).random((600, 600))\n"
    "for _ in range(5):\n    a = a @ a / 600\nprint(a.sum())",
    "pandas csv": "import io\nimport pandas as pd\ntext = 'a,b,c\\n' + ''.join("
    "f'{i},{i * 2},{i % 7}\\n' for i in range(20000))\nprint(pd.read_csv(io.StringIO(text)).sum())",
    "sklearn logistic": "from sklearn.datasets import make_classification\n"
    "from sklearn.linear_model import LogisticRegression\nx, y = make_classification(400, 30, "
    "random_state=0)\nprint(LogisticRegression(max_iter=1000).fit(x, y).score(x, y))",
    "sklearn forest 100": "from sklearn.datasets import make_classification\n"
    "from sklearn.ensemble import RandomForestClassifier\nx, y = make_classification(400, 30, "
    "random_state=0)\nprint(RandomForestClassifier(100, random_state=0).fit(x, y).score(x, y))",
    "sklearn forest 500": "from sklearn.datasets import make_classification\n"
    "from sklearn.ensemble import RandomForestClassifier\nx, y = make_classification(400, 30, "
    "random_state=0)\nprint(RandomForestClassifier(500, random_state=0).fit(x, y).score(x, y))",
}


def _data(n: int, d: int, kind: str, k: int) -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import make_classification, make_regression

    if kind == "classification":
        x, y = make_classification(
            n_samples=n, n_features=d, n_informative=max(2, d // 2), n_redundant=0,
            n_classes=k, n_clusters_per_class=1, flip_y=0.05, random_state=0,
        )  # fmt: skip
        return x, [str(v) for v in y]
    x, y = make_regression(n_samples=n, n_features=d, noise=5.0, random_state=0)
    return x, [repr(float(v)) for v in y]


def _fastest(fn: Any, budget_s: float = 1.0) -> tuple[float, Any]:
    best, spent, out = math.inf, 0.0, None
    for _ in range(3):
        t0 = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return best, out


def bench_ml(quick: bool) -> None:
    from threadpoolctl import threadpool_limits

    recipe.warm_up()
    blas.hold()
    limit = threadpool_limits(limits=1)  # BLAS and OpenMP: one core, as the model assumes
    shapes = SHAPES[:2] if quick else SHAPES
    print("ML work model / measured (fit and predict, fastest of up to 3 runs, one thread)")
    print(f"{'estimator':24s} {'n':>4s} {'fit model/measured':>20s} {'predict':>16s}  fitted")
    for name, kinds, grid in ESTIMATORS:
        rows: list[tuple[dict[str, Any], float, float, float, float]] = []
        for kind in kinds:
            for params in grid[:1] if quick else grid:
                for n, d in shapes:
                    for k in (2, 10) if kind == "classification" and n > 100 else (2,):
                        k = k if kind == "classification" else 1
                        m = n // 4
                        x, y = _data(n + m, d, kind, k)
                        fit_t, model = _fastest(
                            functools.partial(recipe.fit, name, kind, params, x[:n], y[:n])
                        )
                        pred_t, _ = _fastest(functools.partial(recipe.predict, model, kind, x[n:]))
                        rec = {"kind": kind, "params": params, "n": n, "m": m, "d": d, "k": k}
                        fit_m = work.fit_s(name, kind, params, n, d, k)
                        pred_m = work.predict_s(name, kind, params, n, m, d, k)
                        rows.append((rec, fit_t, pred_t, fit_m / fit_t, pred_m / pred_t))
        fit_r = [r[3] for r in rows]
        pred_r = [r[4] for r in rows]
        print(
            f"{name:24s} {len(rows):4d} {_range(fit_r):>20s} {_range(pred_r):>16s}  "
            f"{_fitted(name, rows)}"
        )
    limit.restore_original_limits()
    blas.release()


def _range(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f} (med {statistics.median(ratios):.2f})"


def _fitted(name: str, rows: list[tuple[dict[str, Any], float, float, float, float]]) -> str:
    """The Cost a relative least-squares fit to these times gives (nonnegative)."""
    from scipy.optimize import nnls

    out = []
    for which in ("fit", "predict"):
        t = np.array([r[1] if which == "fit" else r[2] for r in rows])
        recs = [r[0] for r in rows]
        models = np.array([work.models(name, r["kind"], r["params"], r["k"]) for r in recs])
        if which == "fit":
            units = [
                work.fit_units(name, r["kind"], r["params"], r["n"], r["d"], r["k"]) for r in recs
            ]
        else:
            units = [
                work.predict_units(name, r["kind"], r["params"], r["n"], r["m"], r["d"], r["k"])
                for r in recs
            ]
        ensemble = bool((models != 1).any())  # else per_model and base are one column
        cols = [np.ones_like(t), *([models] if ensemble else []), np.array(units)]
        x, _ = nnls(np.stack(cols, 1) / t[:, None], np.ones_like(t))
        x = x if ensemble else np.array([x[0], 0.0, x[1]])
        out += [f"{v:.2g}" for v in x]
    return "Cost(" + ", ".join(out) + ")"


async def bench_sandbox(quick: bool) -> None:
    print(f"\nSandbox: real seconds per counted event (SECONDS_PER_EVENT = {SECONDS_PER_EVENT:g})")
    heads = ("events", "plain s", "ns/event", "model/real", "counting")
    print(f"{'program':20s} " + " ".join(f"{h:>11s}" for h in heads))
    ws = Workspace.create()
    try:
        start = min([(await run_code("pass", ws.path)).duration_s for _ in range(3)])
        per_event = []
        for name, code in PROGRAMS.items():
            if quick and "500" in name:
                continue
            plain = min([(await run_code(code, ws.path)).duration_s for _ in range(2)])
            counted = await run_code(code, ws.path, count_events=True)
            assert counted.ok and counted.events, counted.stderr
            real = max(1e-6, plain - start)  # the interpreter's start-up is not the program's
            per_event.append(real / counted.events)
            ns = real / counted.events * 1e9
            ratio = counted.events * SECONDS_PER_EVENT / real
            slower = counted.duration_s / plain
            print(
                f"{name:20s} {counted.events:11d} {plain:11.3f} {ns:11.0f} {ratio:11.2f} "
                f"{slower:10.1f}x"
            )
        mean = math.exp(statistics.fmean(math.log(r) for r in per_event))
        print(f"start-up {start:.3f} s (not counted); geometric mean {mean * 1e9:.0f} ns per event")
    finally:
        ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid, fewer programs")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ml-only", action="store_true")
    only.add_argument("--sandbox-only", action="store_true")
    args = parser.parse_args()
    if not args.sandbox_only:
        bench_ml(args.quick)
    if not args.ml_only:
        asyncio.run(bench_sandbox(args.quick))


if __name__ == "__main__":
    main()
