"""`timely eval` and `timely leaderboard` end to end, in subprocesses: kill, resume, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

# Wall clock and real latency, so a run lasts long enough to be killed in the middle.
KILLABLE = """\
name: killable
tasks: [math/arithmetic-v1]
policies: [scripted:oracle, scripted:budget-aware]
episodes: 12
latencies: [constant:0.05]
budgets: {seconds: [30]}
clock: wall
concurrency: 2
"""


def timely(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=ENV
    )


def record_keys(path: Path) -> list[str]:
    return [json.loads(line)["metadata"]["key"] for line in path.read_text().splitlines()]


def test_killed_run_resumes_with_nothing_lost_or_duplicated(tmp_path):
    (tmp_path / "killable.yaml").write_text(KILLABLE)
    run = tmp_path / "run"
    log = run / "trajectories.jsonl"
    proc = subprocess.Popen(
        [str(BIN / "timely"), "eval", "--suite", "killable.yaml", "--out", str(run)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 4:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the run wrote no episodes within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(log.read_text().splitlines())
    assert 4 <= done_before < 24, "the kill must land mid-run"

    res = timely("eval", "--suite", "killable.yaml", "--out", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    keys = record_keys(log)
    assert len(keys) == 24 and len(set(keys)) == 24
    results = json.loads((run / "results.json").read_text())
    assert results["episodes"] == 24
    assert "skipped" in res.stdout  # the progress line reports what was already done


def test_eval_then_leaderboard_writes_the_report(tmp_path):
    res = timely(
        "eval",
        "--suite",
        "smoke",
        "--policy",
        "oracle",
        "--policy",
        "sim-small-fast",
        "--tasks",
        "math",
        "--out",
        "runs/a",
        "--no-plots",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "oracle" in res.stdout and "sim-small-fast" in res.stdout
    res = timely("leaderboard", "runs/a", "--out", "reports/x", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("leaderboard.md", "leaderboard.html", "results.json", "score_vs_latency.png"):
        assert (tmp_path / "reports" / "x" / name).stat().st_size > 0, name


def test_eval_errors_say_what_to_do(tmp_path):
    res = timely("eval", "--suite", "nonexistent", cwd=tmp_path)
    assert res.returncode != 0 and "unknown suite" in res.stdout + res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert "Available: anytime, demo, smoke, standard" in said
    res = timely("eval", "--suite", "smoke", "--tasks", "nothing-like-this", cwd=tmp_path)
    assert res.returncode != 0 and "matches none" in res.stdout + res.stderr
