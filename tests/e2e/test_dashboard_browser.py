"""`timely dashboard` in headless Chromium: the page loads, the leaderboard matches results.json,
an episode's timeline draws one bar per step, the filters narrow the list, new episodes appear.

The server is the real command in a subprocess on 127.0.0.1 (a free port, stopped at the end and
killed with pytest if pytest dies); the browser is Debian's ``chromium`` driven by Playwright
(``playwright install`` would download a browser). Without either the browser tests skip,
except under ``TIMELY_REQUIRE_BROWSER=1`` (set by .ci/run), where they fail. Screenshots go to
``$TIMELY_TEST_ARTIFACTS`` (default: a pytest temporary directory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.dashboard_runs import make_trajectory
from timely.runrecord import append_trajectories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BIN = Path(sys.executable).parent
SUITE = {
    "name": "dashboard-e2e",
    "tasks": [
        {"id": "math/arithmetic-v1", "difficulty": 2},
        {"id": "games/treasure-v1", "difficulty": 1},
    ],
    "policies": [
        {"spec": "scripted:oracle", "label": "oracle"},
        {"spec": "scripted:budget-aware", "label": "budget-aware", "speed": "large-slow"},
        {"spec": "scripted:answer-now", "label": "answer-now"},
    ],
    "episodes": 1,
    "latencies": ["constant:0.2", "constant:3.0"],
    # A late answer is kept (and scored 0) so the run holds every kind of outcome.
    "budgets": {"seconds": [5, 40], "overrun": "late"},
    "clock": "virtual",
}


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make browser, as root, installs Debian's chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("TIMELY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test must run here (TIMELY_REQUIRE_BROWSER=1): {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("TIMELY_TEST_ARTIFACTS")
    path = Path(root) / "dashboard" if root else tmp_path_factory.mktemp("dashboard-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real eval run (scripted policies, virtual clock) plus two episodes no scripted policy
    plays (a failure, a turn limit), and its leaderboard in plots/ as `timely eval` writes it."""
    from timely_eval.leaderboard import write_leaderboard
    from timely_eval.runner import run_suite
    from timely_eval.suite import Suite

    run = tmp_path_factory.mktemp("dashboard") / "run"
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run_suite(Suite.model_validate(SUITE), run)).result()
    extra = [
        make_trajectory(outcome="failed", policy="stub-model", seed=90),
        make_trajectory(outcome="no_answer", policy="stub-model", seed=91),
    ]
    append_trajectories(run / "trajectories.jsonl", extra)
    write_leaderboard([run], run / "plots")
    return run


