"""JSON Schemas of the ML tools' answers (MCP ``outputSchema``; answers: ``structuredContent``).

Kept apart from the handlers so ``tools/ml/tools.py`` reads as behaviour. Every schema describes
exactly the object its handler builds; tests/unit/tools/test_tool_hints.py validates real answers
of every tool against them, on both clocks (``train_s`` is present on wall clocks only).
"""

from __future__ import annotations

from typing import Any

_NUMBER = {"type": "number"}
_SCORES = {
    "description": "Metric name -> value, or null when there are no rows to score.",
    "anyOf": [{"type": "object", "additionalProperties": _NUMBER}, {"type": "null"}],
}
_TRAIN_S = {"type": "number", "description": "Measured fit seconds (wall clocks only)."}

SUBMISSION: dict[str, Any] = {
    "type": "object",
    "description": "A recorded submission (its receipt is scored after the episode), or why a "
    "submission.csv was refused.",
    "properties": {
        "id": {"type": "string", "description": "e.g. sub-1; a final answer may name it."},
        "model_id": {"type": "string"},
        "file": {"type": "string"},
        "rows": {"type": "integer"},
        "receipt": {"type": "string", "description": "Encoded predictions (ml1.FP.PAYLOAD)."},
        "error": {"type": "string"},
    },
    "additionalProperties": False,
}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


SETUP_OUTPUT = _object(
    {
        "ok": {"const": True},
        "fingerprint": {"type": "string"},
        "train_rows": {"type": "integer"},
        "test_rows": {"type": "integer"},
        "features": {"type": "integer"},
    },
    ["ok", "fingerprint", "train_rows", "test_rows", "features"],
)

_STATS = {"mean": _NUMBER, "std": _NUMBER, "min": _NUMBER, "max": _NUMBER}
DESCRIBE_OUTPUT = _object(
    {
        "task": {"enum": ["classification", "regression"]},
        "target": {"type": "string"},
        "metric": {"type": "string"},
        "higher_is_better": {"type": "boolean"},
        "rows": _object(
            {split: {"type": "integer"} for split in ("train", "validation", "test")},
            ["train", "validation", "test"],
        ),
        "target_summary": {
            "type": "object",
            "description": "classification: {counts: {label: n}}; regression: mean/std/min/max.",
            "properties": {
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                **_STATS,
            },
            "additionalProperties": False,
        },
        "features": {
            "type": "array",
            "items": _object({"name": {"type": "string"}, **_STATS}, ["name", *_STATS]),
        },
        "more_features": {"type": "integer", "description": "Features not listed."},
        "estimators": {
            "type": "object",
            "description": "Estimator -> the hyperparameters train_model accepts for it.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "note": {"type": "string"},
    },
    ["task", "target", "metric", "higher_is_better", "rows", "target_summary", "features",
     "estimators", "note"],
)  # fmt: skip

TRAIN_OUTPUT = _object(
    {
        "model_id": {"type": "string", "description": "e.g. m1, for evaluate/submit_model."},
        "estimator": {"type": "string"},
        "params": {"type": "object"},
        "validation": _SCORES,
        "train_s": _TRAIN_S,
    },
    ["model_id", "estimator", "params", "validation"],
)

EVALUATE_OUTPUT = _object(
    {
        "model_id": {"type": "string"},
        "validation": _SCORES,
        "train": _SCORES,
        "confusion": {
            "type": "object",
            "description": "true label -> predicted label -> count (validation rows).",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
    ["model_id", "validation", "train"],
)

SUBMIT_OUTPUT = _object(
    {"submission": SUBMISSION, "train_s": _TRAIN_S, "note": {"type": "string"}},
    ["submission", "note"],
)
