"""What every ML-engineering task shares: the episode's files, setup, scoring and the oracle.

An instance is a :class:`Dataset`: public CSVs (what the agent may see, laid out like the
reference release: ``data/public/train.csv``, ``data/public/test.csv``), the private test
labels, and the metric. ``setup`` uploads the public files into the episode's tool-server
session; the labels stay here. Agents submit through ``submit_model`` (structured mode) or by
writing ``submission.csv`` with ``run_python`` (code mode); both answer with a receipt of the
predictions, which :meth:`MLTask.score` decodes and scores.

Scores are normalised like MLE-bench's thresholds, between a trivial predictor and a strong one:
``(metric - baseline) / (reference - baseline)`` clipped to [0, 1], where the baseline predicts
the training majority class (or mean) and the reference is a fixed, seeded scikit-learn model
fitted on the same training rows, measured once per instance and cached. The scripted oracle
submits exactly that model, so it scores 1.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from timely.errors import TaskError, ToolError
from timely.task import ScriptedSolution, Task, TaskSpec
from timely.types import ToolCall
from timely_tools.ml import blas, recipe
from timely_tools.ml.data import (
    METRICS,
    decode_receipt,
    encode_receipt,
    find_receipt,
    fingerprint,
    metric,
    normalise,
)

if TYPE_CHECKING:
    from timely.types import Trajectory

TRAIN, TEST = "data/public/train.csv", "data/public/test.csv"
SAMPLE, DESCRIPTION = "data/public/sample_submission.csv", "data/description.md"
TOOL_MODE = ("describe_data", "train_model", "evaluate_model", "submit_model")
CODE_MODE = ("run_python",)
SUBMITTING = frozenset({"submit_model", "run_python"})
NO_SUBMISSION = "No submission yet."
_SUB_RE = re.compile(r"\bsub-(\d+)\b")
_CALIBRATIONS: dict[tuple[Any, ...], Calibration] = {}
_MAX_CACHED = 512


@dataclass(frozen=True)
class Dataset:
    """One instance's data: public files, private labels, and how it is scored.

    Attributes:
        name: a short name for prompts and metadata (``breast_cancer``, a directory name).
        description: what the data is and what to predict (shown to the agent).
        train_csv: public training file (id, features, target).
        test_csv: public test file (id, features).
        id_column: the row-id column.
        targets: the submission's prediction column(s) (class names for ``one_hot``).
        label_column: the training column holding the target.
        kind: ``classification`` or ``regression``.
        metric: one of :data:`timely_tools.ml.data.METRICS`.
        fmt: submission format: ``label``, ``probability`` (binary) or ``one_hot``.
        test_labels: private labels (text) or values, in ``test.csv`` row order.
        reference: the strong model, ``(estimator, params)``; the oracle submits it.
        quick: a cheaper model the oracle submits first (the budget-aware fallback), or None.
        prompt: a prompt template replacing the generated task text (reference release), or None.
    """

    name: str
    description: str
    train_csv: str
    test_csv: str
    id_column: str
    targets: tuple[str, ...]
    label_column: str
    kind: str
    metric: str
    fmt: str
    test_labels: tuple[Any, ...]
    reference: tuple[str, dict[str, Any]]
    quick: tuple[str, dict[str, Any]] | None = None
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # Cached on the instance (a frozen dataclass keeps them in its __dict__): a Dataset is
    # immutable, and its builders reuse one per instance across episodes.
    @functools.cached_property
    def fp(self) -> str:
        return fingerprint(self.test_csv)

    @functools.cached_property
    def sample_csv(self) -> str:
        """A valid sample submission (every id, one constant prediction)."""
        return _sample(self)


@dataclass(frozen=True)
class Calibration:
    """An instance's fixed points: baseline and reference metrics, the oracle's receipts."""

    baseline: float
    reference: float
    reference_receipt: str
    quick_receipt: str | None
    test_ids: tuple[str, ...]
    n_train: int
    n_features: int


def calibrate(data: Dataset) -> Calibration:
    """Fit the trivial and the reference model on the public training rows (cached)."""
    key = (data.fp, data.kind, data.metric, data.fmt, json.dumps(data.reference, sort_keys=True))
    key += (json.dumps(data.quick, sort_keys=True), hash(data.train_csv), data.test_labels)
    cached = _CALIBRATIONS.get(key)
    if cached is not None:
        return cached
    public = recipe.load(data.train_csv, data.test_csv, data.id_column, [data.label_column])
    y = [row[0] for row in public["y_train"]]
    n = len(data.test_labels)
    if len(public["test_ids"]) != n:
        raise TaskError(f"{data.name}: {len(public['test_ids'])} test rows but {n} labels")

    def receipt(spec: tuple[str, dict[str, Any]]) -> str:
        with blas.one_thread():  # as the tool server and the sandbox fit (timely_tools.ml.blas)
            model = recipe.fit(spec[0], data.kind, spec[1], public["x_train"], y)
            preds = recipe.predict(model, data.kind, public["x_test"])
        return encode_receipt(data.fp, data.kind, preds)

    if data.kind == "classification":
        counts = Counter(y)
        trivial: Any = min(counts, key=lambda label: (-counts[label], label))
    else:
        trivial = float(sum(float(v) for v in y) / len(y))
    ref = receipt(data.reference)
    decoded = decode_receipt(ref, data.fp, data.kind, n)
    assert decoded is not None
    result = Calibration(
        baseline=metric(data.metric, data.test_labels, [trivial] * n),
        reference=metric(data.metric, data.test_labels, decoded),
        reference_receipt=ref,
        quick_receipt=receipt(data.quick) if data.quick else None,
        test_ids=tuple(public["test_ids"]),
        n_train=len(y),
        n_features=len(public["features"]),
    )
    if len(_CALIBRATIONS) >= _MAX_CACHED:
        _CALIBRATIONS.pop(next(iter(_CALIBRATIONS)))
    _CALIBRATIONS[key] = result
    return result


def label_text(labels: tuple[Any, ...] | list[Any]) -> str:
    """The labels as :meth:`MLTask.target` digests them: compact JSON, in row order."""
    return json.dumps(list(labels), separators=(",", ":"))


def submissions(trajectory: Trajectory | None) -> list[dict[str, Any]]:
    """Every submission the tools recorded in ``trajectory`` (``{"id", "receipt", ...}``)."""
    found: list[dict[str, Any]] = []
    for step in trajectory.steps if trajectory is not None else ():
        for result in step.tool_results:
            if result.name not in SUBMITTING or result.error:
                continue
            try:
                body = json.loads(result.content)
            except ValueError:
                continue
            sub = body.get("submission") if isinstance(body, dict) else None
            if isinstance(sub, dict) and isinstance(sub.get("receipt"), str):
                found.append(sub)
    return found


class MLTask(Task):
    """Base of the ML family; subclasses build :attr:`data` and call :meth:`_finish`."""

    family: ClassVar[str] = "ml"
    requires_extra: ClassVar[str | None] = "ml"  # scikit-learn fits; pandas for the programs
    task_id: ClassVar[str]
    mode: ClassVar[str] = "tools"
    budget_s: ClassVar[float] = 180.0
    data: Dataset

    def _finish(self, seed: int, split: str, difficulty: int, meta: dict[str, Any]) -> None:
        d = self.data
        if d.metric not in METRICS:
            raise TaskError(f"{self.task_id}: unknown metric {d.metric!r}")
        n_test = len(d.test_labels)
        calls = len(self._calls())
        self.spec = TaskSpec(
            id=self.task_id,
            seed=seed,
            split=split,  # type: ignore[arg-type]
            difficulty=difficulty,
            prompt=self._prompt(),
            tools=TOOL_MODE if self.mode == "tools" else CODE_MODE,
            default_budget_s=self.budget_s,
            max_turns=24 if self.mode == "tools" else 16,
            time_status="push",
            metadata={
                "family": self.family,
                "dataset": d.name,
                "mode": self.mode,
                "kind": d.kind,
                "metric": d.metric,
                "test_rows": n_test,
                "fingerprint": d.fp,
                "reference_model": d.reference[0],
                "reference_steps": calls,
                **meta,
            },
        )

    # -- the agent's view ------------------------------------------------------------------
    def _prompt(self) -> str:
        d = self.data
        better = "higher" if METRICS[d.metric] else "lower"
        cols = ",".join((d.id_column, *d.targets))
        if d.fmt == "probability":
            what = f"`{d.targets[0]}` is the probability of class {d.targets[0]} = 1"
        elif d.fmt == "one_hot":
            what = "one column per class; the highest value is the predicted class"
        else:
            noun = "class" if d.kind == "classification" else "value"
            what = f"`{d.targets[0]}` is the predicted {noun}"
        task = d.prompt.strip() if d.prompt else d.description.strip()
        score = (
            f"Score: {d.metric} ({better} is better) on the hidden test labels, normalised "
            "between a trivial baseline (0) and a strong reference model (1)."
        )
        if self.mode == "tools":
            body = (
                "Your tools: describe_data (summary of the data), train_model (fit a "
                "scikit-learn estimator with hyperparameters; reports the validation score), "
                "evaluate_model (more metrics of a trained model), submit_model (refit a "
                "model on all training rows and submit its test predictions). Every call "
                "takes time. Submit early and improve while time allows."
            )
        else:
            body = (
                "Files in your working directory: data/public/train.csv (features and the "
                f"target `{d.label_column}`), data/public/test.csv (the same without the "
                f"target), data/public/sample_submission.csv and data/description.md. Write "
                f"./submission.csv with columns {cols} ({what}), one row per test id. Run "
                "Python with the run_python tool (pandas, numpy and scikit-learn are "
                "installed; there is no internet; each run is a fresh interpreter, files "
                "persist). Each run that creates or changes submission.csv is checked and "
                "gets a submission id."
            )
        return (
            f"{task}\n\n{score}\n{body}\nYour last submission counts; when you are done, reply "
            "without a tool call and name the submission you want scored (e.g. 'Final: "
            f"sub-2').\n\nEpisode data: {d.name}, test rows {len(d.test_labels)}, id {d.fp}."
        )

    def _files(self) -> dict[str, str]:
        d = self.data
        return {
            TRAIN: d.train_csv,
            TEST: d.test_csv,
            SAMPLE: d.sample_csv,
            DESCRIPTION: d.description,
        }

    # -- episode hooks ---------------------------------------------------------------------
    async def setup(self, tools: Any, session_id: str) -> None:
        """Create the session and load the public files into it (the labels stay here)."""
        from timely.clock import VirtualClock
        from timely.policies.base import Deadline

        if tools is None:
            raise TaskError(f"{self.id} needs the tool server (ml_setup)")
        create = getattr(tools, "create_session", None)
        if create is not None:
            await create(session_id)
        d = self.data
        args = {
            "files": self._files(),
            "train": TRAIN,
            "test": TEST,
            "id_column": d.id_column,
            "targets": list(d.targets),
            "label_column": d.label_column,
            "kind": d.kind,
            "metric": d.metric,
            "format": d.fmt,
            "fingerprint": d.fp,
        }
        # Setup is not the agent's time: a clock of its own, so nothing is charged to the episode.
        deadline = Deadline(at=math.inf, clock=VirtualClock())
        result = None
        for attempt in range(4):  # an injected fault may hit setup like any call
            result = await tools.call(
                "ml_setup",
                args,
                call_id=f"setup-{attempt}",
                session_id=session_id,
                deadline=deadline,
            )
            if result.error is None or result.fault is None:
                break
        if result is not None and result.error is not None:
            hint = ""
            if result.error == "body_too_large":
                hint = " Raise the tool server's max_body_bytes (a --config YAML) for this data."
            raise ToolError(f"{self.id}: the tool server could not load the data: "
                            f"{result.content}.{hint}")  # fmt: skip

    async def teardown(self, tools: Any, session_id: str) -> None:
        end = getattr(tools, "end_session", None)
        if end is not None:
            await end(session_id)

    # -- scoring ---------------------------------------------------------------------------
    @property
    def calibration(self) -> Calibration:
        return calibrate(self.data)

    def target(self) -> str | None:
        """A digest of the held-out test labels the metric is computed against.

        ``"sha256:" + hexdigest`` of the labels in ``test.csv`` row order as compact JSON
        (``json.dumps(list(labels), separators=(",", ":"))``: class labels as strings,
        regression values as floats). The labels stay private; the metric, the public
        ``test.csv`` fingerprint and the reference model are in ``spec.metadata``.
        """
        return self.digest(label_text(self.data.test_labels))

    def predictions(self, answer: str | None, trajectory: Trajectory | None) -> Any:
        """What to score: a receipt in the answer, else the submission it names, else the last."""
        d = self.data
        n = len(d.test_labels)
        own = find_receipt(answer)
        if own is not None:
            decoded = decode_receipt(own, d.fp, d.kind, n)
            if decoded is not None:
                return decoded
        subs = submissions(trajectory)
        named = _SUB_RE.findall(answer or "")
        if named:
            subs = [s for s in subs if s.get("id") == f"sub-{named[-1]}"] or subs
        for sub in reversed(subs):
            decoded = decode_receipt(sub["receipt"], d.fp, d.kind, n)
            if decoded is not None:
                return decoded
        return None

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """Normalised test metric of the submission (0 without a valid one; see module doc)."""
        if not self.well_formed(answer):
            return 0.0
        preds = self.predictions(answer, trajectory)
        if preds is None:
            return 0.0
        cal = self.calibration
        value = metric(self.data.metric, self.data.test_labels, preds)
        return normalise(value, cal.baseline, cal.reference, self.data.metric)

    def test_metric(self, answer: str | None, trajectory: Trajectory | None = None) -> float | None:
        """The raw (unnormalised) test metric of what :meth:`score` would score, or None."""
        preds = self.predictions(answer, trajectory)
        return None if preds is None else metric(self.data.metric, self.data.test_labels, preds)

    # -- the oracle ------------------------------------------------------------------------
    def _calls(self) -> list[ToolCall]:
        d = self.data
        if self.mode == "code":
            peek = "print(open('data/public/train.csv').read()[:400])"
            return [
                ToolCall(id="c1", name="run_python", arguments={"code": peek}),
                ToolCall(id="c2", name="run_python", arguments={"code": self.oracle_code()}),
            ]
        calls = [ToolCall(id="c1", name="describe_data", arguments={})]
        for spec in [s for s in (d.quick, d.reference) if s is not None]:
            k = len(calls)
            model_id = f"m{len(calls) // 2 + 1}"
            args = {"estimator": spec[0], "params": dict(spec[1])}  # Datasets are shared
            calls.append(ToolCall(id=f"c{k + 1}", name="train_model", arguments=args))
            calls.append(
                ToolCall(id=f"c{k + 2}", name="submit_model", arguments={"model_id": model_id})
            )
        return calls

    def oracle_code(self) -> str:
        """The code-mode oracle: the recipe module's code, then one call fitting the reference."""
        d = self.data
        spec = {
            "train": TRAIN,
            "test": TEST,
            "out": "submission.csv",
            "id_column": d.id_column,
            "targets": list(d.targets),
            "label_column": d.label_column,
            "kind": d.kind,
            "estimator": d.reference[0],
            "params": d.reference[1],
            "format": d.fmt,
        }
        return f"{_recipe_code()}\n\nrun({json.dumps(spec)})\n"

    def solution(self) -> ScriptedSolution:
        """describe -> train quick -> submit -> train reference -> submit (tools), or one fit."""
        cal = self.calibration
        calls = self._calls()
        n_subs = sum(1 for c in calls if c.name == "submit_model") or 1
        final = f"Final: sub-{n_subs} {cal.reference_receipt}"
        fallbacks = [NO_SUBMISSION] * len(calls)
        if self.mode == "tools" and cal.quick_receipt is not None:
            fallbacks[3:] = [f"Final: sub-1 {cal.quick_receipt}"] * (len(calls) - 3)
        # What a slipping scripted policy wastes a turn on: a look that changes nothing
        # (repeating a train or submit call would renumber models and submissions).
        idle = calls[0].model_copy(update={"id": "idle"})
        return ScriptedSolution(
            calls=calls, answer=final, fallback_answers=fallbacks, idle_call=idle
        )


@functools.cache
def _recipe_code() -> str:
    """``tools/ml/recipe.py`` without its docstrings: the same code, a third fewer tokens."""
    tree = ast.parse(Path(recipe.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _sample(d: Dataset) -> str:
    public_ids = [row[0] for row in _rows(d.test_csv, d.id_column)]
    if d.kind == "regression":
        value: Any = 0.0
    elif d.fmt == "probability":
        value = 0.5
    else:
        value = d.targets[0] if d.fmt == "one_hot" else _first_label(d)
    return recipe.submission_csv(
        d.id_column, public_ids, list(d.targets), [value] * len(public_ids), d.fmt
    )


def _rows(csv_text: str, column: str) -> list[list[str]]:
    header, rows = recipe.read_csv(csv_text)
    at = header.index(column)
    return [[r[at]] for r in rows]


def _first_label(d: Dataset) -> str:
    return min(r[0].strip() for r in _rows(d.train_csv, d.label_column))
