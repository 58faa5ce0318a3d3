"""The documented anytime command end to end: a budget sweep, then its leaderboard's AUC column,
anytime and Figure-3 tables and plots (docs/timely-eval.md, 'The anytime view and Figure 3')."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def timely(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=ENV
    )


def test_anytime_suite_with_the_oracle_then_leaderboard(tmp_path):
    run, report = tmp_path / "runs" / "oracle", tmp_path / "reports" / "anytime"
    done = timely(
        "eval", "--suite", "anytime", "--policy", "oracle", "--tasks", "math/arithmetic",
        "--out", str(run), "episodes=2", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "x2@oracle" in done.stdout
    board = timely("leaderboard", str(run), "--out", str(report), cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    md = (report / "leaderboard.md").read_text()
    assert "| AUC@oracle |" in md and "### Figure-3 view: math" in md
    assert "budgets: x oracle time" in md
    assert (report / "anytime_math.png").exists() and (report / "effort_math.png").exists()
    assert "<th>AUC@oracle</th>" in (report / "leaderboard.html").read_text()
