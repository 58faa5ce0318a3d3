"""The ML family: deterministic instances, disjoint data, honest scoring, oracle and tools agree."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest

from timely.budget import Budget
from timely.clock import VirtualClock, WallClock
from timely.errors import TaskError
from timely.loop import run_episode
from timely.policies.base import Deadline, make_policy
from timely.task import TASKS, make_task, task_names
from timely.testing import check_task, check_task_with_loop
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app
from timely_tools.ml.data import decode_receipt, encode_receipt, find_receipt

TOOL_IDS = ["ml/breast-cancer-v1", "ml/digits-v1", "ml/diabetes-v1"]
CODE_IDS = ["ml/breast-cancer-code-v1", "ml/diabetes-code-v1"]


def test_ids_and_aliases_are_registered():
    names = task_names()
    for tid in [*TOOL_IDS, *CODE_IDS, "ml/dir-v1"]:
        assert tid in names
        assert TASKS.get(tid.rsplit("-v", 1)[0]) is TASKS.get(tid)
    assert getattr(TASKS.get("ml/dir-v1"), "requires_options", False)


@pytest.mark.parametrize("difficulty", [2, 3])
@pytest.mark.parametrize("task_id", TOOL_IDS + CODE_IDS)
def test_static_contract_at_every_difficulty(task_id, difficulty):
    check_task(task_id, n_seeds=3, difficulty=difficulty)


@pytest.mark.parametrize("task_id", TOOL_IDS)
async def test_oracle_solves_the_hardest_level_within_budget(task_id):
    await check_task_with_loop(task_id, n_seeds=2, difficulty=3)


def rows(text):
    return list(csv.reader(io.StringIO(text)))


def test_train_and_test_episodes_never_share_a_row():
    seen = {}
    for split in ("train", "test"):
        feats = set()
        for seed in range(4):
            d = make_task("ml/breast-cancer-v1", seed=seed, split=split).data
            for text in (d.train_csv, d.test_csv):
                feats |= {tuple(r[1:31]) for r in rows(text)[1:]}
        seen[split] = feats
    assert seen["train"] and seen["test"] and not seen["train"] & seen["test"]


def test_difficulty_degrades_the_training_data_but_not_the_test_labels():
    easy = make_task("ml/digits-v1", seed=3, difficulty=1)
    hard = make_task("ml/digits-v1", seed=3, difficulty=3)
    assert hard.spec.metadata["train_rows"] < easy.spec.metadata["train_rows"]
    assert hard.spec.metadata["features"] == 32 < easy.spec.metadata["features"] == 64
    assert "Difficulty 3" in hard.spec.prompt
    assert 0 < hard.calibration.reference < easy.calibration.reference <= 1


def test_the_agent_never_sees_test_labels():
    task = make_task("ml/diabetes-v1", seed=1)
    header = rows(task.data.test_csv)[0]
    assert "target" not in header and "target" in rows(task.data.train_csv)[0]
    for text in task._files().values():
        assert repr(task.data.test_labels[0]) not in text


def receipt_for(task, predictions):
    return encode_receipt(task.data.fp, task.data.kind, predictions)


def test_scoring_right_wrong_and_malformed():
    task = make_task("ml/breast-cancer-v1", seed=2)
    cal = task.calibration
    assert 0.5 < cal.baseline < cal.reference <= 1
    labels = list(task.data.test_labels)
    assert task.score(f"Final: {receipt_for(task, labels)}") == 1.0  # perfect beats the reference
    assert task.score(task.solution().answer) == 1.0
    majority = max(set(labels), key=labels.count)
    assert task.score(receipt_for(task, [majority] * len(labels))) == 0.0
    flipped = ["1" if v == "0" else "0" for v in labels]
    assert task.score(receipt_for(task, flipped)) == 0.0
    receipt = receipt_for(task, labels)
    for bad in (
        receipt[:-6] + "AAAAAA",  # corrupted payload
        receipt.replace(task.data.fp, "00000000"),  # another instance's receipt
        receipt_for(task, labels[:-1]),  # wrong length
        encode_receipt(task.data.fp, "regression", [0.0] * len(labels)),
        "sub-1",
        "Final: banana",
    ):
        assert task.score(bad) == 0.0, bad
    other = make_task("ml/breast-cancer-v1", seed=3)
    assert task.score(other.solution().answer) == 0.0


def test_regression_scores_follow_r2_between_mean_and_reference():
    task = make_task("ml/diabetes-v1", seed=0)
    cal = task.calibration
    truth = np.array(task.data.test_labels)
    ref = decode_receipt(cal.reference_receipt, task.data.fp, "regression", len(truth))
    halfway = truth.mean() + 0.5 * (ref - truth.mean())
    score = task.score(receipt_for(task, halfway.tolist()))
    assert 0.3 < score < 0.95
    assert task.test_metric(receipt_for(task, truth.tolist())) == pytest.approx(1.0, abs=1e-6)
    assert cal.baseline < 0.01


def test_receipts_round_trip_and_are_found_in_text():
    r = encode_receipt("0123abcd", "classification", ["b", "a", "b"])
    assert find_receipt(f"Final: sub-3 ({r}).") == r
    assert decode_receipt(r, "0123abcd", "classification", 3) == ["b", "a", "b"]
    assert decode_receipt(r, "0123abcd", "classification", 4) is None
    values = decode_receipt(encode_receipt("0123abcd", "regression", [1.5, -2.0]), "0123abcd",
                            "regression", 2)  # fmt: skip
    assert values.tolist() == [1.5, -2.0]


async def play(task, policy="scripted:oracle", clock=None, latency="constant:1.0"):
    app = create_app(ServerConfig(latency=latency))
    async with ToolClient.in_process(app) as tools:
        return await run_episode(
            make_policy(policy), task, tools, clock or VirtualClock(), Budget(seconds=300)
        )


def results(traj, name):
    return [json.loads(r.content) for s in traj.steps for r in s.tool_results if r.name == name]


async def test_tool_receipts_match_the_oracle_and_replays_are_identical():
    task = make_task("ml/breast-cancer-v1", seed=4, difficulty=2)
    first, second = await play(task), await play(task)
    assert first.score == 1.0 and first.replay_json() == second.replay_json()
    subs = [r["submission"] for r in results(first, "submit_model")]
    sol = task.solution()
    assert [s["id"] for s in subs] == ["sub-1", "sub-2"]
    assert subs[1]["receipt"] == find_receipt(sol.answer)
    # Scoring from the trajectory alone: by name, or the last submission.
    assert task.score("Final: sub-2", first) == 1.0 == task.score("done", first)
    assert task.score("Final: sub-1", first) == task.score(sol.fallback_answers[3]) < 1.0
    trained = results(first, "train_model")
    assert trained[0]["validation"]["accuracy"] > 0.5 and "train_s" not in trained[0]


async def test_code_mode_oracle_writes_submission_csv_through_the_sandbox():
    task = make_task("ml/diabetes-code-v1", seed=1)
    traj = await play(task)
    assert traj.score == 1.0 and traj.compliant
    runs = results(traj, "run_python")
    assert runs[0]["exit_code"] == 0 and "id," in runs[0]["stdout"]
    assert runs[1]["submission"]["receipt"] == find_receipt(task.solution().answer)
    assert task.score("Final: sub-1", traj) == 1.0


async def test_wall_clock_counts_real_training_time():
    task = make_task("ml/digits-v1", seed=0)
    traj = await play(task, clock=WallClock(), latency="constant:0.01")
    assert traj.score == 1.0
    trained = results(traj, "train_model")
    assert all(t["train_s"] > 0 for t in trained)
    assert traj.tool_s >= sum(t["train_s"] for t in trained)


async def call(client, name, args, session="ml-s"):
    return await client.call(
        name, args, call_id="x", session_id=session, deadline=Deadline(100, VirtualClock())
    )


async def test_tools_explain_bad_input():
    task = make_task("ml/breast-cancer-v1", seed=0)
    app = create_app(ServerConfig())
    async with ToolClient.in_process(app) as client:
        await task.setup(client, "ml-s")
        described = json.loads((await call(client, "describe_data", {})).content)
        assert described["task"] == "classification" and described["rows"]["test"] == 71
        assert "ridge" not in described["estimators"] and "svm" in described["estimators"]
        cases = [
            ("train_model", {"estimator": "ridge"}, "does not do classification"),
            ("train_model", {"estimator": "random_forest", "params": {"n_estimators": 10**6}},
             "n_estimators"),
            ("train_model", {"estimator": "knn", "params": {"leaf": 3}}, "leaf"),
            ("train_model", {"estimator": "knn", "features": ["nope"]}, "unknown feature"),
            ("evaluate_model", {"model_id": "m9"}, "call train_model first"),
            ("submit_model", {"model_id": "m1"}, "no model"),
        ]  # fmt: skip
        for name, args, message in cases:
            result = await call(client, name, args)
            assert result.error == "tool_input_error" and message in result.content, result
        trained = json.loads((await call(client, "train_model", {"estimator": "knn"})).content)
        evaluated = json.loads((await call(client, "evaluate_model", {"model_id": "m1"})).content)
        assert evaluated["validation"]["accuracy"] == trained["validation"]["accuracy"]
        assert set(evaluated["confusion"]) == {"0", "1"}
        again = await call(client, "ml_setup", {"files": {}, "train": "a", "test": "b",
                                                "id_column": "id", "targets": ["t"],
                                                "kind": "regression", "metric": "r2"})  # fmt: skip
        assert again.error == "tool_input_error"
        await task.teardown(client, "ml-s")


async def test_a_malformed_submission_csv_is_reported_not_scored():
    task = make_task("ml/breast-cancer-code-v1", seed=0)
    app = create_app(ServerConfig())
    async with ToolClient.in_process(app) as client:
        await task.setup(client, "code-s")
        bad = "open('submission.csv', 'w').write('id,target\\n1,0\\n')"
        result = json.loads((await call(client, "run_python", {"code": bad}, "code-s")).content)
        assert "one row per test id" in result["submission"]["error"]
        copy = "import shutil\nshutil.copy('data/public/sample_submission.csv', 'submission.csv')"
        result = json.loads((await call(client, "run_python", {"code": copy}, "code-s")).content)
        assert result["submission"]["id"] == "sub-1"
        same = json.loads((await call(client, "run_python", {"code": copy}, "code-s")).content)
        assert "submission" not in same  # unchanged file, no new submission
        link = (
            "import os\nos.remove('submission.csv')\nos.symlink('/etc/hostname', 'submission.csv')"
        )
        linked = json.loads((await call(client, "run_python", {"code": link}, "code-s")).content)
        assert linked["exit_code"] == 0 and "submission" not in linked  # links are never read
        peek = "from sklearn.datasets import load_breast_cancer\nload_breast_cancer()"
        leak = json.loads((await call(client, "run_python", {"code": peek}, "code-s")).content)
        assert leak["exit_code"] == 1 and "PermissionError" in leak["stderr"]
        await task.teardown(client, "code-s")


def test_bad_options_fail_with_a_clear_message():
    with pytest.raises(TaskError, match="difficulty"):
        make_task("ml/diabetes-v1", seed=0, difficulty=4)
    with pytest.raises(TaskError, match="split"):
        make_task("ml/diabetes-v1", seed=0, split="dev")


async def test_sessions_of_one_upload_share_its_parsed_data_read_only():
    """ml_setup parses an upload once (timely_tools.ml.tools); sessions cannot alter it."""
    from timely_tools.ml import blas
    from timely_tools.ml.tools import ML_KEY

    task = make_task("ml/diabetes-v1", seed=2)
    assert make_task("ml/diabetes-v1", seed=2).data is task.data  # built once per instance
    app = create_app(ServerConfig())
    sessions = app.state.tool_server.sessions
    holders = blas._holders
    async with ToolClient.in_process(app) as client:
        described = []
        for sid in ("share-a", "share-b"):
            await task.setup(client, sid)
            described.append(json.loads((await call(client, "describe_data", {}, sid)).content))
        a, b = (sessions.get(sid).state[ML_KEY] for sid in ("share-a", "share-b"))
        assert a.x is b.x and not a.x.flags.writeable and a.test_ids is not b.test_ids
        with pytest.raises(ValueError, match="read-only"):
            a.x[0, 0] = 1.0
        assert described[0] == described[1]
        described[0]["features"][0]["mean"] = "changed"  # a caller's copy, not the cache
        again = json.loads((await call(client, "describe_data", {}, "share-b")).content)
        assert again == described[1]
        assert blas._holders == holders + 2  # each open ML session holds BLAS to one thread
        for sid in ("share-a", "share-b"):
            await task.teardown(client, sid)
        assert blas._holders == holders


def test_one_blas_thread_changes_no_prediction_and_is_restored():
    """timely_tools.ml.blas: single-threaded fits give the bits the default thread count gives."""
    from threadpoolctl import threadpool_info

    from timely_tools.ml import blas, recipe

    def counts():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = counts()
    for task_id in ("ml/breast-cancer-v1", "ml/diabetes-v1"):
        d = make_task(task_id, seed=1, difficulty=3).data
        public = recipe.load(d.train_csv, d.test_csv, d.id_column, [d.label_column])
        y = [row[0] for row in public["y_train"]]
        for name, spec in recipe.ESTIMATORS.items():
            if d.kind not in spec["kinds"]:
                continue
            runs = []
            for limited in (False, True):
                with blas.one_thread() if limited else contextlib.nullcontext():
                    assert not limited or set(counts()) == {1}
                    model = recipe.fit(name, d.kind, {}, public["x_train"], y)
                    runs.append(recipe.predict(model, d.kind, public["x_test"]))
            assert runs[0] == runs[1], (task_id, name)
    assert counts() == before
