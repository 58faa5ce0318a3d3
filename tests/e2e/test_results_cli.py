"""Reading results end to end, in subprocesses: `timely show` filters, `compare`, `export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

# Two runs of one grid that differ in the simulated model's speed: the "change" to judge.
SUITE = """\
name: results
tasks: [math/arithmetic-v1, math/multistep-v1]
policies: [scripted:oracle, scripted:budget-aware]
episodes: 3
latencies: [constant:0.2, constant:3.0]
budgets: {seconds: [5, 30]}
"""


def timely(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=ENV
    )


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def refused(res: subprocess.CompletedProcess, message: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert message in " ".join(out.split()) and "Traceback" not in out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    (root / "suite.yaml").write_text(SUITE)
    ok(timely("eval", "--suite", "suite.yaml", "--out", "runs/a", "--no-plots", cwd=root))
    ok(
        timely(
            "eval",
            "--suite",
            "suite.yaml",
            "--out",
            "runs/b",
            "--no-plots",
            "episode.speed=large-slow",
            cwd=root,
        )  # fmt: skip
    )
    return root


def test_show_filters_by_cell_and_outcome(runs):
    out = ok(timely("show", "runs/a", "--latency", "constant:3.0", "--budget", "5s",
                    "--outcome", "cut-off", "--policy", "oracle", "--list", cwd=runs))  # fmt: skip
    assert "6 of 48 episodes match" in out and out.count("│ cut_off") == 6  # 6 rows
    picks = ["--task", "math/arithmetic", "--seed", "1", "--budget", "30", "--latency", "0.2"]
    out = ok(timely("show", "runs/a", *picks, "--policy", "oracle", cwd=runs))
    assert "calculator(" in out and "started 20" in out  # the trace, with its UTC start
    assert "1 of 48 episodes match" in out


def test_show_explains_what_it_cannot_do(runs):
    refused(timely("show", "runs/a", "--outcome", "nope", cwd=runs), "unknown outcome 'nope'")
    refused(
        timely("show", "runs/a", "--task", "games", cwd=runs),
        "no episode of runs/a matches task games (48 episodes; tasks: math/arithmetic-v1",
    )
    refused(timely("show", "runs/none", cwd=runs), "holds no trajectories.jsonl")


def test_compare_writes_the_report_and_a_short_table(runs):
    out = ok(timely("compare", "runs/a", "runs/b", "--out", "reports/ab", cwd=runs))
    assert "B (b) − A (a), pooled" in out and "largest changes of 16 cells" in out
    report = json.loads((runs / "reports/ab/compare.json").read_text())
    assert {r["policy"] for r in report["overall"]} == {"scripted:oracle", "scripted:budget-aware"}
    assert all(r["n"] == 24 for r in report["overall"])  # every episode paired
    assert report["unmatched"] == {"a_only": 0, "b_only": 0, "duplicates": 0}
    assert "## Per cell" in (runs / "reports/ab/compare.md").read_text()
    assert "<table" in (runs / "reports/ab/compare.html").read_text()


def test_compare_refuses_runs_that_share_nothing(runs, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(SUITE.replace("math/arithmetic-v1, math/multistep-v1", "games/treasure-v1"))
    ok(timely("eval", "--suite", str(other), "--out", str(tmp_path / "g"), "--no-plots", cwd=runs))
    refused(
        timely("compare", "runs/a", str(tmp_path / "g"), cwd=runs),
        "the runs share no episode (same task, seed, latency, budget and sample): task: A",
    )


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_export_loads_in_pandas_and_datasets(runs, fmt):
    out = ok(timely("export", "runs/a", "--format", fmt, cwd=runs))
    assert f"exports/a-{fmt}" in out and "load with" in out
    where = runs / "exports" / f"a-{fmt}"
    if fmt == "hf":
        import datasets

        ds = datasets.load_from_disk(str(where))
        assert ds["episodes"].num_rows == ds["trajectories"].num_rows == 48
        return
    import pandas as pd

    read = pd.read_parquet if fmt == "parquet" else lambda p: pd.read_json(p, lines=True)
    episodes = read(where / f"episodes.{fmt}")
    assert len(episodes) == 48 and set(episodes["outcome"]) <= {"on_time", "cut_off", "wrong"}
    assert len(read(where / f"trajectories.{fmt}")) == 48


def test_export_refuses_an_unknown_format(runs):
    refused(
        timely("export", "runs/a", "--format", "csv", cwd=runs),
        "unknown export format 'csv'; use one of parquet, jsonl, hf",
    )
