"""The work model: on a virtual clock a bigger job costs more, and what it costs replays exactly."""

import json
import py_compile

import pytest

from timely.budget import Budget
from timely.clock import VirtualClock, WallClock
from timely.loop import run_episode
from timely.policies.base import Deadline, make_policy
from timely.task import make_task
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app
from timely_tools.ml import work
from timely_tools.sandbox.core import SECONDS_PER_EVENT, SandboxLimits, Workspace, run_code, work_s

LINEAR = ("logistic_regression", {})
FOREST = ("random_forest", {"n_estimators": 500})


def test_bigger_fits_cost_more_and_the_model_is_a_pure_function():
    def fit(name, params, rows=400, d=30, classes=2, kind="classification"):
        return work.fit_s(name, kind, params, rows, d, classes)

    linear, forest = fit(*LINEAR), fit(*FOREST)
    assert forest > 20 * linear
    assert forest == fit(*FOREST)  # no measurement, no state
    assert fit("random_forest", {"n_estimators": 10}) < forest
    assert fit("random_forest", {"n_estimators": 500, "max_depth": 2}) < forest
    assert fit(*FOREST, rows=1600) > forest and fit(*FOREST, d=8) < forest
    boost = {"n_estimators": 100}
    assert fit("gradient_boosting", boost, classes=10) > 5 * fit("gradient_boosting", boost)
    assert fit("svm", {}, rows=1600) > 5 * fit("svm", {}, rows=400)
    for name in work.COSTS:  # every estimator has a model, for both kinds where it applies
        for kind in ("classification", "regression"):
            assert work.fit_s(name, kind, {}, 100, 5, 3) > 0
            assert work.predict_s(name, kind, {}, 100, 20, 5, 3) > 0
    assert work.predict_s("svm", "classification", {}, 100, 0, 5, 2) == 0.0


async def ml_calls(config, calls, clock_kind="virtual", session="w"):
    """Set up breast-cancer seed 0 and make ``calls``; the ToolResults and their clocks."""
    task = make_task("ml/breast-cancer-v1", seed=0)
    out = []
    async with ToolClient.in_process(create_app(config)) as client:
        await task.setup(client, session)
        for name, args, budget in calls:
            clock = VirtualClock() if clock_kind == "virtual" else WallClock()
            result = await client.call(
                name,
                args,
                call_id="c",
                session_id=session,
                deadline=Deadline(clock.now() + budget, clock),
            )
            out.append((result, clock))
        await task.teardown(client, session)
    return out


TRAIN = [
    ("train_model", {"estimator": LINEAR[0], "params": LINEAR[1]}, 100),
    ("train_model", {"estimator": FOREST[0], "params": FOREST[1]}, 100),
    ("evaluate_model", {"model_id": "m2"}, 100),
    ("submit_model", {"model_id": "m2"}, 100),
]


async def test_a_big_forest_costs_more_virtual_seconds_than_a_linear_model():
    (linear, c1), (forest, c2), (evaluated, c3), (submitted, c4) = await ml_calls(
        ServerConfig(latency="constant:1.0"), TRAIN
    )
    assert all(r.ok for r in (linear, forest, evaluated, submitted))
    assert 0 < linear.work_s < 0.1 and forest.work_s > 10 * linear.work_s
    for result, clock in ((linear, c1), (forest, c2), (evaluated, c3), (submitted, c4)):
        # latency + modelled work, nothing measured: the service time stays out of the record
        assert result.charged_s == clock.now() == 1.0 + result.work_s
        assert result.service_s == 0.0 and result.work_s > 0
    assert submitted.work_s > forest.work_s  # refits on all training rows
    assert "train_s" not in json.loads(forest.content)


