"""`timely eval` with its output in a pipe (CI logs, ``> log``) still prints progress lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def test_eval_into_a_pipe_prints_plain_progress_lines(tmp_path):
    res = subprocess.run(
        [str(BIN / "timely"), "eval", "--suite", "smoke", "--policy", "oracle"]
        + ["--tasks", "math", "--out", "runs/p", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=ENV,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = re.findall(r"^eval: (\d+)/(\d+) episodes \(\d+%\) elapsed \S+", res.stdout, re.M)
    assert lines, res.stdout
    done, total = lines[-1]
    assert done == total and int(total) > 0
