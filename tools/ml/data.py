"""Submissions, receipts and metrics, shared by the ML tools (server) and the ML tasks (client).

A task never lets the server see its test labels, and never lets the agent see its test score.
So a submission is answered with a *receipt*: the validated predictions, compressed and tied to
the instance by a fingerprint of its ``test.csv``. The task decodes the receipt (from the tool
result in the trajectory, or from the final answer) and scores it against the labels it kept.
A receipt holds nothing but predictions, so forging one is just submitting predictions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from timely_tools.ml.recipe import read_csv

RECEIPT_PREFIX = "ml1"
RECEIPT_RE = re.compile(r"ml1\.([0-9a-f]{8})\.([A-Za-z0-9_-]+)")
# metric -> greater is better
METRICS: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_macro": True,
    "r2": True,
    "rmse": False,
    "mae": False,
}
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1_macro")
REGRESSION_METRICS = ("r2", "rmse", "mae")


def fingerprint(test_csv: str) -> str:
    """Eight hex digits naming an instance by its public ``test.csv``."""
    return hashlib.blake2b(test_csv.encode("utf-8"), digest_size=4).hexdigest()


def encode_receipt(fp: str, kind: str, predictions: Sequence[Any]) -> str:
    """``ml1.<fp>.<payload>``: labels as codes into their sorted set, or float32 values."""
    if kind == "classification":
        labels = sorted({str(p) for p in predictions})
        index = {label: i for i, label in enumerate(labels)}
        dtype = np.uint8 if len(labels) <= 256 else np.uint16
        body = np.array([index[str(p)] for p in predictions], dtype=dtype).tobytes()
        header = {"k": "c", "n": len(predictions), "labels": labels}
    else:
        body = np.asarray(predictions, dtype="<f4").tobytes()
        header = {"k": "r", "n": len(predictions)}
    raw = json.dumps(header, separators=(",", ":")).encode() + b"\n" + body
    payload = base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()
    return f"{RECEIPT_PREFIX}.{fp}.{payload}"


def decode_receipt(receipt: str, fp: str, kind: str, n: int) -> list[str] | np.ndarray | None:
    """The predictions of a receipt for this instance, or None if it is malformed or foreign."""
    match = RECEIPT_RE.fullmatch(receipt.strip())
    if match is None or match[1] != fp:
        return None
    data = match[2]
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if not isinstance(header, dict) or header.get("n") != n:
            return None
        if kind == "classification" and header.get("k") == "c":
            labels = [str(x) for x in header["labels"]]
            dtype = np.uint8 if len(labels) <= 256 else np.uint16
            codes = np.frombuffer(body, dtype=dtype)
            if codes.size != n or (n and int(codes.max()) >= len(labels)):
                return None
            return [labels[int(c)] for c in codes]
        if kind == "regression" and header.get("k") == "r":
            values = np.frombuffer(body, dtype="<f4").astype(float)
            return values if values.size == n and np.isfinite(values).all() else None
    except (ValueError, TypeError, KeyError, zlib.error):
        return None
    return None


def find_receipt(text: str | None) -> str | None:
    """The first receipt written in ``text``, if any."""
    match = RECEIPT_RE.search(text or "")
    return match[0] if match else None


def metric(name: str, y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """One of :data:`METRICS` (labels compare as text; regression values as floats)."""
    if name in CLASSIFICATION_METRICS:
        t = np.asarray([str(v) for v in y_true])
        p = np.asarray([str(v) for v in y_pred])
        if name == "accuracy":
            return float(np.mean(t == p)) if t.size else 0.0
        if name == "balanced_accuracy":
            return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))
        scores = []
        for c in np.union1d(t, p):
            tp = float(np.sum((t == c) & (p == c)))
            denom = float(np.sum(t == c) + np.sum(p == c))
            scores.append(2 * tp / denom if denom else 0.0)
        return float(np.mean(scores))
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    if name == "r2":
        ss_res = float(np.sum((t - p) ** 2))
        ss_tot = float(np.sum((t - t.mean()) ** 2))
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else float(ss_res == 0)
    if name == "rmse":
        return float(np.sqrt(np.mean((t - p) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(t - p)))
    raise ValueError(f"unknown metric {name!r}; use one of {sorted(METRICS)}")


def normalise(value: float, baseline: float, reference: float, metric_name: str) -> float:
    """``(value - baseline) / (reference - baseline)`` clipped to [0, 1] (any metric direction).

    When the reference is no better than the baseline, matching the reference scores 1.
    """
    better = METRICS[metric_name]
    gap = reference - baseline
    if (gap <= 1e-12) if better else (gap >= -1e-12):
        return 1.0 if (value >= reference if better else value <= reference) else 0.0
    return float(min(1.0, max(0.0, (value - baseline) / gap)))


def _as_label(value: str, labels: Sequence[str]) -> str:
    value = value.strip()
    if value in labels:
        return value
    try:  # "1.0" for the label "1"
        number = float(value)
        for label in labels:
            if math.isfinite(number) and float(label) == number:
                return label
    except ValueError:
        pass
    shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
    raise ValueError(f"{value!r} is not a known label; use one of: {shown}")


def parse_submission(
    text: str,
    *,
    id_column: str,
    targets: Sequence[str],
    test_ids: Sequence[str],
    kind: str,
    fmt: str,
    labels: Sequence[str] = (),
) -> list[Any]:
    """Validate ``submission.csv`` text and return its predictions in ``test_ids`` order.

    Args:
        text: the file's content.
        id_column: the row-id column.
        targets: the prediction column(s) (class names for ``one_hot``).
        test_ids: every test id, each of which must appear exactly once.
        kind: ``classification`` or ``regression``.
        fmt: ``label``, ``probability`` (binary: P(positive), positive = the last of
            ``labels``) or ``one_hot`` (one score column per class; the largest wins).
        labels: the known class labels (classification).

    Raises:
        ValueError: with a message that says what to fix.
    """
    header, rows = read_csv(text)
    missing = [c for c in [id_column, *targets] if c not in header]
    if missing:
        raise ValueError(f"submission.csv needs the column(s) {missing}; its header is {header}")
    at = header.index(id_column)
    cols = [header.index(c) for c in targets]
    by_id: dict[str, list[str]] = {}
    for row in rows:
        row_id = row[at].strip()
        if row_id in by_id:
            raise ValueError(f"id {row_id!r} appears twice in submission.csv")
        by_id[row_id] = [row[c] for c in cols]
    lost = [i for i in test_ids if i not in by_id]
    extra = len(by_id) - (len(test_ids) - len(lost))
    if lost or extra:
        raise ValueError(
            f"submission.csv must have one row per test id ({len(test_ids)} rows): "
            f"{len(lost)} missing (e.g. {lost[:3]}), {extra} unknown"
        )
    out: list[Any] = []
    for row_id in test_ids:
        values = by_id[row_id]
        try:
            out.append(_prediction(values, kind, fmt, targets, labels))
        except ValueError as exc:
            raise ValueError(f"id {row_id!r}: {exc}") from None
    return out


def _prediction(
    values: list[str], kind: str, fmt: str, targets: Sequence[str], labels: Sequence[str]
) -> Any:
    if kind == "regression":
        value = float(values[0])
        if not math.isfinite(value):
            raise ValueError("predictions must be finite numbers")
        return value
    if fmt == "probability":
        p = float(values[0])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"a probability must be in [0, 1], got {p}")
        return labels[-1] if p >= 0.5 else labels[0]
    if fmt == "one_hot":
        scores = [float(v) for v in values]
        return targets[int(np.argmax(scores))]
    return _as_label(values[0], labels)
