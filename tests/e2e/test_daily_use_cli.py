"""Daily use of `timely eval` and `timely run`, in subprocesses: any registered task, -T options,
--limit, --epochs with pass@k, and mistyped policies refused before any episode runs.

HF_HUB_OFFLINE=1 keeps the hub lookup of an unknown `hf:` name off the network, so these tests
behave the same with and without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}


def timely(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=ENV
    )


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_plays_any_registered_task_with_options_limit_and_epochs(tmp_path):
    res = timely(
        "eval", "--suite", "smoke", "--policy", "scripted:oracle", "--tasks", "math/multistep",
        "-T", "difficulty=2", "--limit", "1", "--epochs", "2", "--no-plots", "--out", "run",
        cwd=tmp_path,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "1 seed(s) per cell at most" in out and "2 epochs" in out and "Pass@k" in out
    trajs = records(tmp_path / "run" / "trajectories.jsonl")
    assert {t["task_id"] for t in trajs} == {"math/multistep-v1"}  # not one of smoke's tasks
    assert {t["seed"] for t in trajs} == {0} and {t["sample"] for t in trajs} == {0, 1}
    assert {t["metadata"]["difficulty"] for t in trajs} == {2}
    cells = json.loads((tmp_path / "run" / "results.json").read_text())["cells"]
    assert cells and all(c["epochs"] == 2 and c["pass_at_k"] is not None for c in cells)


def test_eval_refuses_a_mistyped_policy_before_any_episode(tmp_path):
    for policy, message in [
        ("scripted:oracel", "Did you mean scripted:oracle?"),
        ("hff:smollm2-135m", "Did you mean hf:smollm2-135m?"),
        ("hf:no-such-model-xyz", "`timely policies` lists them"),
    ]:
        res = timely(
            "eval", "--suite", "smoke", "--policy", policy, "--tasks", "math/arithmetic",
            "--out", "run", cwd=tmp_path,
        )  # fmt: skip
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert message in " ".join(out.split()), out  # rich wraps long lines
        assert "timely eval smoke" not in out and "Traceback" not in out
        assert not (tmp_path / "run" / "trajectories.jsonl").exists()
        assert not (tmp_path / "run" / "errors.jsonl").exists()


def test_eval_names_close_tasks_for_an_unknown_one(tmp_path):
    res = timely("eval", "--suite", "smoke", "--tasks", "math/arithmetc", cwd=tmp_path)
    assert res.returncode == 2
    assert "Did you mean: math/arithmetic" in " ".join((res.stdout + res.stderr).split())


def test_run_fails_fast_on_an_unknown_hf_model(tmp_path):
    res = timely("run", "--policy", "hf:no-such-model-xyz", "--out", "x", cwd=tmp_path)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, out
    assert "not an embedded model and not a local directory" in out
    assert "HF_HUB_OFFLINE is set" in out and "hf:smollm2-135m" in out
    assert "Traceback" not in out


def test_run_takes_task_options(tmp_path):
    res = timely(
        "run", "--task", "math/arithmetic", "--policy", "scripted:oracle", "-T", "difficulty=3",
        "-q", "--out", "x", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (traj,) = records(tmp_path / "x" / "trajectories.jsonl")
    assert traj["score"] == 1.0 and "difficulty: 3" in (tmp_path / "x" / "config.yaml").read_text()
    bad = timely("run", "--task", "math/arithmetic", "-T", "colour=red", "--out", "y", cwd=tmp_path)
    assert bad.returncode == 2 and "colour" in bad.stdout + bad.stderr
    malformed = timely("run", "-T", "difficulty", "--out", "z", cwd=tmp_path)
    assert malformed.returncode == 2 and "KEY=VALUE" in malformed.stdout + malformed.stderr
