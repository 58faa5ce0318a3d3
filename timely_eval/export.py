"""``timely export``: a run's episodes as tables for pandas and HF ``datasets``.

Two tables, one row per episode in both, joined on ``key``:

* ``episodes``: flat per-episode results (who, which cell, outcome, score, on-time score, times,
  tokens, UTC stamps) with scalar columns only, for ``pandas.read_parquet`` and ``groupby``;
* ``trajectories``: the same identifying columns, the conversation (``messages``) and the
  per-turn timing (``steps``) as typed nested columns, and ``record``, the Trajectory JSON
  itself, so nothing is lost (``Trajectory.model_validate_json(row["record"])``).

Formats: ``parquet`` (``episodes.parquet``, ``trajectories.parquet``, written by pyarrow),
``jsonl`` (the same rows, one JSON object a line) and ``hf`` (a ``datasets.DatasetDict`` with
splits ``episodes`` and ``trajectories``, written by ``save_to_disk``). Free-form values whose
shape changes from row to row (tool arguments, tool schemas, metadata) are JSON strings, so
every format has one fixed schema that Arrow and ``datasets`` accept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from timely.errors import ConfigError
from timely.extras import require_extra
from timely.runrecord import outcome, read_run, trajectories_file
from timely.types import Step, Trajectory
from timely_eval.metrics import FIELDS, on_time_score

Format = Literal["parquet", "jsonl", "hf"]
FORMATS: tuple[str, ...] = ("parquet", "jsonl", "hf")
TABLES = ("episodes", "trajectories")

_STAMP = pa.timestamp("us", tz="UTC")
_ID_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("run", pa.string()),
    ("task_id", pa.string()),
    ("family", pa.string()),
    ("seed", pa.int64()),
    ("split", pa.string()),
    ("sample", pa.int64()),
    ("policy", pa.string()),
    ("latency", pa.string()),
    ("budget", pa.string()),
]
EPISODE_SCHEMA = pa.schema(
    [
        *_ID_COLUMNS,
        ("policy_spec", pa.string()),
        ("clock", pa.string()),
        ("budget_s", pa.float64()),
        ("overrun", pa.string()),
        ("outcome", pa.string()),
        ("end_reason", pa.string()),
        ("final_answer", pa.string()),
        ("target", pa.string()),
        ("score", pa.float64()),
        ("on_time_score", pa.float64()),
        ("compliant", pa.bool_()),
        ("reward", pa.float64()),
        ("elapsed_s", pa.float64()),
        ("gen_s", pa.float64()),
        ("tool_s", pa.float64()),
        ("turns", pa.int64()),
        ("tool_calls", pa.int64()),
        ("tool_errors", pa.int64()),
        ("malformed_calls", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error", pa.string()),
        ("config_hash", pa.string()),
        ("started_at_utc", _STAMP),
        ("ended_at_utc", _STAMP),
        ("schema_version", pa.int64()),
    ]
)
_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
_MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("name", pa.string()),
        ("tool_call_id", pa.string()),
        ("tool_calls", pa.list_(_CALL)),
    ]
)
_RESULT: pa.StructType = pa.struct(
    [
        ("call_id", pa.string()),
        ("name", pa.string()),
        ("content", pa.string()),
        ("error", pa.string()),
        ("latency_s", pa.float64()),
        ("service_s", pa.float64()),
        ("work_s", pa.float64()),
        ("charged_s", pa.float64()),
        ("retries", pa.int64()),
        ("fault", pa.string()),
    ]
)
_STEP: pa.StructType = pa.struct(
    [
        ("index", pa.int64()),
        ("started_at", pa.float64()),
        ("ended_at", pa.float64()),
        ("gen_s", pa.float64()),
        ("tool_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("tool_calls", pa.list_(_CALL)),
        ("tool_results", pa.list_(_RESULT)),
        ("malformed_calls", pa.int64()),
        ("unknown_tool_calls", pa.int64()),
        ("tool_errors", pa.int64()),
        ("usage_estimated", pa.bool_()),
        # Sampled ids and their log-probs (local backends; null otherwise), for training views.
        # Prompt ids repeat the conversation every turn; they stay in `record` only.
        ("token_ids", pa.list_(pa.int64())),
        ("logprobs", pa.list_(pa.float64())),
    ]
)
TRAJECTORY_SCHEMA = pa.schema(
    [
        *_ID_COLUMNS,
        ("messages", pa.list_(_MESSAGE)),
        ("steps", pa.list_(_STEP)),
        ("tools", pa.string()),
        ("metadata", pa.string()),
        ("record", pa.string()),
    ]
)


def _calls(calls: Sequence[Any] | None) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "name": c.name, "arguments": json.dumps(c.arguments, sort_keys=True)}
        for c in calls or ()
    ]


def _ids(traj: Trajectory, run: str, index: int) -> dict[str, Any]:
    # Episodes of `timely run` carry no key; their position in the run identifies them.
    key = traj.metadata.get("key")
    return {
        "key": str(key) if isinstance(key, str) else f"{run}#{index}",
        "run": run,
        "task_id": traj.task_id,
        "family": FIELDS["family"](traj),
        "seed": traj.seed,
        "split": traj.split,
        "sample": traj.sample,
        "policy": FIELDS["policy"](traj),
        "latency": traj.latency,
        "budget": FIELDS["budget"](traj),
    }


def episode_row(traj: Trajectory, run: str, index: int) -> dict[str, Any]:
    """The ``episodes`` row of one trajectory (``index``: its place in the run)."""
    steps = traj.steps
    return {
        **_ids(traj, run, index),
        "policy_spec": traj.policy,
        "clock": traj.clock,
        "budget_s": traj.budget_s,
        "overrun": traj.overrun,
        "outcome": outcome(traj).value,
        "end_reason": str(traj.end_reason),
        "final_answer": traj.final_answer,
        "target": traj.target,
        "score": traj.score,
        "on_time_score": on_time_score(traj),
        "compliant": traj.compliant,
        "reward": traj.reward,
        "elapsed_s": traj.elapsed_s,
        "gen_s": traj.gen_s,
        "tool_s": traj.tool_s,
        "turns": len(steps),
        "tool_calls": traj.n_tool_calls,
        "tool_errors": sum(s.tool_errors for s in steps),
        "malformed_calls": traj.n_malformed,
        "prompt_tokens": sum(s.prompt_tokens for s in steps),
        "completion_tokens": sum(s.completion_tokens for s in steps),
        "error": traj.error,
        "config_hash": traj.config_hash,
        "started_at_utc": traj.started_at_utc,
        "ended_at_utc": traj.ended_at_utc,
        "schema_version": traj.schema_version,
    }


def _step(step: Step) -> dict[str, Any]:
    # Only the schema's columns: a field a later Step gains stays in `record` until added here.
    fields = step.model_dump()
    row = {name: fields[name] for name in _STEP.names if name in fields}
    row["tool_calls"] = _calls(step.tool_calls)
    row["tool_results"] = [{n: r.get(n) for n in _RESULT.names} for r in fields["tool_results"]]
    return row


def trajectory_row(traj: Trajectory, run: str, index: int) -> dict[str, Any]:
    """The ``trajectories`` row of one trajectory: ids, messages, steps and the full record."""
    return {
        **_ids(traj, run, index),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "name": m.name,
                "tool_call_id": m.tool_call_id,
                "tool_calls": _calls(m.tool_calls),
            }
            for m in traj.messages
        ],
        "steps": [_step(s) for s in traj.steps],
        "tools": json.dumps(traj.tools, sort_keys=True),
        "metadata": json.dumps(traj.metadata, sort_keys=True, default=str),
        "record": traj.model_dump_json(),
    }


def run_tables(path: str | Path) -> dict[str, pa.Table]:
    """The ``episodes`` and ``trajectories`` tables of a run directory (or its trajectories file).

    Raises:
        ConfigError: the path holds no trajectories, or none but calibration episodes.
    """
    run = trajectories_file(path).parent.resolve().name
    trajs = read_run(path)
    if not trajs:
        raise ConfigError(f"{path} holds no episodes to export")
    return {
        "episodes": pa.Table.from_pylist(
            [episode_row(t, run, i) for i, t in enumerate(trajs)], schema=EPISODE_SCHEMA
        ),
        "trajectories": pa.Table.from_pylist(
            [trajectory_row(t, run, i) for i, t in enumerate(trajs)], schema=TRAJECTORY_SCHEMA
        ),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_export(path: str | Path, out: str | Path, fmt: str) -> dict[str, Path]:
    """Export the run at ``path`` into the directory ``out`` in format ``fmt``.

    Args:
        path: a run directory written by ``timely eval`` or ``timely run`` (or its JSONL).
        out: the directory to write (created; files of the same names are replaced).
        fmt: ``parquet``, ``jsonl`` or ``hf``.

    Returns:
        Table name -> the file (parquet, jsonl) or directory (hf) written.

    Raises:
        ConfigError: an unknown format, or a run with nothing to export.
        MissingExtra: ``hf`` without the [data] extra (HF datasets).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "hf":
        require_extra("data", "timely export --format hf")
    tables = run_tables(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        written = {}
        for name, table in tables.items():
            pq.write_table(table, out / f"{name}.parquet")
            written[name] = out / f"{name}.parquet"
        return written
    if fmt == "jsonl":
        written = {}
        for name, table in tables.items():
            file = out / f"{name}.jsonl"
            with file.open("w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n")
            written[name] = file
        return written
    import datasets

    # Built from the Arrow tables, so the splits keep the same typed columns as the parquet.
    ds = datasets.DatasetDict(
        {name: datasets.Dataset(datasets.table.InMemoryTable(t)) for name, t in tables.items()}
    )
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a library call does not draw on the caller's terminal
    try:
        ds.save_to_disk(str(out))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return {name: out / name for name in tables}


def export_command(console: Any, path: Path, fmt: str, out: Path | None) -> dict[str, Path]:
    """``timely export``: write the tables and say how to load them.

    Args:
        console: a rich console.
        path: the run directory.
        fmt: parquet, jsonl or hf.
        out: the export directory (default ``exports/RUN-FORMAT``).
    """
    run = Path(path).resolve()
    out = out or Path("exports") / f"{(run if run.is_dir() else run.parent).name}-{fmt}"
    written = write_export(path, out, fmt)
    console.print("wrote " + ", ".join(str(p) for p in written.values()))
    load = {
        "parquet": f'pandas.read_parquet("{written["episodes"]}")',
        "jsonl": f'pandas.read_json("{written["episodes"]}", lines=True)',
        "hf": f'datasets.load_from_disk("{out}")["episodes"]',
    }[fmt]
    console.print(f"load with {load}", soft_wrap=True)
    return written
