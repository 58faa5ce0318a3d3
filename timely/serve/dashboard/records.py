"""Trajectory lines and results.json files, read as plain JSON into what the page shows.

The dashboard reads the files other layers write (``timely eval``, ``timely leaderboard``, the
agent endpoint) without importing those layers: the core must not depend on them, and a viewer
should also show records a little older or newer than this code's :class:`~timely.types.Trajectory`
schema. So a line is parsed with :func:`json.loads` and only the fields the page needs are taken,
each checked; a line that is not a trajectory is reported, never fatal.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from timely.runrecord import classify, episode_key, graded

_REQUIRED = ("task_id", "budget_s", "end_reason", "steps")
TEXT_LIMIT = 4000  # characters of a step's text or a tool result kept in an episode's detail
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class NotATrajectory(ValueError):
    """A JSONL line is not a trajectory record; the message says which field is wrong."""


def _num(record: dict[str, Any], key: str, default: float | None = 0.0) -> float | None:
    value = record.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotATrajectory(f"{key} is {value!r}, not a number")
    return float(value) if math.isfinite(value) else default


def _text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def parse_line(line: bytes | str) -> dict[str, Any]:
    """Decode one JSONL line into a trajectory dict.

    Raises:
        NotATrajectory: not JSON, not an object, or missing a field the dashboard needs.
    """
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise NotATrajectory(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise NotATrajectory(f"a JSON {type(record).__name__}, not an object")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise NotATrajectory(f"no {', '.join(missing)}")
    if not isinstance(record["steps"], list) or not all(
        isinstance(s, dict) for s in record["steps"]
    ):
        raise NotATrajectory("steps is not a list of objects")
    return record


def episode_id(record: dict[str, Any], lineno: int) -> str:
    """The episode's id within its file, for URLs: its episode key, else ``L<line number>``.

    The key is the run record's (:func:`timely.runrecord.episode_key`), so the dashboard
    deduplicates exactly as ``timely show`` and the leaderboard do; a key with characters a URL
    would need escaped falls back to the line number.
    """
    key = episode_key(record.get("metadata"))
    return key if key and set(key) <= _ID_CHARS else f"L{lineno}"


def summarize(record: dict[str, Any], episode_id: str, source: str) -> dict[str, Any]:
    """One row of the episode list: who played what, under which budget, and how it ended.

    Raises:
        NotATrajectory: a field the row needs has the wrong type.
    """
    meta = record.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    task = str(record["task_id"])
    budget_s = _num(record, "budget_s")
    score = _num(record, "score") or 0.0
    compliant = bool(record.get("compliant", False))
    end = str(record["end_reason"])
    steps = record["steps"]
    calls = sum(len(s.get("tool_calls") or []) for s in steps)
    tool_errors = sum(int(s.get("tool_errors") or 0) for s in steps)
    return {
        "id": episode_id,
        "source": source,
        "task": task,
        "family": task.split("/", 1)[0],
        "seed": record.get("seed"),
        "sample": record.get("sample", 0),
        "split": record.get("split"),
        "policy": str(meta.get("label") or record.get("policy") or "?"),
        "policy_spec": record.get("policy", ""),
        "latency": str(record.get("latency") or "unknown"),
        "budget": str(meta.get("budget_label") or f"{budget_s:g}s"),
        "budget_s": budget_s,
        "overrun": record.get("overrun", "hard"),
        "clock": record.get("clock"),
        "elapsed_s": _num(record, "elapsed_s"),
        "gen_s": _num(record, "gen_s"),
        "tool_s": _num(record, "tool_s"),
        "score": score,
        "compliant": compliant,
        "reward": _num(record, "reward"),
        "end_reason": end,
        "outcome": classify(
            end, compliant, score, graded=graded(record.get("target"), record.get("schema_version"))
        ).value,
        "steps": len(steps),
        "tool_calls": calls,
        "tool_errors": tool_errors,
        "answer": _text(record.get("final_answer"), 160),
        "error": _text(record.get("error"), 300),
        "phase": meta.get("phase"),
    }


def detail(record: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Everything the timeline of one episode draws: each step's generation and tool spans.

    A step starts with generation (``started_at`` .. ``started_at + gen_s``); its tool calls
    follow one after another, each charged ``charged_s`` (the latency the server injected, plus
    work time); ``ended_at`` closes the step. Times are seconds from the episode's start.
    """
    steps = []
    for i, s in enumerate(record["steps"]):
        started = _num(s, "started_at") or 0.0
        gen = _num(s, "gen_s") or 0.0
        results = {r.get("call_id"): r for r in s.get("tool_results") or [] if isinstance(r, dict)}
        calls = []
        for call in s.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            result = results.get(call.get("id"), {})
            calls.append(
                {
                    "name": str(call.get("name", "?")),
                    "arguments": _text(call.get("arguments"), 600),
                    "charged_s": _num(result, "charged_s"),
                    "latency_s": _num(result, "latency_s"),
                    "error": result.get("error"),
                    "fault": result.get("fault"),
                    "retries": result.get("retries", 0),
                    "result": _text(result.get("content")),
                    "made": bool(result),  # a call the budget left no time for has no result
                }
            )
        steps.append(
            {
                "index": s.get("index", i),
                "started_at": started,
                "ended_at": _num(s, "ended_at", None) or started + gen + (_num(s, "tool_s") or 0),
                "gen_s": gen,
                "tool_s": _num(s, "tool_s"),
                "prompt_tokens": s.get("prompt_tokens", 0),
                "completion_tokens": s.get("completion_tokens", 0),
                "finish_reason": s.get("finish_reason"),
                "text": _text(s.get("text")),
                "malformed_calls": s.get("malformed_calls", 0),
                "usage_estimated": bool(s.get("usage_estimated", False)),
                "calls": calls,
            }
        )
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    prompt = next(
        (m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"),
        None,
    )
    answered = summary["end_reason"] == "answered"
    return {
        **summary,
        "answer": _text(record.get("final_answer")),
        "error": _text(record.get("error")),
        "target": _text(record.get("target"), 300),
        "prompt": _text(prompt),
        "answer_at": summary["elapsed_s"] if answered else None,
        "cut_at": summary["elapsed_s"] if summary["outcome"] == "cut_off" else None,
        "metadata": record.get("metadata") if isinstance(record.get("metadata"), dict) else {},
        "config_hash": record.get("config_hash"),
        "timeline": steps,
    }


# ---- leaderboard tables --------------------------------------------------------------------

_ROW_NUMBERS = (
    "n",
    "score",
    "score_lo",
    "score_hi",
    "raw_score",
    "compliance",
    "mean_elapsed_s",
    "p95_elapsed_s",
    "mean_budget_s",
    "tool_calls",
    "turns",
    "gen_tokens",
    "gen_share",
    "tool_share",
)


def _row(raw: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "policy": str(raw.get("policy", "?")),
        "task": raw.get("task"),
        "latency": raw.get("latency"),
        "budget": raw.get("budget"),
    }
    for key in _ROW_NUMBERS:
        value = raw.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        row[key] = value if ok and math.isfinite(value) else None
    by_lat = raw.get("by_latency")
    if isinstance(by_lat, dict):
        row["by_latency"] = {str(k): v for k, v in by_lat.items() if isinstance(v, int | float)}
    auc = raw.get("auc")
    if isinstance(auc, dict):
        row["auc"] = {str(k): _auc(v) for k, v in auc.items() if isinstance(v, dict)}
    return row


def _auc(raw: dict[str, Any]) -> dict[str, float | None]:
    """One protocol's anytime AUC of an overview row (``auc``, ``auc_lo``, ``auc_hi``)."""
    out: dict[str, float | None] = {}
    for key in ("auc", "auc_lo", "auc_hi"):
        value = raw.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        out[key] = float(value) if ok and math.isfinite(value) else None
    return out


def is_report(results: Any) -> bool:
    """A ``timely leaderboard`` results.json (per family: overview and cells)."""
    fams = results.get("families") if isinstance(results, dict) else None
    return isinstance(fams, list) and any(isinstance(f, dict) and "overview" in f for f in fams)


def tables_from_results(results: Any) -> list[dict[str, Any]]:
    """The leaderboard tables of a results.json, whichever command wrote it.

    ``timely leaderboard`` writes per family an ``overview`` (one row per policy) and ``cells``
    (policy x latency x budget); ``timely eval`` writes flat ``families`` rows (policy x family
    x latency x budget). Both become ``{family, level, latencies, budgets, rows}`` tables; a
    leaderboard's also carry ``auc_protocols``, and its overview rows ``auc`` (protocol ->
    anytime AUC with its interval).

    Raises:
        ValueError: the JSON is neither shape.
    """
    if is_report(results):
        tables = []
        for fam in results["families"]:
            if not isinstance(fam, dict):
                continue
            base = {
                "family": str(fam.get("family", "?")),
                "tasks": [str(t) for t in fam.get("tasks") or []],
                "latencies": [str(x) for x in fam.get("latencies") or []],
                "budgets": [str(b) for b in fam.get("budgets") or []],
                # Budget protocols with an anytime AUC (a sweep of several multipliers): the
                # overview gets one AUC column each; none for a one-budget sweep.
                "auc_protocols": [str(p) for p in fam.get("auc_protocols") or []],
            }
            for level in ("overview", "cells"):
                rows = [_row(r) for r in fam.get(level) or [] if isinstance(r, dict)]
                tables.append({**base, "level": level, "rows": rows})
        return tables
    fams = results.get("families") if isinstance(results, dict) else None
    if not isinstance(fams, list):
        raise ValueError("no 'families' list: not a results.json of timely eval or leaderboard")
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in fams:
        if isinstance(raw, dict):
            grouped[str(raw.get("family", "?"))].append(raw)
    return [
        {
            "family": family,
            "tasks": sorted({str(r["task"]) for r in results.get("cells") or [] if _in(r, family)}),
            "latencies": sorted({str(r.get("latency")) for r in rows}),
            "budgets": sorted({str(r.get("budget")) for r in rows}),
            "level": "cells",
            "rows": [_row(r) for r in rows],
        }
        for family, rows in sorted(grouped.items())
    ]


def _in(cell: Any, family: str) -> bool:
    return isinstance(cell, dict) and str(cell.get("task", "")).split("/", 1)[0] == family


def tables_from_episodes(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A plain table per family from episode rows, for runs with no results.json (served runs).

    Score is the on-time score (an answer's score if it came within the budget, else 0), as in
    Timely-Eval; there are no confidence intervals here, ``timely leaderboard`` computes those.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in episodes:
        groups[(e["family"], e["policy"])].append(e)
    tables: dict[str, dict[str, Any]] = {}
    for (family, policy), eps in sorted(groups.items()):
        n = len(eps)
        elapsed = sorted(e["elapsed_s"] for e in eps)
        busy = sum(e["gen_s"] + e["tool_s"] for e in eps)
        table = tables.setdefault(
            family,
            {"family": family, "tasks": set(), "latencies": set(), "budgets": set(), "rows": []},
        )
        for e in eps:
            table["tasks"].add(e["task"])
            table["latencies"].add(e["latency"])
            table["budgets"].add(e["budget"])
        row = {key: None for key in _ROW_NUMBERS}
        row.update(
            policy=policy,
            task=None,
            latency=None,
            budget=None,
            n=n,
            score=sum(e["score"] for e in eps if e["compliant"]) / n,
            raw_score=sum(e["score"] for e in eps) / n,
            compliance=sum(e["compliant"] for e in eps) / n,
            mean_elapsed_s=sum(elapsed) / n,
            p95_elapsed_s=elapsed[min(n - 1, math.ceil(0.95 * n) - 1)],
            mean_budget_s=sum(e["budget_s"] for e in eps) / n,
            tool_calls=sum(e["tool_calls"] for e in eps) / n,
            turns=sum(e["steps"] for e in eps) / n,
            gen_share=sum(e["gen_s"] for e in eps) / busy if busy > 0 else None,
            tool_share=sum(e["tool_s"] for e in eps) / busy if busy > 0 else None,
        )
        table["rows"].append(row)
    out = []
    for table in tables.values():
        table["rows"].sort(key=lambda r: (-r["score"], r["policy"]))
        out.append(
            {
                **table,
                "tasks": sorted(table["tasks"]),
                "latencies": sorted(table["latencies"]),
                "budgets": sorted(table["budgets"]),
                "level": "computed",
            }
        )
    return out
