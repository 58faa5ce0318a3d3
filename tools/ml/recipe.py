"""The one ML recipe: read the public CSVs, encode features, fit an allow-listed estimator, predict.

Three parties must agree on a model's predictions to the last bit: the ``train_model`` /
``submit_model`` tools on the server, the tasks that measure their reference score on the
client, and the code-mode oracle, which runs this very file's code in the sandbox (so it may
import only the standard library, numpy and scikit-learn). One implementation serves all three:
the same CSV bytes go through the same parser (``float()`` is correctly rounded, so every side
reads identical values), the same encoding and the same seeded, single-threaded estimator.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

Kind = str  # "classification" or "regression"

_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_DEPTH = {"type": ["integer", "null"], "minimum": 1, "maximum": 64}
_LEAF = {"type": "integer", "minimum": 1, "maximum": 200}
_TREES = {"type": "integer", "minimum": 1, "maximum": 500}
_RATE = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_MAX_FEATURES = {
    "anyOf": [
        {"enum": ["sqrt", "log2", None]},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    ]
}
_GAMMA = {"anyOf": [{"enum": ["scale", "auto"]}, _POSITIVE]}
_FOREST = {
    "n_estimators": _TREES,
    "max_depth": _DEPTH,
    "min_samples_leaf": _LEAF,
    "max_features": _MAX_FEATURES,
}
_BOTH = ("classification", "regression")

# name -> kinds it supports, its hyperparameters (JSON Schema per parameter), and whether its
# inputs are standardised first (linear models, SVMs and neighbours need it; trees do not).
ESTIMATORS: dict[str, dict[str, Any]] = {
    "logistic_regression": {
        "kinds": ("classification",),
        "params": {"C": _POSITIVE, "max_iter": {"type": "integer", "minimum": 10, "maximum": 5000}},
        "scaled": True,
    },
    "linear_regression": {"kinds": ("regression",), "params": {}, "scaled": True},
    "ridge": {
        "kinds": ("regression",),
        "params": {"alpha": {"type": "number", "minimum": 0}},
        "scaled": True,
    },
    "lasso": {"kinds": ("regression",), "params": {"alpha": _POSITIVE}, "scaled": True},
    "svm": {
        "kinds": _BOTH,
        "params": {
            "C": _POSITIVE,
            "gamma": _GAMMA,
            "kernel": {"enum": ["rbf", "linear", "poly", "sigmoid"]},
            "epsilon": {"type": "number", "minimum": 0},
        },
        "scaled": True,
    },
    "knn": {
        "kinds": _BOTH,
        "params": {
            "n_neighbors": {"type": "integer", "minimum": 1, "maximum": 100},
            "weights": {"enum": ["uniform", "distance"]},
        },
        "scaled": True,
    },
    "decision_tree": {
        "kinds": _BOTH,
        "params": {"max_depth": _DEPTH, "min_samples_leaf": _LEAF},
    },
    "random_forest": {"kinds": _BOTH, "params": _FOREST},
    "extra_trees": {"kinds": _BOTH, "params": _FOREST},
    "gradient_boosting": {
        "kinds": _BOTH,
        "params": {
            "n_estimators": _TREES,
            "learning_rate": _RATE,
            "max_depth": {"type": "integer", "minimum": 1, "maximum": 16},
            "subsample": _RATE,
        },
    },
    "hist_gradient_boosting": {
        "kinds": _BOTH,
        "params": {
            "max_iter": _TREES,
            "learning_rate": _RATE,
            "max_depth": _DEPTH,
            "max_leaf_nodes": {"type": "integer", "minimum": 2, "maximum": 256},
            "min_samples_leaf": _LEAF,
            "l2_regularization": {"type": "number", "minimum": 0},
        },
    },
}


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of CSV text.

    Raises:
        ValueError: no header, or a row whose width differs from the header's.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ValueError("the CSV file is empty (no header row)")
    header = [h.strip() for h in header]
    rows = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} fields, the header has {len(header)}")
        rows.append(row)
    return header, rows


def _number(text: str) -> float:
    text = text.strip()
    return math.nan if text == "" else float(text)


def encode_features(train: list[list[str]], test: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrices: numbers as floats, other columns as ordinal codes, gaps as train medians.

    Category codes and medians are learned on ``train`` only; unseen categories become -1.
    """
    width = len(train[0]) if train else 0
    x_train = np.empty((len(train), width))
    x_test = np.empty((len(test), width))
    for j in range(width):
        col_train = [r[j] for r in train]
        col_test = [r[j] for r in test]
        try:
            x_train[:, j] = [_number(v) for v in col_train]
            x_test[:, j] = [_number(v) for v in col_test]
        except ValueError:
            codes = {v: float(i) for i, v in enumerate(sorted(set(col_train) - {""}))}
            x_train[:, j] = [codes.get(v, math.nan if v == "" else -1.0) for v in col_train]
            x_test[:, j] = [codes.get(v, math.nan if v == "" else -1.0) for v in col_test]
        known = x_train[:, j][~np.isnan(x_train[:, j])]
        fill = float(np.median(known)) if known.size else 0.0
        x_train[np.isnan(x_train[:, j]), j] = fill
        x_test[np.isnan(x_test[:, j]), j] = fill
    return x_train, x_test


