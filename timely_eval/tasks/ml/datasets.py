"""ML tasks on scikit-learn's bundled datasets: breast cancer, digits, diabetes; tools or code.

No download is needed. Every episode re-splits a dataset by its seed into training rows (with
labels) and test rows (labels kept by the task). Splits are disjoint *by data*, not only by
seed: a fixed half of each dataset's rows feeds train-split episodes and the other half
test-split episodes, so a policy trained on train episodes has never seen a row of any test
episode. Row ids are shuffled, so they say nothing about the original order.

Difficulty 1 uses the whole pool; 2 keeps half the training rows and flips 10% of their labels
(classification) or adds noise to 10% of their targets (regression); 3 keeps 30% of the rows,
20% noise and a random half of the features. Test labels are always clean, and the reference
model is fitted on the same degraded training rows, so a score of 1 stays reachable.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from timely.errors import TaskError
from timely.rng import make_rng
from timely.task import SPLITS, Split, register_task
from timely_eval.tasks.ml.base import Dataset, MLTask

TEST_SHARE = 0.25
MIN_TRAIN = 40


@dataclass(frozen=True)
class Source:
    """A bundled dataset and how its tasks are scored."""

    loader: str
    kind: str
    metric: str
    description: str
    reference: tuple[str, dict[str, Any]]
    quick: tuple[str, dict[str, Any]]


SOURCES: dict[str, Source] = {
    "breast_cancer": Source(
        "load_breast_cancer",
        "classification",
        "accuracy",
        "Breast Cancer Wisconsin (Diagnostic). Each row describes the cell nuclei in a "
        "digitised image of a fine-needle aspirate of a breast mass: 30 numeric features (the "
        "mean, standard error and worst value of radius, texture, perimeter, area, smoothness, "
        "compactness, concavity, concave points, symmetry and fractal dimension). Predict "
        "`target`: 0 = malignant, 1 = benign.",
        ("logistic_regression", {"C": 1.0}),
        ("decision_tree", {"max_depth": 2}),
    ),
    "digits": Source(
        "load_digits",
        "classification",
        "accuracy",
        "Handwritten digits. Each row is an 8x8 grey-scale image of a digit flattened into 64 "
        "pixel intensities from 0 to 16 (pixel_R_C is row R, column C). Predict `target`, the "
        "digit 0-9.",
        ("svm", {"C": 10.0}),
        ("decision_tree", {"max_depth": 6}),
    ),
    "diabetes": Source(
        "load_diabetes",
        "regression",
        "r2",
        "Diabetes progression. Ten baseline variables of diabetes patients: age, sex, body "
        "mass index (bmi), average blood pressure (bp) and six blood serum measurements (s1-s6), "
        "each already mean-centred and scaled. Predict `target`, a quantitative measure of "
        "disease progression one year after baseline (R^2 is the metric).",
        ("ridge", {"alpha": 1.0}),
        ("decision_tree", {"max_depth": 2}),
    ),
}


@dataclass(frozen=True)
class Level:
    train_share: float
    noise: float
    feature_share: float
    note: str


LEVELS = {
    1: Level(1.0, 0.0, 1.0, ""),
    2: Level(0.5, 0.1, 1.0, "Difficulty 2: fewer training rows; about 10% of the training "
             "targets are noisy (the test targets are clean)."),
    3: Level(0.3, 0.2, 0.5, "Difficulty 3: few training rows, a subset of the features, and "
             "about 20% noisy training targets (the test targets are clean)."),
}  # fmt: skip


@functools.cache
def load_source(name: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Feature names (snake_case), features and targets of a bundled dataset (read once)."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SOURCES[name].loader)()
    names = tuple(
        "_".join("".join(c if c.isalnum() else " " for c in str(n).lower()).split())
        for n in bunch.feature_names
    )
    return names, np.asarray(bunch.data, dtype=float), np.asarray(bunch.target)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


# An instance's data is a pure function of its arguments, and a suite plays each instance in
# many episodes (policies x latencies x budgets): built once, its CSVs, fingerprint and sample
# submission are shared (Dataset is frozen). Bounded: a Dataset holds its CSV text.
@functools.lru_cache(maxsize=128)
def build(name: str, seed: int, split: Split, difficulty: int) -> Dataset:
    """The episode's data: its pool half, its own test rows, the level's degradations."""
    src, level = SOURCES[name], LEVELS[difficulty]
    names, x, y = load_source(name)
    pool = make_rng("ml-pool", name).permutation(len(y))
    half = len(y) // 2
    rows = pool[:half] if split == "train" else pool[half:]
    rng = make_rng("ml", name, split, seed, difficulty)
    rows = rng.permutation(rows)
    n_test = round(len(rows) * TEST_SHARE)
    test_rows, train_rows = rows[:n_test], rows[n_test:]
    keep = max(MIN_TRAIN, round(len(train_rows) * level.train_share))
    train_rows = train_rows[:keep]
    cols = np.arange(len(names))
    if level.feature_share < 1.0:
        n_cols = max(4, round(len(names) * level.feature_share))
        cols = np.sort(rng.choice(len(names), size=n_cols, replace=False))
    y_train = y[train_rows].astype(float)
    noisy = rng.choice(len(train_rows), size=round(level.noise * len(train_rows)), replace=False)
    if src.kind == "classification":
        classes = np.unique(y)
        for i in noisy:
            others = classes[classes != y_train[i]]
            y_train[i] = float(others[rng.integers(len(others))])
    else:
        y_train[noisy] += rng.normal(0.0, 0.5 * float(np.std(y)), size=len(noisy))
    ids = rng.permutation(len(train_rows) + len(test_rows))
    header = ["id", *(names[c] for c in cols)]

    def label(v: float) -> str:
        return str(int(v)) if src.kind == "classification" else repr(float(v))

    def features(r: int) -> list[str]:
        return [repr(float(x[r, c])) for c in cols]

    train_csv = _csv(
        [*header, "target"],
        [[str(ids[i]), *features(r), label(y_train[i])] for i, r in enumerate(train_rows)],
    )
    test_ids = ids[len(train_rows) :]
    test_csv = _csv(
        header, [[str(i), *features(r)] for i, r in zip(test_ids, test_rows, strict=True)]
    )
    labels = tuple(str(int(v)) if src.kind == "classification" else float(v) for v in y[test_rows])
    description = src.description + (f"\n\n{level.note}" if level.note else "")
    return Dataset(
        name=name,
        description=description,
        train_csv=train_csv,
        test_csv=test_csv,
        id_column="id",
        targets=("target",),
        label_column="target",
        kind=src.kind,
        metric=src.metric,
        fmt="label",
        test_labels=labels,
        reference=src.reference,
        quick=src.quick,
        extra={"train_rows": len(train_rows), "features": len(cols)},
    )


class SklearnTask(MLTask):
    """One episode on a bundled dataset.

    Args:
        seed: episode seed (any integer).
        split: "train" or "test"; they draw from disjoint halves of the dataset.
        difficulty: 1 (all pool rows), 2 (fewer rows, 10% noise) or 3 (fewer rows and
            features, 20% noise).
    """

    dataset: ClassVar[str]

    def __init__(self, seed: int, split: Split = "test", difficulty: int = 1) -> None:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if isinstance(difficulty, bool) or difficulty not in LEVELS:
            raise TaskError(f"difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)
        except TypeError:
            raise TaskError(f"seed must be an integer, got {seed!r}") from None
        self.data = build(self.dataset, seed, split, difficulty)
        self._finish(seed, split, difficulty, dict(self.data.extra))


@register_task(
    "ml/breast-cancer-v1", help="Breast cancer diagnosis (classification) with ML tools."
)
@register_task("ml/breast-cancer", help="Alias of the latest ml/breast-cancer version (v1).")
class BreastCancer(SklearnTask):
    task_id = "ml/breast-cancer-v1"
    dataset = "breast_cancer"


@register_task(
    "ml/breast-cancer-code-v1", help="Breast cancer diagnosis; the agent writes submission.csv."
)
@register_task("ml/breast-cancer-code", help="Alias of ml/breast-cancer-code-v1.")
class BreastCancerCode(BreastCancer):
    task_id = "ml/breast-cancer-code-v1"
    mode = "code"
    budget_s = 300.0


@register_task("ml/digits-v1", help="Handwritten digits 0-9 (10-class classification), ML tools.")
@register_task("ml/digits", help="Alias of the latest ml/digits version (v1).")
class Digits(SklearnTask):
    task_id = "ml/digits-v1"
    dataset = "digits"


@register_task("ml/diabetes-v1", help="Diabetes progression (regression, R^2) with ML tools.")
@register_task("ml/diabetes", help="Alias of the latest ml/diabetes version (v1).")
class Diabetes(SklearnTask):
    task_id = "ml/diabetes-v1"
    dataset = "diabetes"


@register_task("ml/diabetes-code-v1", help="Diabetes progression; the agent writes submission.csv.")
@register_task("ml/diabetes-code", help="Alias of ml/diabetes-code-v1.")
class DiabetesCode(Diabetes):
    task_id = "ml/diabetes-code-v1"
    mode = "code"
    budget_s = 300.0
