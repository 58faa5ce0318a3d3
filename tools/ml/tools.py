"""Structured ML tools: look at the data, train small scikit-learn models, submit predictions.

One episode's data lives in its tool-server session (:class:`MLSession`, ``ctx.state["ml"]``),
loaded by the task's setup through ``ml_setup`` (a tool the model is never offered). Training
runs for real, in a worker thread so the server keeps serving: on a wall clock its time is part
of the call's time; on a virtual clock the call costs the injected latency plus the seconds the
work model (:mod:`timely_tools.ml.work`) assigns to its fits and predictions, which depend on the
call alone, and measured times are left out of the answers, so replays are exact.
The test labels never reach the server: ``submit_model`` answers with a receipt of the
predictions (:mod:`timely_tools.ml.data`) that the task scores.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import os
import posixpath
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from timely.clock import wall_seconds
from timely.extras import MissingExtra, require_extra
from timely.rng import make_rng
from timely_tools.base import ToolContext, ToolInputError, tool
from timely_tools.ml import blas, recipe, work
from timely_tools.ml.data import (
    CLASSIFICATION_METRICS,
    METRICS,
    REGRESSION_METRICS,
    encode_receipt,
    fingerprint,
    metric,
    parse_submission,
)
from timely_tools.ml.schemas import (
    DESCRIBE_OUTPUT,
    EVALUATE_OUTPUT,
    SETUP_OUTPUT,
    SUBMIT_OUTPUT,
    TRAIN_OUTPUT,
)
from timely_tools.sandbox.core import SandboxLimits, Workspace
from timely_tools.sandbox.tool import LIMITS_KEY, session_workspace

ML_KEY = "ml"
SUBMISSION_FILE = "submission.csv"
MAX_UPLOAD_CHARS = 32 << 20
MAX_MODELS = 100
_SHOWN_FEATURES = 30
# Parsed uploads kept for the next session that uploads the same files (see _load_public);
# larger uploads are parsed per session, so the cache stays small.
_PARSED_MAX = 32
_PARSED_MAX_CHARS = 4 << 20
_VALIDATORS = {
    name: Draft202012Validator(
        {"type": "object", "properties": spec["params"], "additionalProperties": False}
    )
    for name, spec in recipe.ESTIMATORS.items()
}


@functools.cache
def bundled_datasets() -> tuple[str, ...]:
    """Where scikit-learn keeps its bundled datasets: what the tasks' test labels come from,
    so the sandbox keeps it unreadable (found without importing scikit-learn)."""
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec else None
    return tuple(os.path.join(r, "datasets", "data") for r in roots or ())


def _round(x: float) -> float:
    return float(f"{x:.4g}")


_parsed: OrderedDict[tuple[str, ...], dict[str, Any]] = OrderedDict()
_parsed_lock = threading.Lock()


def _load_public(train: str, test: str, id_column: str, label: str) -> dict[str, Any]:
    """``recipe.load`` of an upload, cached: parsing is a pure function of the texts, and a
    suite uploads each instance's files once per episode. The arrays are read-only and the
    lists copied by :class:`MLSession`, so no session can change what another one reads.

    Raises:
        ValueError: the files cannot be read (never cached).
    """
    key = (train, test, id_column, label)
    with _parsed_lock:
        data = _parsed.get(key)
        if data is not None:
            _parsed.move_to_end(key)
            return data
    data = recipe.load(train, test, id_column, [label])
    data["x_train"].setflags(write=False)
    data["x_test"].setflags(write=False)
    if len(train) + len(test) <= _PARSED_MAX_CHARS:
        with _parsed_lock:
            _parsed[key] = data
            while len(_parsed) > _PARSED_MAX:
                _parsed.popitem(last=False)
    return data


class MLSession:
    """One episode's data, trained models and submissions. Closed with the session.

    Its models fit and predict only while it is open, and it holds BLAS to one thread for as
    long (:mod:`timely_tools.ml.blas`).
    """

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any], workspace: Workspace) -> None:
        self.workspace = workspace
        self.kind: str = cfg["kind"]
        self.id_column: str = cfg["id_column"]
        self.targets: list[str] = list(cfg["targets"])
        self.label_column: str = cfg.get("label_column") or self.targets[0]
        self.metric: str = cfg["metric"]
        self.format: str = cfg.get("format", "label")
        self.fp: str = cfg["fingerprint"]
        self.features: list[str] = list(data["features"])
        self.x = data["x_train"]  # read-only: shared with other sessions of the same data
        self.y = [row[0] for row in data["y_train"]]
        self.x_test = data["x_test"]
        self.test_ids: list[str] = list(data["test_ids"])
        # describe_data's statistics, by task kind: pure in the data, so kept with it
        self.summaries: dict[str, Any] = data.setdefault("summaries", {})
        self.labels = sorted(set(self.y)) if self.kind == "classification" else []
        if self.format == "one_hot":
            self.labels = list(self.targets)
        n = len(self.y)
        n_val = round(float(cfg.get("val_fraction", 0.2)) * n) if n >= 5 else 0
        perm = make_rng("ml-validation", self.fp).permutation(n)
        self.val_idx = np.sort(perm[:n_val])
        self.fit_idx = np.sort(perm[n_val:])
        self.models: dict[str, dict[str, Any]] = {}
        self.submissions = 0
        self._seen_file: str | None = None
        blas.hold()
        self._holds_blas = True

    def close(self) -> None:
        self.workspace.close()
        if self._holds_blas:
            self._holds_blas = False
            blas.release()

    @property
    def classes(self) -> int:
        """Distinct labels (1 for regression), for the work model."""
        return len(self.labels) if self.kind == "classification" else 1

    def fit_work(self, name: str, params: dict[str, Any], rows: int, cols: list[int]) -> float:
        """Modelled seconds of fitting ``name`` on ``rows`` rows of ``cols``."""
        return work.fit_s(name, self.kind, params, rows, len(cols), self.classes)

    def predict_work(self, entry: dict[str, Any], rows: int, fitted: int | None = None) -> float:
        """Modelled seconds of predicting ``rows`` rows with the model ``entry`` describes,
        fitted on ``fitted`` rows (``train_model``'s fit rows when None)."""
        name, params, d = entry["estimator"], entry["params"], len(entry["cols"])
        fitted = len(self.fit_idx) if fitted is None else fitted
        return work.predict_s(name, self.kind, params, fitted, rows, d, self.classes)

    def cols(self, features: list[str] | None) -> list[int]:
        if not features:
            return list(range(len(self.features)))
        unknown = [f for f in features if f not in self.features]
        if unknown:
            raise ToolInputError(f"unknown feature(s) {unknown}; describe_data lists them")
        return [self.features.index(f) for f in features]

    def receipt(self, predictions: list[Any], **extra: Any) -> dict[str, Any]:
        self.submissions += 1
        sub = {"id": f"sub-{self.submissions}", **extra, "rows": len(predictions)}
        sub["receipt"] = encode_receipt(self.fp, self.kind, predictions)
        return sub

    def check_file(self, ws: Workspace) -> dict[str, Any] | None:
        """After a code run: a receipt for a new or changed ``submission.csv`` (else nothing)."""
        raw = _read_plain_file(ws.path / SUBMISSION_FILE)
        if raw is None:
            return None
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if digest == self._seen_file:
            return None
        self._seen_file = digest
        try:
            preds = parse_submission(
                raw.decode("utf-8-sig"),
                id_column=self.id_column,
                targets=self.targets,
                test_ids=self.test_ids,
                kind=self.kind,
                fmt=self.format,
                labels=self.labels,
            )
        except (ValueError, UnicodeDecodeError) as exc:
            return {"submission": {"file": SUBMISSION_FILE, "error": str(exc)}}
        return {"submission": self.receipt(preds, file=SUBMISSION_FILE)}


def _read_plain_file(path: Any) -> bytes | None:
    """A regular file's bytes, never through a link: the agent controls the workspace, and a
    ``submission.csv`` symlink to a server file must not be read (let alone echoed back)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        return f.read(MAX_UPLOAD_CHARS)


def _session(ctx: ToolContext) -> MLSession:
    ml = (ctx.state or {}).get(ML_KEY)
    if not isinstance(ml, MLSession):
        raise ToolInputError("no dataset is loaded in this session (the task sets it up)")
    return ml


_SETUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "train": {"type": "string"},
        "test": {"type": "string"},
        "id_column": {"type": "string"},
        "targets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "label_column": {"type": "string"},
        "kind": {"enum": ["classification", "regression"]},
        "metric": {"enum": sorted(METRICS)},
        "format": {"enum": ["label", "probability", "one_hot"]},
        "val_fraction": {"type": "number", "minimum": 0, "maximum": 0.5},
        "fingerprint": {"type": "string"},
        "limits": {"type": "object"},
    },
    "required": ["files", "train", "test", "id_column", "targets", "kind", "metric"],
    "additionalProperties": False,
}


@tool(
    "ml_setup",
    description="Internal: load an episode's public data into its session (called by the "
    "task's setup, never offered to the model).",
    parameters=_SETUP_SCHEMA,
    title="Load the episode's data",
    destructive=False,  # refuses a second upload: it only adds the session's dataset
    output_schema=SETUP_OUTPUT,
)
async def ml_setup(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Write the public files into the session workspace and parse train/test."""
    try:  # every ML episode starts here: a light install says which extra the server lacks
        require_extra("ml", "ml_setup (the ML tools)")
    except MissingExtra as exc:
        raise ToolInputError(str(exc)) from None
    if ctx.state is None:
        raise ToolInputError("ml_setup needs a session")
    if ML_KEY in ctx.state:
        raise ToolInputError("this session already has a dataset")
    files: dict[str, str] = arguments["files"]
    if sum(len(v) for v in files.values()) > MAX_UPLOAD_CHARS:
        raise ToolInputError(f"the files exceed {MAX_UPLOAD_CHARS} characters")
    for name in files:
        clean = posixpath.normpath(name)
        if name.startswith("/") or clean.startswith("..") or clean != name:
            raise ToolInputError(f"file name {name!r} must be a plain relative path")
    for key in ("train", "test"):
        if arguments[key] not in files:
            raise ToolInputError(f"{key}={arguments[key]!r} is not among the uploaded files")
    cfg = dict(arguments)
    fp = fingerprint(files[cfg["test"]])
    if cfg.setdefault("fingerprint", fp) != fp:
        raise ToolInputError(f"fingerprint {cfg['fingerprint']!r} does not match test.csv ({fp})")
    try:
        limits = SandboxLimits(**arguments.get("limits", {}))
    except ValueError as exc:
        raise ToolInputError(f"limits: {exc}") from None
    limits = limits.model_copy(update={"deny_read": (*limits.deny_read, *bundled_datasets())})
    label = cfg.get("label_column") or cfg["targets"][0]

    def load() -> dict[str, Any]:  # one trip to a worker thread for both
        recipe.warm_up()
        return _load_public(files[cfg["train"]], files[cfg["test"]], cfg["id_column"], label)

    try:
        data = await anyio.to_thread.run_sync(load)
    except ValueError as exc:
        raise ToolInputError(f"cannot read the data: {exc}") from None
    ws = session_workspace(ctx)
    assert ws is not None
    # In a worker thread: each file system call would hand the GIL to the threads fitting
    # other episodes' models and wait to get it back, stalling every session on the loop.
    await anyio.to_thread.run_sync(_write_files, ws.path, files)
    ml = ctx.state[ML_KEY] = MLSession(cfg, data, ws)
    ctx.state[LIMITS_KEY] = limits
    ws.observers.append(ml.check_file)
    return {
        "ok": True,
        "fingerprint": ml.fp,
        "train_rows": len(ml.y),
        "test_rows": len(ml.test_ids),
        "features": len(ml.features),
    }


def _write_files(root: Path, files: dict[str, str]) -> None:
    for folder in sorted({posixpath.dirname(name) for name in files} - {""}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": _round(float(values.mean())),
        "std": _round(float(values.std())),
        "min": _round(float(values.min())),
        "max": _round(float(values.max())),
    }


@tool(
    "describe_data",
    description="Describe this episode's dataset: task type, metric, row counts, feature "
    "statistics, the target's distribution and the estimators train_model accepts.",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
    title="Describe the data",
    read_only=True,
    idempotent=True,
    output_schema=DESCRIBE_OUTPUT,
)
async def describe_data(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """A compact summary of the loaded data (no test labels exist on the server)."""
    ml = _session(ctx)
    features, target = _summary(ml)
    shown: dict[str, Any] = {"features": features[:_SHOWN_FEATURES]}
    if len(features) > _SHOWN_FEATURES:
        shown["more_features"] = len(features) - _SHOWN_FEATURES
    estimators = {
        name: sorted(spec["params"])
        for name, spec in recipe.ESTIMATORS.items()
        if ml.kind in spec["kinds"]
    }
    return {
        "task": ml.kind,
        "target": ml.label_column,
        "metric": ml.metric,
        "higher_is_better": METRICS[ml.metric],
        "rows": {"train": len(ml.y), "validation": len(ml.val_idx), "test": len(ml.test_ids)},
        "target_summary": target,
        **shown,
        "estimators": estimators,
        "note": "train_model fits on the train rows minus the validation rows and scores on "
        "the validation rows; submit_model refits on all train rows and predicts the test rows.",
    }


def _summary(ml: MLSession) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-feature statistics and the target's summary (copies of the ones kept with the data:
    every session of an upload, and every describe_data call, sees the same numbers)."""
    if ml.kind not in ml.summaries:
        features = [{"name": name, **_stats(ml.x[:, j])} for j, name in enumerate(ml.features)]
        if ml.kind == "classification":
            labels, counts = np.unique(np.array(ml.y), return_counts=True)
            target: dict[str, Any] = {
                "counts": dict(zip(labels.tolist(), counts.tolist(), strict=True))
            }
        else:
            target = _stats(np.array(ml.y, dtype=float))
        ml.summaries[ml.kind] = (features, target)
    features, target = ml.summaries[ml.kind]
    return [dict(f) for f in features], copy.deepcopy(target)


_ESTIMATOR_NAMES = sorted(recipe.ESTIMATORS)


@tool(
    "train_model",
    description="Train a scikit-learn model on the training rows (minus a fixed validation "
    "split) and report its validation score. Estimators: " + ", ".join(_ESTIMATOR_NAMES) + ". "
    'Hyperparameters go in params, e.g. {"n_estimators": 200, "max_depth": 8}; '
    "describe_data lists each estimator's parameters.",
    parameters={
        "type": "object",
        "properties": {
            "estimator": {"enum": _ESTIMATOR_NAMES, "description": "Which model to train."},
            "params": {
                "type": "object",
                "description": "Hyperparameters (omitted ones keep scikit-learn defaults).",
            },
            "features": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Use only these feature columns (default: all).",
            },
        },
        "required": ["estimator"],
        "additionalProperties": False,
    },
    title="Train a model",
    destructive=False,  # each fit is kept under a new model id
    output_schema=TRAIN_OUTPUT,
)
async def train_model(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Fit, score on the validation rows, and keep the model for evaluate/submit."""
    ml = _session(ctx)
    name = arguments["estimator"]
    params = dict(arguments.get("params") or {})
    if ml.kind not in recipe.ESTIMATORS[name]["kinds"]:
        raise ToolInputError(f"{name} does not do {ml.kind}; describe_data lists the ones that do")
    error = best_match(_VALIDATORS[name].iter_errors(params))
    if error is not None:
        where = error.json_path.removeprefix("$.") or "params"
        raise ToolInputError(f"{name} params: {where}: {error.message}")
    if len(ml.models) >= MAX_MODELS:
        raise ToolInputError(f"at most {MAX_MODELS} models per episode")
    cols = ml.cols(arguments.get("features"))
    x, y = ml.x[np.ix_(ml.fit_idx, cols)], [ml.y[i] for i in ml.fit_idx]
    t0 = wall_seconds()
    model = await anyio.to_thread.run_sync(recipe.fit, name, ml.kind, params, x, y)
    train_s = wall_seconds() - t0
    model_id = f"m{len(ml.models) + 1}"
    entry = {"estimator": name, "params": params, "cols": cols, "model": model}
    ml.models[model_id] = entry
    ctx.work.add(ml.fit_work(name, params, len(ml.fit_idx), cols))
    ctx.work.add(ml.predict_work(entry, len(ml.val_idx)))
    out: dict[str, Any] = {"model_id": model_id, "estimator": name, "params": params}
    out["validation"] = await _scores(ml, model, cols, ml.val_idx, (ml.metric,))
    if ctx.clock == "wall":
        out["train_s"] = round(train_s, 3)
    return out


async def _scores(
    ml: MLSession, model: Any, cols: list[int], rows: np.ndarray, names: tuple[str, ...]
) -> dict[str, float] | None:
    if len(rows) == 0:
        return None
    x = ml.x[np.ix_(rows, cols)]
    preds = await anyio.to_thread.run_sync(recipe.predict, model, ml.kind, x)
    truth = [ml.y[i] for i in rows]
    return {n: _round(metric(n, truth, preds)) for n in names}


def _model(ml: MLSession, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    model_id = arguments["model_id"]
    if model_id not in ml.models:
        known = ", ".join(ml.models) or "none yet; call train_model first"
        raise ToolInputError(f"no model {model_id!r}; trained models: {known}")
    return model_id, ml.models[model_id]


_MODEL_ID = {
    "type": "object",
    "properties": {"model_id": {"type": "string", "description": "From train_model, e.g. m1."}},
    "required": ["model_id"],
    "additionalProperties": False,
}


@tool(
    "evaluate_model",
    description="All validation and training metrics of a trained model (for classification "
    "also the validation confusion counts), to compare models and spot overfitting.",
    parameters=_MODEL_ID,
    title="Evaluate a model",
    read_only=True,
    idempotent=True,
    output_schema=EVALUATE_OUTPUT,
)
async def evaluate_model(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Every metric of the task's kind on the validation and the fit rows."""
    ml = _session(ctx)
    model_id, entry = _model(ml, arguments)
    names = CLASSIFICATION_METRICS if ml.kind == "classification" else REGRESSION_METRICS
    out: dict[str, Any] = {"model_id": model_id}
    out["validation"] = await _scores(ml, entry["model"], entry["cols"], ml.val_idx, names)
    out["train"] = await _scores(ml, entry["model"], entry["cols"], ml.fit_idx, names)
    ctx.work.add(ml.predict_work(entry, len(ml.val_idx)) + ml.predict_work(entry, len(ml.fit_idx)))
    if ml.kind == "classification" and len(ml.val_idx) and len(ml.labels) <= 10:
        ctx.work.add(ml.predict_work(entry, len(ml.val_idx)))
        x = ml.x[np.ix_(ml.val_idx, entry["cols"])]
        preds = recipe.predict(entry["model"], ml.kind, x)
        confusion: dict[str, dict[str, int]] = {}
        for i, p in zip(ml.val_idx, preds, strict=True):
            row = confusion.setdefault(ml.y[i], {})
            row[str(p)] = row.get(str(p), 0) + 1
        out["confusion"] = {t: dict(sorted(r.items())) for t, r in sorted(confusion.items())}
    return out


@tool(
    "submit_model",
    description="Refit a trained model's configuration on all training rows, predict the "
    "test rows and record that as a submission (the test score is not shown). The last "
    "submission counts unless your final answer names another one, e.g. 'sub-1'.",
    parameters=_MODEL_ID,
    title="Submit a model's predictions",
    destructive=False,  # earlier submissions stay and can still be named in the answer
    output_schema=SUBMIT_OUTPUT,
)
async def submit_model(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Refit on train + validation rows, predict test, answer with a receipt."""
    ml = _session(ctx)
    model_id, entry = _model(ml, arguments)
    cols = entry["cols"]
    t0 = wall_seconds()
    model = await anyio.to_thread.run_sync(
        recipe.fit, entry["estimator"], ml.kind, entry["params"], ml.x[:, cols], ml.y
    )
    preds = await anyio.to_thread.run_sync(recipe.predict, model, ml.kind, ml.x_test[:, cols])
    train_s = wall_seconds() - t0
    ctx.work.add(ml.fit_work(entry["estimator"], entry["params"], len(ml.y), cols))
    ctx.work.add(ml.predict_work(entry, len(ml.test_ids), fitted=len(ml.y)))
    out: dict[str, Any] = {"submission": ml.receipt(preds, model_id=model_id)}
    if ctx.clock == "wall":
        out["train_s"] = round(train_s, 3)
    out["note"] = "Recorded; the test score is revealed only after the episode."
    return out