def load(train_text: str, test_text: str, id_column: str, targets: list[str]) -> dict[str, Any]:
    """The public data as arrays: features, train targets (text), test ids, feature names.

    Args:
        train_text: ``train.csv`` (id, features, target column(s)).
        test_text: ``test.csv`` (id and the same features).
        id_column: the row-id column (absent from the features).
        targets: target column(s) of ``train.csv``.

    Raises:
        ValueError: a missing column, or test columns that do not match train's features.
    """
    header, train_rows = read_csv(train_text)
    test_header, test_rows = read_csv(test_text)
    missing = [c for c in [id_column, *targets] if c not in header]
    if missing:
        raise ValueError(f"train.csv has no column(s) {missing}; it has {header}")
    features = [c for c in header if c != id_column and c not in targets]
    absent = [c for c in features + [id_column] if c not in test_header]
    if absent:
        raise ValueError(f"test.csv lacks the column(s) {absent} that train.csv has")
    pick = [header.index(c) for c in features]
    tpick = [test_header.index(c) for c in features]
    x_train, x_test = encode_features(
        [[r[i] for i in pick] for r in train_rows], [[r[i] for i in tpick] for r in test_rows]
    )
    tcols = [header.index(c) for c in targets]
    return {
        "features": features,
        "x_train": x_train,
        "y_train": [[r[i].strip() for i in tcols] for r in train_rows],
        "x_test": x_test,
        "test_ids": [r[test_header.index(id_column)].strip() for r in test_rows],
    }


def build(name: str, kind: Kind, params: dict[str, Any]) -> Any:
    """A fresh scikit-learn estimator: seeded, single-threaded, standardised where it matters.

    Raises:
        ValueError: an unknown estimator, or one that does not do ``kind``.
    """
    spec = ESTIMATORS.get(name)
    if spec is None or kind not in spec["kinds"]:
        raise ValueError(f"no {kind} estimator named {name!r}")
    p = dict(params)
    cls = kind == "classification"
    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        est: Any = LogisticRegression(C=p.get("C", 1.0), max_iter=p.get("max_iter", 1000))
    elif name == "linear_regression":
        from sklearn.linear_model import LinearRegression

        est = LinearRegression()
    elif name in ("ridge", "lasso"):
        from sklearn.linear_model import Lasso, Ridge

        est = Ridge(alpha=p.get("alpha", 1.0)) if name == "ridge" else Lasso(p.get("alpha", 1.0))
    elif name == "svm":
        from sklearn.svm import SVC, SVR

        common = {"C": p.get("C", 1.0), "gamma": p.get("gamma", "scale")}
        common["kernel"] = p.get("kernel", "rbf")
        est = SVC(**common) if cls else SVR(epsilon=p.get("epsilon", 0.1), **common)
    elif name == "knn":
        from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

        knn = KNeighborsClassifier if cls else KNeighborsRegressor
        est = knn(n_neighbors=p.get("n_neighbors", 5), weights=p.get("weights", "uniform"))
    else:
        est = _tree_model(name, cls, p)
    if ESTIMATORS[name].get("scaled"):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        est = make_pipeline(StandardScaler(), est)
    return est


