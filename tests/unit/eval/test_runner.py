"""The Timely-Eval runner in-process: planning, metrics, resume, failures, leaderboard files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from timely.errors import ConfigError
from timely.runrecord import ERRORS, TRAJECTORIES, EpisodeLog
from timely_eval.leaderboard import write_leaderboard
from timely_eval.plan import plan_eval
from timely_eval.runner import run_suite
from timely_eval.suite import Suite, load_suite, select

SMALL = {
    "name": "unit",
    "tasks": ["math/arithmetic-v1", {"id": "math/chain-v1", "difficulty": 1}],
    "policies": [
        {"spec": "scripted:oracle", "label": "oracle"},
        {"spec": "scripted:answer-now", "label": "answer-now"},
    ],
    "episodes": 2,
    "latencies": ["constant:0.2", "constant:2.0"],
    "budgets": {"seconds": [8, 30]},
}


def small_suite(**update) -> Suite:
    return Suite.model_validate({**SMALL, **update})


def keys(run_dir: Path) -> list[str]:
    return [json.loads(line)["metadata"]["key"] for line in (run_dir / TRAJECTORIES).open()]


def test_shipped_suites_load_and_name_registered_tasks():
    from timely.configs import config_names
    from timely.task import task_names

    assert {"smoke", "standard", "anytime", "demo"} <= set(config_names("eval"))
    for name in config_names("eval"):
        suite = load_suite(name)
        assert suite.name == name
        assert all(t.id in task_names() for t in suite.tasks), name


def test_unknown_suite_key_fails_with_did_you_mean(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("tasks: [math/arithmetic-v1]\npolicies: [scripted:oracle]\nepisods: 3\n")
    with pytest.raises(ConfigError, match="Did you mean: episodes"):
        load_suite(path)


async def test_run_plays_every_cell_once_and_scores_sensibly(tmp_path):
    suite = small_suite()
    report = await run_suite(suite, tmp_path / "run")
    planned, _ = plan_eval(suite, default_budget=lambda t, s: 60.0, relative_budget={})
    assert report.counts["eval"].done == len(planned) == 2 * 2 * 2 * 2 * 2
    assert sorted(keys(tmp_path / "run")) == sorted(i.key for i in planned)
    cells = {
        (c["policy"], c["task"], c["latency"], c["budget"]): c for c in report.results["cells"]
    }
    fast = cells[("oracle", "math/chain-v1", "constant:0.2", "30s")]
    assert fast["score"] == 1.0 and fast["compliance"] == 1.0 and fast["n"] == 2
    assert cells[("answer-now", "math/chain-v1", "constant:0.2", "30s")]["score"] == 0.0
    # Slow tools and a tight budget bind: the oracle ignores time and misses.
    assert cells[("oracle", "math/chain-v1", "constant:2.0", "8s")]["score"] < 1.0
    for name in ("results.json", "summary.md", "config.yaml", "manifest.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0


async def test_resume_skips_done_episodes_and_repairs_a_torn_line(tmp_path):
    suite = small_suite()
    run = tmp_path / "run"
    await run_suite(suite, run)
    lines = (run / TRAJECTORIES).read_text().splitlines(keepends=True)
    # A killed writer leaves a prefix of the records and half a line.
    (run / TRAJECTORIES).write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    report = await run_suite(suite, run)
    assert report.counts["eval"].skipped == 5
    assert report.counts["eval"].done == len(lines) - 5
    assert sorted(keys(run)) == sorted(json.loads(x)["metadata"]["key"] for x in lines)
    again = await run_suite(suite, run)
    assert again.counts["eval"].done == 0 and again.counts["eval"].skipped == len(lines)


async def test_resume_refuses_a_run_with_other_episode_settings(tmp_path):
    await run_suite(small_suite(), tmp_path / "run")
    with pytest.raises(ConfigError, match="--no-resume"):
        await run_suite(small_suite(clock="wall"), tmp_path / "run")
    report = await run_suite(
        small_suite(clock="wall", latencies=["constant:0"], episodes=1, budgets={"seconds": [5]}),
        tmp_path / "run",
        resume=False,
    )
    assert report.counts["eval"].done == 4
    assert (tmp_path / "run" / f"{TRAJECTORIES}.old-1").exists()


async def test_an_episode_that_cannot_be_built_is_recorded_not_fatal(tmp_path):
    suite = small_suite(
        tasks=["math/arithmetic-v1", {"id": "math/jsonl-v1", "options": {"path": "missing.jsonl"}}],
        latencies=["constant:0.2"],
        budgets={"seconds": [30]},
    )
    report = await run_suite(suite, tmp_path / "run")
    assert report.counts["eval"].done == 4  # the arithmetic episodes all ran
    assert report.failed == 4
    errors = (tmp_path / "run" / ERRORS).read_text().splitlines()
    assert len(errors) == 4 and "missing.jsonl" in errors[0]


async def test_relative_budgets_come_from_a_calibration_pass(tmp_path):
    suite = small_suite(
        tasks=["math/arithmetic-v1"],
        policies=["scripted:oracle"],
        latencies=["constant:1.0"],
        budgets={"multipliers": {"math": [0.5, 2.0]}},
    )
    report = await run_suite(suite, tmp_path / "run")
    assert report.counts["calibration"].done == 2
    trajs = EpisodeLog(tmp_path / "run" / TRAJECTORIES).records.values()
    by_label = {}
    for t in trajs:
        by_label.setdefault(t.metadata["budget_label"], []).append(t)
    assert set(by_label) == {"x0.5", "x2"}
    assert all(t.score == 1.0 for t in by_label["x2"])
    assert all(t.score == 0.0 for t in by_label["x0.5"])  # half its own time is not enough


def test_select_narrows_tasks_and_policies():
    suite = small_suite()
    narrowed = select(suite, tasks=["math/chain"], policies=["oracle", "scripted:budget-aware"])
    assert [t.id for t in narrowed.tasks] == ["math/chain-v1"]
    assert [p.name for p in narrowed.policies] == ["oracle", "scripted:budget-aware"]
    with pytest.raises(ConfigError, match="matches none"):
        select(suite, tasks=["nosuch/family"])


async def test_leaderboard_files_and_plots_are_written(tmp_path):
    await run_suite(small_suite(), tmp_path / "a")
    await run_suite(small_suite(name="other", episodes=1), tmp_path / "b")
    files = write_leaderboard([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    report = tmp_path / "report"
    md = (report / "leaderboard.md").read_text()
    assert "## math" in md and "oracle" in md and "@0.2s" in md
    html = (report / "leaderboard.html").read_text()
    assert "<table" in html and "oracle" in html and "<script src=" not in html
    results = json.loads((report / "results.json").read_text())
    assert results["families"] and results["families"][0]["family"] == "math"
    pngs = [report / name for name in files if name.endswith(".png")]
    assert pngs
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