def _die_with_parent() -> None:
    # The server must not outlive a pytest that was killed: Linux stops it with its parent.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def server(run_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "400"}
    proc = subprocess.Popen(
        [str(BIN / "timely"), "dashboard", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if not found and (m := re.search(r"http://127\.0\.0\.1:\d+/", line)):
                found.append(m.group(0))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(60) or not found:
            pytest.fail(f"timely dashboard printed no URL (exit code {proc.poll()})")
        url = found[0]
        for _ in range(200):  # the URL is printed just before uvicorn starts serving
            try:
                httpx.get(url + "api/summary", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    page.close()
    assert errors == [], f"the page logged errors: {errors}"


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-version]")  # the app has drawn everything once


def test_page_loads_and_the_leaderboard_matches_results_json(page, server, run_dir, artifacts):
    _open(page, server)
    assert page.title() == "Timely Machine · dashboard"
    results = json.loads((run_dir / "plots" / "results.json").read_text())
    assert results["families"], "the fixture run has no leaderboard"
    for fam in results["families"]:
        rows = page.locator(
            f'.board[data-family="{fam["family"]}"] table[data-level="overview"] tbody tr'
        )
        assert rows.count() == len(fam["overview"])
        for i, want in enumerate(fam["overview"]):
            row = rows.nth(i)
            assert row.get_attribute("data-policy") == want["policy"]
            assert row.locator("td.policy").inner_text() == want["policy"]
            shown = float(row.locator("td.score").get_attribute("data-score"))
            assert shown == pytest.approx(want["score"])
            text = row.locator("td.score").inner_text()  # "0.50[0.22, 0.78]"
            assert float(re.match(r"[\d.]+", text).group()) == pytest.approx(
                want["score"], abs=0.0051
            )
    assert page.locator("#gallery img").count() == len(list((run_dir / "plots").glob("*.png")))
    page.screenshot(path=str(artifacts / "dashboard-full.png"), full_page=True)
    page.locator("#leaderboard").screenshot(path=str(artifacts / "leaderboard.png"))


def test_a_timeline_draws_each_step_of_the_chosen_episode(page, server, run_dir, artifacts):
    listed = httpx.get(server + "api/episodes", params={"task": "games/treasure-v1"}).json()
    chosen = max(listed["episodes"], key=lambda e: e["steps"])  # the longest game episode
    record = httpx.get(server + f"api/episodes/{chosen['id']}").json()
    _open(page, f"{server}#episode={chosen['id']}")
    page.wait_for_selector("svg.timeline")
    svg = page.locator("#episode-detail svg.timeline")
    assert svg.locator("g.step").count() == len(record["timeline"]) == chosen["steps"]
    with_gen = sum(1 for s in record["timeline"] if s["gen_s"] > 0)
    assert svg.locator("g.step rect.gen").count() == with_gen
    assert svg.locator("g.budget line").count() == 1
    assert svg.locator(f'g.end[data-outcome="{chosen["outcome"]}"]').count() == 1
    assert page.locator("tr.ep-row.selected").get_attribute("data-id") == chosen["id"]
    page.locator("#episode-detail").screenshot(path=str(artifacts / "timeline.png"))
    # Another episode, picked in the list: the timeline follows.
    cut = httpx.get(server + "api/episodes", params={"outcome": "cut_off,late"}).json()
    other = cut["episodes"][0]
    page.locator(f'tr.ep-row[data-id="{other["id"]}"]').click()
    page.wait_for_selector(f'#episode-detail g.end[data-outcome="{other["outcome"]}"]')
    assert page.locator("#episode-detail svg.timeline g.step").count() == other["steps"]
    page.locator("#zoom").click()
    page.wait_for_selector("#episode-detail svg.timeline g.step")
    page.locator("#episode-detail").screenshot(path=str(artifacts / "timeline-late-or-cut.png"))


def test_filters_narrow_the_episode_list(page, server, artifacts):
    _open(page, server)
    total = httpx.get(server + "api/episodes").json()["total"]
    page.wait_for_function(f"document.querySelectorAll('tr.ep-row').length === {total}")
    page.select_option('#filters select[name="policy"]', "oracle")
    want = httpx.get(server + "api/episodes", params={"policy": "oracle"}).json()["total"]
    page.wait_for_function(f"document.querySelectorAll('tr.ep-row').length === {want}")
    cells = page.locator("tr.ep-row td:nth-child(3)").all_inner_texts()
    assert set(cells) == {"oracle"}
    assert "policy=oracle" in page.url
    # The episode shown follows the filter.
    page.wait_for_selector('#episode-detail h3:has-text("oracle")')
    # The outcome chips filter too, on top of the other filters.
    page.select_option('#filters select[name="policy"]', "stub-model")
    page.locator('.chip[data-outcome="failed"]').click()
    page.wait_for_function("document.querySelectorAll('tr.ep-row').length === 1")
    assert page.locator("tr.ep-row").get_attribute("data-outcome") == "failed"
    page.wait_for_selector('#episode-detail .badge:has-text("failed")')
    page.select_option('#filters select[name="outcome"]', "")
    page.select_option('#filters select[name="policy"]', "oracle")
    page.select_option('#filters select[name="latency"]', "constant:3.0")
    params = {"policy": "oracle", "latency": "constant:3.0"}
    want = httpx.get(server + "api/episodes", params=params).json()["total"]
    page.wait_for_function(f"document.querySelectorAll('tr.ep-row').length === {want}")
    page.locator("#episodes").screenshot(path=str(artifacts / "episodes-filtered.png"))
    page.click("#reset-filters")
    page.wait_for_function(f"document.querySelectorAll('tr.ep-row').length === {total}")


def test_episodes_appended_while_the_page_is_open_appear(page, server, run_dir):
    _open(page, server)
    before = page.locator("tr.ep-row").count()
    append_trajectories(
        run_dir / "trajectories.jsonl", [make_trajectory(policy="newcomer", seed=77)]
    )
    # The page polls every few seconds; wait for it (the timeout is generous, not a measure).
    page.wait_for_function(
        f"document.querySelectorAll('tr.ep-row').length === {before + 1}", timeout=30_000
    )
    assert page.locator('#filters select[name="policy"] option[value="newcomer"]').count() == 1


def test_the_command_says_when_there_is_nothing_to_show(tmp_path):
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    timely = str(BIN / "timely")
    empty = subprocess.run(
        [timely, "dashboard", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert empty.returncode == 2 and "nothing to show" in empty.stdout
    missing = subprocess.run(
        [timely, "dashboard", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 2 and "no such directory" in missing.stdout
    helped = subprocess.run(
        [timely, "dashboard", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert helped.returncode == 0 and "127.0.0.1" in helped.stdout and "--port" in helped.stdout