def _tree_model(name: str, cls: bool, p: dict[str, Any]) -> Any:
    from sklearn import ensemble, tree

    seeded = {"random_state": 0}
    if name == "decision_tree":
        model = tree.DecisionTreeClassifier if cls else tree.DecisionTreeRegressor
        keys = ("max_depth", "min_samples_leaf")
    elif name in ("random_forest", "extra_trees"):
        if name == "random_forest":
            model = ensemble.RandomForestClassifier if cls else ensemble.RandomForestRegressor
        else:
            model = ensemble.ExtraTreesClassifier if cls else ensemble.ExtraTreesRegressor
        keys = ("n_estimators", "max_depth", "min_samples_leaf", "max_features")
        seeded["n_jobs"] = 1
    elif name == "gradient_boosting":
        model = ensemble.GradientBoostingClassifier if cls else ensemble.GradientBoostingRegressor
        keys = ("n_estimators", "learning_rate", "max_depth", "subsample")
    else:
        hgb = ensemble.HistGradientBoostingClassifier, ensemble.HistGradientBoostingRegressor
        model = hgb[0] if cls else hgb[1]
        keys = ("max_iter", "learning_rate", "max_depth", "max_leaf_nodes", "min_samples_leaf")
        keys += ("l2_regularization",)
    return model(**seeded, **{k: p[k] for k in keys if k in p})


def warm_up() -> None:
    """Import every estimator's module now (about a second, once per process), so that the
    first ``train_model`` of an episode is charged for training, not for importing."""
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401
    import sklearn.svm  # noqa: F401
    import sklearn.tree  # noqa: F401


def fit(name: str, kind: Kind, params: dict[str, Any], x: np.ndarray, y: list[str]) -> Any:
    """Fit ``name`` on ``x`` and the text targets ``y`` (numbers for regression)."""
    est = build(name, kind, params)
    target = np.array(y, dtype=object if kind == "classification" else float)
    if kind == "classification":
        target = target.astype(str)
    return est.fit(x, target)


def predict(model: Any, kind: Kind, x: np.ndarray) -> list[str] | list[float]:
    """Labels (text) for classification, floats for regression."""
    out = model.predict(x)
    return [str(v) for v in out] if kind == "classification" else [float(v) for v in out]


def submission_csv(
    id_column: str, ids: list[str], targets: list[str], predictions: list[Any], fmt: str
) -> str:
    """``submission.csv`` text: ``id,<target>`` rows, or one 0/1 column per class (``one_hot``).

    ``fmt`` is ``label`` (the prediction itself), ``probability`` (binary: 1.0 for the positive
    class, the last target-name suffix, else 0.0) or ``one_hot`` (targets are the class names).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([id_column, *targets])
    for row_id, pred in zip(ids, predictions, strict=True):
        if fmt == "one_hot":
            writer.writerow([row_id, *("1" if t == pred else "0" for t in targets)])
        else:
            writer.writerow([row_id, repr(pred) if isinstance(pred, float) else pred])
    return out.getvalue()


def run(spec: dict[str, Any]) -> None:
    """What the code-mode oracle executes: fit ``spec`` on all of train.csv, write submission.csv.

    Args:
        spec: ``train``/``test`` paths, ``id_column``, ``targets``, ``label_column`` (the train
            column holding the label when targets are one-hot class columns), ``kind``,
            ``estimator``, ``params``, ``format`` and ``out``.
    """
    with open(spec["train"], encoding="utf-8") as f:
        train_text = f.read()
    with open(spec["test"], encoding="utf-8") as f:
        test_text = f.read()
    label = spec.get("label_column") or spec["targets"][0]
    data = load(train_text, test_text, spec["id_column"], [label])
    y = [row[0] for row in data["y_train"]]
    model = fit(spec["estimator"], spec["kind"], spec["params"], data["x_train"], y)
    preds = predict(model, spec["kind"], data["x_test"])
    text = submission_csv(
        spec["id_column"], data["test_ids"], spec["targets"], preds, spec["format"]
    )
    with open(spec["out"], "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {spec['out']}: {len(preds)} rows, {spec['estimator']} {spec['params']}")
