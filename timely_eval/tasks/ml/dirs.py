"""``ml/dir-v1``: a reference-release agentic-ML directory, played in our loop.

The reference ``timely-eval agentic-ml`` reads a data directory with ``public/train.csv`` and
``public/test.csv``, a private label file (``--private-test-path``, e.g. ``private/test.csv``)
and a prompt template (``--prompt-template``); the agent's code sees the data as
``./data/public/...`` and writes ``./submission.csv``. Those directories work here unchanged:

    make_task("ml/dir-v1", seed=0, path="examples/data/agentic_ml_toy",
              prompt="examples/prompts/agentic_ml_toy.txt", is_binary=True)

``path`` is one task directory (it holds ``public/``) or a directory of them; seeds index the
task directories of a split in name order (all are ``test`` unless ``train_fraction`` moves
some to train by a stable hash of the name). The private file has the id column and either one
label column, or one 0/1 column per class (the reference's multiclass format: the submission
then has one probability column per class and the largest wins). ``is_binary=True`` means the
submission column is the probability of class 1 (the reference's ``--is-binary``). Scores are
normalised against the trivial predictor and ``reference_model`` fitted on ``train.csv``
(override either number with ``baseline=`` / ``reference=``, e.g. MLE-bench medal thresholds).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, ClassVar

from timely.errors import TaskError
from timely.task import SPLITS, Split, register_task
from timely_eval.tasks.math.data import pool_split
from timely_eval.tasks.ml.base import Calibration, Dataset, MLTask, calibrate
from timely_tools.ml import recipe
from timely_tools.ml.data import CLASSIFICATION_METRICS, METRICS, REGRESSION_METRICS


def task_dirs(path: Path) -> list[Path]:
    """``path`` itself when it holds ``public/``, else its subdirectories that do, by name."""
    if (path / "public").is_dir():
        return [path]
    if not path.is_dir():
        raise TaskError(f"ml/dir-v1: no directory at {str(path)!r}; pass path=/data/task_dir")
    found = sorted(p for p in path.iterdir() if (p / "public").is_dir())
    if not found:
        raise TaskError(
            f"ml/dir-v1: {path} has no public/ directory and no task directories that do; "
            "a task directory holds public/train.csv, public/test.csv and private/test.csv"
        )
    return found


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TaskError(f"ml/dir-v1: cannot read the {what} {str(path)!r}: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except (ValueError, OverflowError):
        return False


@register_task("ml/dir-v1", help="A reference-release agentic-ML directory: path=... (required).")
@register_task("ml/dir", help="Alias of the latest ml/dir version (v1).")
class DirTask(MLTask):
    """One reference-style agentic-ML directory.

    Args:
        seed: index of the task directory within the split.
        split: "train" or "test".
        difficulty: recorded only (the directory fixes the data).
        path: a task directory or a directory of them (required).
        private: the label file, relative to the task directory (or absolute).
        prompt: the prompt template: a file, a directory of ``<task name>.txt`` files, or None
            for ``prompt.txt`` in the task directory when present (else a generated text).
        id_column: the row-id column of every file.
        label_column: the training column holding the target (None: the one column of
            train.csv that test.csv lacks).
        is_binary: the submission holds P(class 1) (the reference's ``--is-binary``).
        kind: "classification" or "regression" (None: guessed from the labels).
        metric: one of accuracy, balanced_accuracy, f1_macro, r2, rmse, mae (None: accuracy
            or r2).
        mode: "code" (run_python + submission.csv, the reference's mode) or "tools".
        reference_model: estimator of the normalisation's reference (and the oracle).
        reference_params: its hyperparameters.
        baseline: override the trivial predictor's metric.
        reference: override the reference metric.
        train_fraction: share of task directories that go to the train split.
        budget_s: the default time budget.
    """

    requires_options = True
    task_id = "ml/dir-v1"
    # The data directory, and the label file and prompt template (either may be absolute).
    path_options: ClassVar[frozenset[str]] = frozenset({"path", "private", "prompt"})

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int = 1,
        *,
        path: str | Path | None = None,
        private: str = "private/test.csv",
        prompt: str | Path | None = None,
        id_column: str = "id",
        label_column: str | None = None,
        is_binary: bool = False,
        kind: str | None = None,
        metric: str | None = None,
        mode: str = "code",
        reference_model: str = "random_forest",
        reference_params: dict[str, Any] | None = None,
        baseline: float | None = None,
        reference: float | None = None,
        train_fraction: float = 0.0,
        budget_s: float = 300.0,
    ) -> None:
        if path is None or not str(path).strip():
            raise TaskError("ml/dir-v1 needs a data directory: make_task(..., path='/data/dir')")
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if mode not in ("code", "tools"):
            raise TaskError(f"mode must be 'code' or 'tools', got {mode!r}")
        if reference_model not in recipe.ESTIMATORS:
            raise TaskError(f"reference_model must be one of {sorted(recipe.ESTIMATORS)}")
        try:
            seed = operator.index(seed)
        except TypeError:
            raise TaskError(f"seed must be an integer index, got {seed!r}") from None
        root = Path(str(path)).expanduser()
        chosen = [d for d in task_dirs(root) if pool_split(d.name, train_fraction) == split]
        if not 0 <= seed < len(chosen):
            raise TaskError(
                f"ml/dir-v1: seed {seed} is out of range: {root} has {len(chosen)} {split} "
                f"task director{'y' if len(chosen) == 1 else 'ies'}"
                + (f"; use seeds 0..{len(chosen) - 1}" if chosen else "")
            )
        self.mode = mode
        self.budget_s = float(budget_s)
        self._overrides = (baseline, reference)
        task_dir = chosen[seed]
        self.data = self._load(
            task_dir, private, prompt, id_column, label_column, is_binary, kind, metric,
            (reference_model, dict(reference_params or {})),
        )  # fmt: skip
        self._finish(seed, split, difficulty, {"task_dir": str(task_dir)})

    @staticmethod
    def _load(
        task_dir: Path,
        private: str,
        prompt: str | Path | None,
        id_column: str,
        label_column: str | None,
        is_binary: bool,
        kind: str | None,
        metric_name: str | None,
        ref: tuple[str, dict[str, Any]],
    ) -> Dataset:
        train_csv = _read(task_dir / "public" / "train.csv", "training file")
        test_csv = _read(task_dir / "public" / "test.csv", "test file")
        labels_csv = _read(task_dir / private, "private label file")
        try:
            header, _ = recipe.read_csv(train_csv)
            test_header, test_rows = recipe.read_csv(test_csv)
            private_header, private_rows = recipe.read_csv(labels_csv)
        except ValueError as exc:
            raise TaskError(f"ml/dir-v1: {task_dir}: {exc}") from None
        for name, cols in (("public/test.csv", test_header), (private, private_header)):
            if id_column not in cols:
                raise TaskError(f"ml/dir-v1: {task_dir}/{name} has no id column {id_column!r}")
        if label_column is None:
            extra = [c for c in header if c not in test_header]
            if len(extra) != 1:
                raise TaskError(
                    f"ml/dir-v1: {task_dir}: cannot tell the label column of train.csv "
                    f"(columns missing from test.csv: {extra}); pass label_column=..."
                )
            label_column = extra[0]
        targets = tuple(c for c in private_header if c != id_column)
        fmt = "one_hot" if len(targets) > 1 else "probability" if is_binary else "label"
        at = private_header.index(id_column)
        by_id = {r[at].strip(): r for r in private_rows}
        test_ids = [r[test_header.index(id_column)].strip() for r in test_rows]
        lost = [i for i in test_ids if i not in by_id]
        if lost:
            raise TaskError(f"ml/dir-v1: {task_dir}/{private} lacks test ids {lost[:5]}")
        cols = [private_header.index(t) for t in targets]
        if fmt == "one_hot":
            labels: list[Any] = [
                targets[max(range(len(cols)), key=lambda k, r=by_id[i]: float(r[cols[k]]))]
                for i in test_ids
            ]
        else:
            labels = [by_id[i][cols[0]].strip() for i in test_ids]
        if fmt == "probability":
            labels = [str(int(float(v))) for v in labels]  # 0/1 labels, maybe written as 1.0
        if kind is None:  # numbers that are not all integers are a regression target
            numeric = all(map(_is_number, labels))
            fractional = fmt == "label" and numeric and not all(map(_is_int, labels))
            kind = "regression" if fractional else "classification"
        if kind not in ("classification", "regression"):
            raise TaskError(f"kind must be 'classification' or 'regression', got {kind!r}")
        if kind == "regression":
            labels = [float(v) for v in labels]
        elif fmt == "label":
            labels = [str(int(float(v))) if _is_int(v) else v for v in labels]
        metric_name = metric_name or ("accuracy" if kind == "classification" else "r2")
        allowed = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
        if metric_name not in METRICS or metric_name not in allowed:
            raise TaskError(f"metric for {kind} must be one of {list(allowed)}, got {metric_name}")
        template = _template(task_dir, prompt)
        name = task_dir.name
        description = template or (
            f"Agentic ML task {name!r}: predict `{label_column}` for every row of "
            "data/public/test.csv from data/public/train.csv."
        )
        return Dataset(
            name=name,
            description=description,
            train_csv=train_csv,
            test_csv=test_csv,
            id_column=id_column,
            targets=targets,
            label_column=label_column,
            kind=kind,
            metric=metric_name,
            fmt=fmt,
            test_labels=tuple(labels),
            reference=ref,
            prompt=template,
        )

    @property
    def calibration(self) -> Calibration:
        cal = calibrate(self.data)
        baseline, reference = self._overrides
        if baseline is None and reference is None:
            return cal
        return Calibration(
            baseline=cal.baseline if baseline is None else float(baseline),
            reference=cal.reference if reference is None else float(reference),
            reference_receipt=cal.reference_receipt,
            quick_receipt=cal.quick_receipt,
            test_ids=cal.test_ids,
            n_train=cal.n_train,
            n_features=cal.n_features,
        )


def _template(task_dir: Path, prompt: str | Path | None) -> str | None:
    if prompt is None:
        default = task_dir / "prompt.txt"
        return _read(default, "prompt template") if default.is_file() else None
    p = Path(str(prompt)).expanduser()
    if not p.is_absolute() and not p.exists():
        p = task_dir / p
    if p.is_dir():
        p = p / f"{task_dir.name}.txt"
    return _read(p, "prompt template")
