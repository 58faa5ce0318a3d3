"""Tool metadata for MCP clients: titles, behaviour hints, and output schemas that real answers fit.

A wrong ``outputSchema`` breaks every MCP client that validates (the official SDK does), so the
answers of each structured tool are checked against it here, on both clocks (wall answers carry
measured times that virtual ones leave out), including the failure shapes (a refused
submission.csv, a program that exits 1).
"""

from __future__ import annotations

import json
import math

import pytest
from jsonschema import Draft202012Validator

from timely.clock import VirtualClock, WallClock
from timely.policies.base import Deadline
from timely.task import make_task
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app
from timely_server.registry import default_registry
from timely_tools.base import ToolDef


async def _handler(arguments, ctx):
    return {}


def test_every_builtin_tool_has_a_title_and_consistent_hints():
    registry = default_registry()
    for name in registry.names():
        t = registry.get(name)
        assert t.title, f"{name} has no title"
        assert not (t.read_only and t.destructive), name
    read_only = {n for n in registry.names() if registry.get(n).read_only}
    assert {"echo", "calculator", "describe_data", "evaluate_model", "get_score"} <= read_only
    assert not read_only & {"run_python", "step", "go", "train_model", "game_new", "end_game"}
    assert registry.get("run_python").destructive and not registry.get("train_model").destructive
    structured = {n for n in registry.names() if registry.get(n).output_schema}
    assert structured == {
        "run_python",
        "ml_setup",
        "describe_data",
        "train_model",
        "evaluate_model",
        "submit_model",
    }


def test_bad_output_schemas_are_refused_when_the_tool_is_defined():
    params = {"type": "object", "properties": {}}
    with pytest.raises(ValueError, match="must be a JSON Schema object type"):
        ToolDef("t", "d", params, _handler, output_schema={"type": "string"})
    with pytest.raises(ValueError, match="invalid output_schema"):
        ToolDef("t", "d", params, _handler, output_schema={"type": "object", "required": 3})
    # A read-only tool has nothing to destroy, whatever the default says.
    assert not ToolDef("t", "d", params, _handler, read_only=True).destructive


def _checker(name):
    schema = default_registry().get(name).output_schema
    validator = Draft202012Validator(schema)

    def check(result):
        assert result.error is None, result
        answer = json.loads(result.content)
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(answer)]
        assert not errors, f"{name}: {errors}\n{answer}"
        return answer

    return check


async def _call(client, clock, name, args, session):
    return await client.call(
        name, args, call_id="c", session_id=session, deadline=Deadline(math.inf, clock)
    )


def _setup_args(task):
    d = task.data
    return {
        "files": task._files(),
        "train": "data/public/train.csv",
        "test": "data/public/test.csv",
        "id_column": d.id_column,
        "targets": list(d.targets),
        "label_column": d.label_column,
        "kind": d.kind,
        "metric": d.metric,
        "format": d.fmt,
        "fingerprint": d.fp,
    }


@pytest.mark.parametrize("clock_kind", ["virtual", "wall"])
@pytest.mark.parametrize("task_id", ["ml/breast-cancer-v1", "ml/diabetes-v1"])
async def test_ml_tool_answers_fit_their_output_schemas(task_id, clock_kind):
    clock = VirtualClock() if clock_kind == "virtual" else WallClock()
    task = make_task(task_id, seed=0)
    app = create_app(ServerConfig(latency="constant:0"))
    async with ToolClient.in_process(app) as client:
        await client.create_session("s")
        setup = _checker("ml_setup")(await _call(client, clock, "ml_setup", _setup_args(task), "s"))
        assert setup["ok"]
        described = _checker("describe_data")(await _call(client, clock, "describe_data", {}, "s"))
        estimator = sorted(described["estimators"])[0]
        trained = _checker("train_model")(
            await _call(client, clock, "train_model", {"estimator": estimator}, "s")
        )
        assert ("train_s" in trained) == (clock_kind == "wall")
        evaluated = _checker("evaluate_model")(
            await _call(client, clock, "evaluate_model", {"model_id": "m1"}, "s")
        )
        assert ("confusion" in evaluated) == (described["task"] == "classification")
        _checker("submit_model")(
            await _call(client, clock, "submit_model", {"model_id": "m1"}, "s")
        )
        await client.end_session("s")


async def test_run_python_answers_fit_its_output_schema():
    task = make_task("ml/breast-cancer-code-v1", seed=0)
    check = _checker("run_python")
    clock = WallClock()
    app = create_app(ServerConfig(latency="constant:0"))
    async with ToolClient.in_process(app) as client:
        await task.setup(client, "code")
        ok = check(await _call(client, clock, "run_python", {"code": "print(1)"}, "code"))
        assert ok["exit_code"] == 0 and "duration_s" in ok
        failed = check(await _call(client, clock, "run_python", {"code": "1/0"}, "code"))
        assert failed["exit_code"] == 1
        bad = "open('submission.csv', 'w').write('id,target\\n1,0\\n')"
        refused = check(await _call(client, clock, "run_python", {"code": bad}, "code"))
        assert "error" in refused["submission"]
        copy = "import shutil\nshutil.copy('data/public/sample_submission.csv', 'submission.csv')"
        submitted = check(await _call(client, clock, "run_python", {"code": copy}, "code"))
        assert submitted["submission"]["id"] == "sub-1"
        # The ML observer's field is not the sandbox's: its shape is the ML submission's.
        Draft202012Validator(default_registry().get("submit_model").output_schema).validate(
            {"submission": submitted["submission"], "note": ""}
        )
        await task.teardown(client, "code")