async def test_identical_calls_cost_identical_work_and_wall_clocks_measure_instead():
    first = await ml_calls(ServerConfig(latency="constant:1.0"), TRAIN)
    second = await ml_calls(ServerConfig(latency="constant:1.0", seed=7), TRAIN, session="other")
    assert [r.work_s for r, _ in first] == [r.work_s for r, _ in second]
    scaled = await ml_calls(ServerConfig(latency="constant:1.0", work_scale=2.0), TRAIN[:2])
    assert [r.work_s for r, _ in scaled] == [2 * r.work_s for r, _ in first[:2]]
    off = await ml_calls(ServerConfig(latency="constant:1.0", work_scale=0.0), TRAIN[:2])
    assert [c.now() for _, c in off] == [1.0, 1.0]
    wall = await ml_calls(ServerConfig(latency=0.0), TRAIN[:2], clock_kind="wall")
    assert all(r.ok and r.work_s == 0.0 and r.charged_s >= r.service_s > 0 for r, _ in wall)


async def test_work_that_does_not_fit_in_the_budget_is_a_deadline():
    forest = TRAIN[1][:2]
    [(result, clock)] = await ml_calls(ServerConfig(latency="constant:1.0"), [(*forest, 1.2)])
    assert result.error == "deadline_exceeded" and "work" in result.content
    assert clock.now() == 1.2 and result.work_s == 0.0  # exactly the time that was left


@pytest.mark.parametrize("task_id", ["ml/breast-cancer-v1", "ml/diabetes-code-v1"])
async def test_episodes_replay_byte_identical_with_their_work(task_id):
    async def play():
        task = make_task(task_id, seed=2)
        async with ToolClient.in_process(create_app(ServerConfig(latency=1.0))) as tools:
            return await run_episode(
                make_policy("scripted:oracle"), task, tools, VirtualClock(), Budget(seconds=300)
            )

    first, second = await play(), await play()
    assert first.score == 1.0 and first.replay_json() == second.replay_json()
    results = [r for s in first.steps for r in s.tool_results]
    assert sum(r.work_s for r in results) > 0
    assert all(r.charged_s == r.latency_s + r.work_s for r in results)


async def test_the_sandbox_counts_the_same_events_on_every_run():
    # Imports library code (numpy builds its __all__ from a set) and prints a set of strings:
    # both depend on hash order, which the sandbox fixes.
    code = (
        "import numpy\n"
        "total = sum(i * i for i in range(20000))\n"
        "print(sorted({'a', 'b'}) == ['a', 'b'], list({'x', 'y', 'z', 'w'}), total)\n"
    )
    ws = Workspace.create()
    try:
        runs = [await run_code(code, ws.path, count_events=True) for _ in range(3)]
        # Whether an imported module has a .pyc changes what the import machinery runs, not
        # what the program does: the count is the same.
        (ws.path / "mod.py").write_text("def f():\n    return sum(range(10))\n")
        uses = "import mod\nprint(mod.f())"
        uncached = await run_code(uses, ws.path, count_events=True)
        py_compile.compile(str(ws.path / "mod.py"), doraise=True)
        cached = await run_code(uses, ws.path, count_events=True)
        bigger = await run_code(code.replace("20000", "80000"), ws.path, count_events=True)
        plain = await run_code(code, ws.path)
        limits = SandboxLimits(timeout_s=0.5)
        killed = await run_code("while True: pass", ws.path, limits, count_events=True)
    finally:
        ws.close()
    assert all(r.ok for r in runs), runs[0].stderr
    assert len({r.events for r in runs}) == 1 and len({r.stdout for r in runs}) == 1
    events = runs[0].events
    assert events > 20000 and bigger.events > events + 3 * 20000
    assert work_s(runs[0], SandboxLimits()) == events * SECONDS_PER_EVENT
    assert plain.events is None and plain.stdout == runs[0].stdout
    assert uncached.ok and cached.ok and 0 < uncached.events == cached.events
    assert killed.killed == "timeout" and killed.events is None
    assert work_s(killed, limits) == 0.5  # the limit, not what happened to be measured
