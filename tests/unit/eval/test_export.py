"""`timely export` tables (timely_eval.export): parquet, jsonl and hf read back as written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from timely.errors import ConfigError
from timely.runrecord import append_trajectories
from timely.types import Trajectory
from timely_eval.export import EPISODE_SCHEMA, TRAJECTORY_SCHEMA, run_tables, write_export
from timely_eval.runner import run_suite
from timely_eval.suite import Suite

SUITE = {
    "name": "export",
    "tasks": ["math/arithmetic-v1"],
    "policies": [{"spec": "scripted:oracle", "label": "oracle"}],
    "episodes": 2,
    "latencies": ["constant:0.2", "constant:3.0"],
    "budgets": {"seconds": [5, 30]},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import asyncio

    path = tmp_path_factory.mktemp("export") / "run"
    asyncio.run(run_suite(Suite.model_validate(SUITE), path))
    return path


def test_tables_have_one_row_per_episode_and_fixed_schemas(run_dir):
    tables = run_tables(run_dir)
    episodes, trajs = tables["episodes"], tables["trajectories"]
    assert episodes.schema == EPISODE_SCHEMA and trajs.schema == TRAJECTORY_SCHEMA
    assert episodes.num_rows == trajs.num_rows == 8
    assert episodes.column("key").to_pylist() == trajs.column("key").to_pylist()
    rows = episodes.to_pylist()
    assert {r["outcome"] for r in rows} == {"on_time", "cut_off"}  # 3 s tools miss a 5 s budget
    assert all(r["started_at_utc"] <= r["ended_at_utc"] for r in rows)
    assert all(r["on_time_score"] == (r["score"] if r["compliant"] else 0.0) for r in rows)


def test_parquet_reads_into_pandas_with_typed_columns(run_dir, tmp_path):
    files = write_export(run_dir, tmp_path / "pq", "parquet")
    df = pd.read_parquet(files["episodes"])
    assert len(df) == 8 and str(df["started_at_utc"].dtype).startswith("datetime64")
    by_cell = df.groupby(["latency", "budget"])["on_time_score"].mean()
    assert by_cell[("constant:0.2", "30s")] == 1.0 and by_cell[("constant:3.0", "5s")] == 0.0
    steps = pd.read_parquet(files["trajectories"])["steps"].iloc[0]
    assert steps[0]["tool_calls"][0]["name"] == "calculator"
    assert json.loads(steps[0]["tool_calls"][0]["arguments"])  # arguments are JSON text


def test_the_record_column_gives_the_trajectory_back(run_dir, tmp_path):
    files = write_export(run_dir, tmp_path / "pq", "parquet")
    record = pd.read_parquet(files["trajectories"])["record"].iloc[0]
    traj = Trajectory.model_validate_json(record)
    assert traj.task_id == "math/arithmetic-v1" and traj.started_at_utc is not None


def test_jsonl_holds_the_same_rows(run_dir, tmp_path):
    files = write_export(run_dir, tmp_path / "js", "jsonl")
    lines = files["episodes"].read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 8 and first["started_at_utc"].endswith("Z")
    df = pd.read_json(files["trajectories"], lines=True)
    assert list(df.columns) == TRAJECTORY_SCHEMA.names


def test_hf_is_a_dataset_dict_on_disk(run_dir, tmp_path):
    import datasets

    write_export(run_dir, tmp_path / "hf", "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(ds) == {"episodes", "trajectories"} and ds["episodes"].num_rows == 8
    assert ds["episodes"].features["started_at_utc"].dtype == "timestamp[us, tz=UTC]"
    assert ds["trajectories"][0]["messages"][0]["role"] == "user"  # the task prompt


def test_a_timely_run_directory_and_old_records_export_too(tmp_path):
    old = {
        "schema_version": 2,
        "task_id": "math/arithmetic-v1",
        "seed": 0,
        "clock": "virtual",
        "budget_s": 30.0,
        "messages": [{"role": "user", "content": "q"}],
        "end_reason": "max_turns",
    }
    append_trajectories(tmp_path / "trajectories.jsonl", [Trajectory.model_validate(old)] * 2)
    rows = run_tables(tmp_path)["episodes"].to_pylist()
    assert [r["key"] for r in rows] == [f"{tmp_path.name}#0", f"{tmp_path.name}#1"]
    assert rows[0]["started_at_utc"] is None and rows[0]["outcome"] == "no_answer"


def test_bad_input_is_refused_clearly(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="unknown export format 'csv'.*parquet"):
        write_export(run_dir, tmp_path / "x", "csv")
    with pytest.raises(ConfigError, match="no trajectories.jsonl"):
        write_export(tmp_path / "missing", tmp_path / "x", "parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "trajectories.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no episodes to export"):
        write_export(tmp_path / "empty", tmp_path / "x", "parquet")
