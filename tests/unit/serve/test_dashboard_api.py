"""The dashboard's JSON API on generated run and report directories (ASGI, no sockets)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers.dashboard_runs import (
    OUTCOME_FIELDS,
    make_trajectory,
    mixed_trajectories,
    write_report,
    write_run,
)
from timely.errors import ConfigError
from timely.runrecord import append_trajectories
from timely.serve.dashboard import check_dirs, create_dashboard_app, dashboard_router
from timely_eval.metrics import aggregate


def client(*dirs: Path) -> TestClient:
    return TestClient(create_dashboard_app(list(dirs)))


def router_client(*dirs: Path, prefix: str = "") -> TestClient:
    app = FastAPI()
    app.include_router(dashboard_router(list(dirs)), prefix=prefix)
    return TestClient(app)


@pytest.fixture
def run(tmp_path) -> Path:
    return write_run(tmp_path / "runs" / "mixed", mixed_trajectories())


def test_summary_describes_the_run_and_every_filter_value(run):
    body = client(run).get("/api/summary").json()
    assert body["episodes"] == 12
    [src] = body["sources"]
    assert (src["id"], src["name"], src["kind"], src["episodes"]) == ("mixed", "mixed", "run", 12)
    facets = body["facets"]
    assert [v["value"] for v in facets["policy"]] == ["budget-aware", "oracle"]
    assert [v["value"] for v in facets["latency"]] == ["constant:0.2", "constant:3.0"]
    assert {v["value"] for v in facets["budget"]} == {"5s", "10s"}
    assert {v["value"] for v in facets["task"]} == {"math/arithmetic-v1", "games/treasure-v1"}
    assert {o["value"]: o["count"] for o in facets["outcome"]} == {k: 2 for k in OUTCOME_FIELDS}
    assert body["problems"] == []


def test_each_outcome_is_told_apart(run):
    c = client(run)
    for outcome, (end, *_rest) in OUTCOME_FIELDS.items():
        rows = c.get("/api/episodes", params={"outcome": outcome}).json()["episodes"]
        assert len(rows) == 2 and {r["end_reason"] for r in rows} == {str(end)}, outcome


def test_filters_combine_and_counts_ignore_the_outcome_filter(run):
    c = client(run)
    want = [
        t
        for t in mixed_trajectories()
        if t.metadata["label"] == "oracle" and t.latency == "constant:3.0"
    ]
    body = c.get(
        "/api/episodes", params={"policy": "oracle", "latency": "constant:3.0", "outcome": "late"}
    ).json()
    late = [t for t in want if t.end_reason == "answered" and not t.compliant]
    assert body["total"] == len(late) == len(body["episodes"])
    assert sum(body["counts"].values()) == len(want)  # every outcome under the other filters
    both = c.get("/api/episodes", params={"outcome": "on_time,cut_off"}).json()
    assert both["total"] == 4
    assert c.get("/api/episodes", params={"budget": "5s"}).json()["total"] == 4
    assert c.get("/api/episodes", params={"task": "games/treasure-v1"}).json()["total"] == 4
    assert c.get("/api/episodes", params={"family": "games"}).json()["total"] == 4
    assert c.get("/api/episodes", params={"policy": "nobody"}).json()["total"] == 0


def test_episode_pages(run):
    c = client(run)
    first = c.get("/api/episodes", params={"limit": 5}).json()
    rest = c.get("/api/episodes", params={"offset": 5, "limit": 100}).json()
    assert first["total"] == rest["total"] == 12
    ids = [e["id"] for e in first["episodes"] + rest["episodes"]]
    assert len(ids) == len(set(ids)) == 12


def test_episode_detail_has_every_step_timing(run):
    c = client(run)
    rows = c.get("/api/episodes", params={"outcome": "cut_off"}).json()["episodes"]
    traj = next(
        t
        for t in mixed_trajectories()
        if rows[0]["id"].endswith(t.metadata["key"])  # ids are SOURCE:KEY
    )
    ep = c.get(f"/api/episodes/{rows[0]['id']}").json()
    assert len(ep["timeline"]) == len(traj.steps)
    for step, want in zip(ep["timeline"], traj.steps, strict=True):
        assert step["started_at"] == pytest.approx(want.started_at)
        assert step["ended_at"] == pytest.approx(want.ended_at)
        assert step["gen_s"] == pytest.approx(want.gen_s)
        assert [c["charged_s"] for c in step["calls"]] == [r.charged_s for r in want.tool_results]
    assert ep["cut_at"] == pytest.approx(traj.budget_s) and ep["answer_at"] is None
    assert ep["prompt"].startswith("Compute task")
    on_time = c.get("/api/episodes", params={"outcome": "on_time"}).json()["episodes"][0]
    detail = c.get(f"/api/episodes/{on_time['id']}").json()
    assert detail["answer_at"] == pytest.approx(detail["elapsed_s"]) and detail["cut_at"] is None


@pytest.mark.parametrize(
    ("url", "status", "kind"),
    [
        ("/api/episodes/mixed:nope", 404, "not_found"),
        ("/api/episodes/elsewhere:abc", 404, "not_found"),
        ("/api/episodes?outcome=bogus", 422, "invalid_request"),
        ("/api/episodes?limit=-1", 422, "invalid_request"),
        ("/api/episodes?offset=ten", 422, "invalid_request"),
        ("/api/episodes?colour=red", 422, "invalid_request"),
        ("/api/plots/mixed/score_vs_latency.png", 404, "not_found"),
        ("/api/plots/mixed/..%2F..%2Fsecret.png", 404, "not_found"),
        ("/dashboard/secret.py", 404, "not_found"),
        ("/no/such/page", 404, "not_found"),
    ],
)
def test_bad_requests_answer_json_errors(run, url, status, kind):
    r = client(run).get(url)
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_report_tables_match_its_results_json_and_plots_are_served(run, tmp_path):
    report = write_report(run, tmp_path / "reports" / "mixed")
    results = json.loads((report / "results.json").read_text())
    c = client(report)
    tables = c.get("/api/results").json()["tables"]
    overview = {t["family"]: t for t in tables if t["level"] == "overview"}
    assert set(overview) == {f["family"] for f in results["families"]}
    for fam in results["families"]:
        rows = overview[fam["family"]]["rows"]
        assert [(r["policy"], r["score"], r["n"]) for r in rows] == [
            (r["policy"], r["score"], r["n"]) for r in fam["overview"]
        ]
        cells = next(t for t in tables if t["level"] == "cells" and t["family"] == fam["family"])
        assert len(cells["rows"]) == len(fam["cells"])
    plots = c.get("/api/results").json()["plots"]
    assert sorted(p["name"] for p in plots) == ["score_vs_latency.png", "time_breakdown.png"]
    png = c.get("/" + plots[0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


def test_a_report_shows_the_runs_it_names(run, tmp_path):
    report = write_report(run, tmp_path / "reports" / "mixed")
    sources = client(report).get("/api/summary").json()["sources"]
    assert [(s["kind"], s["episodes"], s["linked_from"]) for s in sources] == [
        ("report", 0, None),
        ("run", 12, sources[0]["id"]),
    ]
    # Its episodes are listed; its tables are the report's, not repeated.
    tables = client(report).get("/api/results").json()["tables"]
    assert {t["source"] for t in tables} == {sources[0]["id"]}
    assert client(report).get("/api/episodes").json()["total"] == 12


def test_run_results_json_of_timely_eval_gives_cell_tables(run):
    trajs = mixed_trajectories()
    flat = aggregate(trajs, ("policy", "family", "latency", "budget"))
    results = {"suite": "unit", "cells": aggregate(trajs), "families": flat}
    (run / "results.json").write_text(json.dumps(results))
    tables = client(run).get("/api/results").json()["tables"]
    assert {t["level"] for t in tables} == {"cells"}
    assert sum(len(t["rows"]) for t in tables) == len(flat)
    assert {t["family"] for t in tables} == {"games", "math"}


def test_a_run_without_results_gets_a_table_computed_from_its_episodes(run):
    [table, *_] = [
        t for t in client(run).get("/api/results").json()["tables"] if t["family"] == "math"
    ]
    assert table["level"] == "computed"
    math = [t for t in mixed_trajectories() if t.task_id.startswith("math/")]
    by_policy = Counter(t.metadata["label"] for t in math)
    assert {r["policy"]: r["n"] for r in table["rows"]} == dict(by_policy)
    oracle = next(r for r in table["rows"] if r["policy"] == "oracle")
    mine = [t for t in math if t.metadata["label"] == "oracle"]
    assert oracle["score"] == pytest.approx(sum(t.score for t in mine if t.compliant) / len(mine))


def test_appended_episodes_show_up_and_a_half_written_line_waits(run):
    c = client(run)
    before = c.get("/api/summary").json()
    extra = make_trajectory(seed=99, policy="late-comer")
    append_trajectories(run / "trajectories.jsonl", [extra])
    after = c.get("/api/summary").json()
    assert after["episodes"] == before["episodes"] + 1
    assert after["version"] != before["version"]
    line = make_trajectory(seed=100, policy="late-comer").model_dump_json()
    with (run / "trajectories.jsonl").open("a") as f:
        f.write(line[:50])  # a writer in the middle of a line
    mid = c.get("/api/summary").json()
    assert mid["episodes"] == after["episodes"] and mid["problems"] == []
    assert mid["sources"][0]["writing"] is True
    with (run / "trajectories.jsonl").open("a") as f:
        f.write(line[50:] + "\n")
    done = c.get("/api/episodes", params={"policy": "late-comer"}).json()
    assert done["total"] == 2
    for row in done["episodes"]:  # offsets of appended lines still point at their records
        assert c.get(f"/api/episodes/{row['id']}").json()["seed"] in (99, 100)


def test_a_rewritten_file_is_read_again(run):
    c = client(run)
    assert c.get("/api/summary").json()["episodes"] == 12
    write_run(run, mixed_trajectories()[:3])
    assert c.get("/api/summary").json()["episodes"] == 3


def test_corrupt_lines_are_reported_and_the_rest_is_shown(run):
    with (run / "trajectories.jsonl").open("a") as f:
        f.write("{not json\n")
        f.write('{"task_id": "x"}\n')
        f.write("[1, 2]\n")
    c = client(run)
    body = c.get("/api/summary").json()
    assert body["episodes"] == 12
    assert len(body["problems"]) == 3
    assert "trajectories.jsonl:13: not a trajectory: not JSON" in body["problems"][0]
    assert "no budget_s, end_reason, steps" in body["problems"][1]
    assert c.get("/api/results").status_code == 200


def test_a_broken_results_json_is_a_problem_not_an_error(run, tmp_path):
    report = write_report(run, tmp_path / "report")
    (report / "results.json").write_text('{"families": [')
    c = client(report)
    assert "unreadable JSON" in c.get("/api/summary").json()["problems"][0]
    assert c.get("/api/results").json()["tables"] == []


def test_duplicate_keys_and_calibration_episodes_are_skipped(tmp_path):
    trajs = mixed_trajectories()
    calib = make_trajectory(seed=7, phase="calibration")
    run = write_run(tmp_path / "run", [*trajs, trajs[0], calib])
    body = client(run).get("/api/summary").json()
    assert body["episodes"] == 12 and body["sources"][0]["skipped"] == 2


def test_timely_run_records_without_keys_are_told_apart_by_line(tmp_path):
    trajs = [make_trajectory(seed=s) for s in range(3)]
    for t in trajs:
        t.metadata = {}
    run = write_run(tmp_path / "run", trajs + trajs)  # the same seeds played twice
    rows = client(run).get("/api/episodes").json()["episodes"]
    assert [r["id"] for r in rows] == [f"run:L{i}" for i in range(1, 7)]
    assert {r["policy"] for r in rows} == {"scripted:oracle"}
    assert {r["budget"] for r in rows} == {"10s"}


def test_a_folder_of_runs_and_reports(run, tmp_path):
    other = write_run(tmp_path / "runs" / "other", [make_trajectory(seed=5, policy="solo")])
    write_report(other, tmp_path / "runs" / "other-report")
    body = client(tmp_path / "runs").get("/api/summary").json()
    assert [(s["name"], s["kind"]) for s in body["sources"]] == [
        ("mixed", "run"),
        ("other", "run"),
        ("other-report", "report"),
    ]
    rows = client(tmp_path / "runs").get("/api/episodes", params={"source": "other"}).json()
    assert [r["policy"] for r in rows["episodes"]] == ["solo"]


def test_router_waits_for_a_directory_that_does_not_exist_yet(tmp_path):
    out = tmp_path / "served"
    c = router_client(out)
    body = c.get("/api/summary").json()
    assert body["sources"] == [] and "no such directory" in body["problems"][0]
    assert c.get("/api/episodes").json()["total"] == 0
    write_run(out, [make_trajectory()])
    assert c.get("/api/summary").json()["episodes"] == 1


def test_the_page_and_its_files_work_under_a_prefix(run):
    c = router_client(run, prefix="/dash")
    page = c.get("/dash/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="dashboard/app.js"' in page.text and "//" not in page.text.split("<script")[1]
    assert c.get("/dash/dashboard/app.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/dash/dashboard/episode.js").headers["content-type"].startswith("text/java")
    assert c.get("/dash/dashboard/style.css").status_code == 200
    assert c.get("/dash/api/summary").json()["episodes"] == 12


def test_check_dirs_says_what_is_missing(tmp_path, run):
    with pytest.raises(ConfigError, match="no such directory"):
        check_dirs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing to show .*timely eval"):
        check_dirs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="at least one"):
        check_dirs([])
    assert [s.kind for s in check_dirs([run])] == ["run"]


def test_a_budget_sweep_report_has_an_auc_column(tmp_path):
    sweep = []
    for policy, outcomes in (
        ("oracle", ("cut_off", "on_time")),
        ("budget-aware", ("on_time",) * 2),
    ):
        for seed in range(2):
            for label, outcome in zip(("x0.5@oracle", "x2@oracle"), outcomes, strict=True):
                t = make_trajectory(outcome=outcome, policy=policy, seed=seed)
                t.metadata.update(budget_label=label, key=f"{policy}-{seed}-{label}")
                sweep.append(t)
    run = write_run(tmp_path / "runs" / "sweep", sweep)
    report = write_report(run, tmp_path / "reports" / "sweep")
    tables = client(report).get("/api/results").json()["tables"]
    overview = next(t for t in tables if t["level"] == "overview")
    assert overview["auc_protocols"] == ["oracle"]
    auc = {r["policy"]: r["auc"]["oracle"]["auc"] for r in overview["rows"]}
    assert auc == {"oracle": pytest.approx(0.5), "budget-aware": pytest.approx(1.0)}
    # A one-budget sweep has no AUC to show: no column, not a zero.
    flat = write_report(
        write_run(tmp_path / "runs" / "flat", mixed_trajectories()), tmp_path / "r2"
    )
    for t in client(flat).get("/api/results").json()["tables"]:
        assert t["auc_protocols"] == [] and all(not r.get("auc") for r in t["rows"])
    js = client(report).get("/dashboard/app.js").text
    assert "auc_protocols" in js and "AUC@" in js
