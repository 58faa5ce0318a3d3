"""The `timely` command end to end, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timely.types import Trajectory

BIN = Path(sys.executable).parent


def timely(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_help_lists_commands():
    res = timely("--help")
    assert res.returncode == 0
    for cmd in ("run", "tasks", "policies", "tool-server", "show"):
        assert cmd in res.stdout


def test_tasks_and_policies():
    res = timely("tasks")
    assert res.returncode == 0 and "math/arithmetic-v1" in res.stdout
    res = timely("policies")
    assert res.returncode == 0
    assert "scripted" in res.stdout and "hf" in res.stdout and "openai" in res.stdout


def test_run_writes_trace_and_run_directory(tmp_path):
    out = tmp_path / "demo"
    res = timely(
        "run",
        "--task",
        "math/arithmetic",
        "--policy",
        "scripted:oracle",
        "--budget",
        "30",
        "--latency",
        "constant:1.0",
        "--clock",
        "virtual",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "answered" in res.stdout and "calculator" in res.stdout
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 1
    traj = json.loads(lines[0])
    assert traj["score"] == 1.0 and traj["compliant"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0] and manifest["packages"]["pydantic"]
    assert "task: math/arithmetic" in (out / "config.yaml").read_text()
    show = timely("show", str(out))
    assert show.returncode == 0 and "answered" in show.stdout


def test_run_is_reproducible(tmp_path):
    args = [
        "run",
        "--task",
        "math/word-problems",
        "--policy",
        "scripted:budget-aware",
        "--budget",
        "6",
        "--latency",
        "lognormal:1.0,0.6",
        "--episodes",
        "3",
        "-q",
    ]
    a = timely(*args, "--out", str(tmp_path / "a"))
    b = timely(*args, "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr

    def replays(run: str) -> list[str]:  # the records but their UTC stamps (when each ran)
        lines = (tmp_path / run / "trajectories.jsonl").read_text().splitlines()
        return sorted(Trajectory.model_validate_json(line).replay_json() for line in lines)

    assert replays("a") == replays("b")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "math/arithmetc"], "Did you mean"),
        (["--policy", "nonsense"], "PREFIX:NAME"),
        (["--policy", "scripted:psychic"], "psychic"),
        (["--latency", "gaussian:1"], "latency"),
        (["episode.max_turn=3"], "Did you mean: max_turns"),
        (["--budget", "-5"], "budget.seconds"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, args, message):
    res = timely("run", "--out", str(tmp_path / "x"), *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_run_live_prints_steps_as_they_happen(tmp_path):
    res = timely(
        "run", "--task", "math/arithmetic", "--policy", "scripted:oracle", "--budget", "30",
        "--latency", "constant:1.0", "--live", "--out", str(tmp_path / "live"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any("start · budget 30s" in line for line in lines)
    assert any("calculator ok in 1.00s" in line for line in lines)
    assert any("answered · score 1.00 · on time" in line for line in lines)
