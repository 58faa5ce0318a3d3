"""Task options that name files on the server are refused unless the operator allows them.

``{"task": "math/jsonl", "task_options": {"path": "/etc/passwd"}}`` once made the endpoint open
that file and answer a parse error naming its lines; ``ml/dir`` with ``path=/`` listed a
directory. Each family declares such options (``Task.path_options``); the endpoint answers 403
``forbidden_option`` before building anything, unless started with ``--allow-task-files``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re

import httpx2
import pytest
from typer.testing import CliRunner

from timely.serve.app import create_app
from timely.serve.config import ServeConfig
from timely.task import TASKS, task_names

# Every family that reads the server's disk, and what it reads: a new family that names files
# must say so (test_options_that_look_like_locations_are_declared), and this list is reviewed.
EXPECTED = {
    "math/jsonl-v1": {"path"},
    "math/hf-v1": {"dataset", "cache_dir"},
    "ml/dir-v1": {"path", "private", "prompt"},
    "games/jericho-v1": {"rom"},
    "games/textworld-v1": {"cache_dir"},
}
REFUSED = sorted((task, option) for task, options in EXPECTED.items() for option in options)
LOCATION = re.compile(r"path|dir|file|rom|cache|dataset|private|prompt")
ITEMS = [
    {"id": "q1", "question": "What is 6*7?", "answer": "42"},
    {"id": "q2", "question": "What is 2+2?", "answer": "4"},
]


@contextlib.asynccontextmanager
async def served(**settings):
    """An ASGI client of a scripted endpoint (it plays registered tasks, in-process tools)."""
    app = create_app(ServeConfig(policy="scripted:oracle", **settings))
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://agent") as client:
            yield client
    finally:
        await app.state.services.close()


def error_of(response: httpx2.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["code"] == kind
    return error


def versioned_families() -> dict[str, type]:
    return {n: TASKS.get(n) for n in task_names() if n.rsplit("-v", 1)[-1].isdigit()}


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def test_the_families_that_read_files_declare_what_they_read():
    declared = {n: set(c.path_options) for n, c in versioned_families().items() if c.path_options}
    assert declared == EXPECTED


@pytest.mark.parametrize("task_id", sorted(task_names()))
def test_declared_path_options_are_constructor_options(task_id):
    """A declaration that names no real option would let the real one through unchecked."""
    family = TASKS.get(task_id)
    params = inspect.signature(family.__init__).parameters
    assert set(family.path_options) <= set(params) - {"self", "seed", "split", "difficulty"}


@pytest.mark.parametrize("task_id", sorted(task_names()))
def test_options_that_look_like_locations_are_declared(task_id):
    family = TASKS.get(task_id)
    params = inspect.signature(family.__init__).parameters
    looks = {p for p in params if LOCATION.search(p)}
    assert looks <= set(family.path_options), f"{task_id}: declare {looks} in path_options?"


@pytest.mark.parametrize(("task_id", "option"), REFUSED)
async def test_an_option_naming_a_server_file_is_refused_with_403(task_id, option, items_file):
    body = {"task": task_id, "seed": 0, "task_options": {option: str(items_file)}}
    async with served() as client:
        response = await client.post("/v1/runs", json=body)
        alias = await client.post("/v1/runs", json={**body, "task": task_id.rsplit("-v", 1)[0]})
        runs = (await client.get("/v1/runs")).json()["data"]
    for r in (response, alias):
        error = error_of(r, 403, "forbidden_option")
        assert error["param"] == f"task_options.{option}"
        message = error["message"]
        assert f"task_options.{option}" in message and "names a file or directory" in message
        assert "timely serve --allow-task-files" in message and "allow_task_files" in message
    assert runs == []  # refused before a run (or a task) was built


async def test_the_reported_attacks_are_refused_without_touching_the_disk():
    async with served() as client:
        passwd = await client.post(
            "/v1/runs", json={"task": "math/jsonl", "task_options": {"path": "/etc/passwd"}}
        )
        root = await client.post("/v1/runs", json={"task": "ml/dir", "task_options": {"path": "/"}})
        # Other options of the same families are not refused: only the file-naming ones.
        other = await client.post(
            "/v1/runs", json={"task": "math/jsonl", "task_options": {"train_fraction": 0.5}}
        )
    assert error_of(passwd, 403, "forbidden_option")["param"] == "task_options.path"
    assert "root:" not in passwd.text
    assert error_of(root, 403, "forbidden_option")["param"] == "task_options.path"
    assert "needs a data file" in error_of(other, 422, "invalid_request")["message"]


async def test_a_server_that_allows_task_files_plays_them(items_file):
    body = {"task": "math/jsonl", "seed": 1, "task_options": {"path": str(items_file)}}
    async with served(allow_task_files=True) as client:
        run = await client.post("/v1/runs", json=body)
        missing = await client.post(
            "/v1/runs",
            json={**body, "task_options": {"path": str(items_file.with_name("none.jsonl"))}},
        )
        directory = await client.post(
            "/v1/runs", json={**body, "task_options": {"path": str(items_file.parent)}}
        )
    assert run.status_code == 200, run.text
    summary = run.json()
    assert summary["task_id"] == "math/jsonl-v1" and summary["score"] == 1.0
    assert "no file at" in error_of(missing, 422, "invalid_request")["message"]
    assert "is not a file" in error_of(directory, 422, "invalid_request")["message"]


async def test_a_bad_file_is_reported_by_position_never_by_content(tmp_path, caplog):
    """The file is the server's: its client learns where the first bad line is, not its text."""
    path = tmp_path / "secret.jsonl"
    path.write_text(
        '{"id": "q1", "question": "q", "answer": "1"}\n'
        "root:x:0:0:root:/root:/bin/bash\n"
        '{"id": "q1", "question": "s3cret question", "answer": "s3cret"}\n'
        '{"id": "q3", "question": "q", "answer": "1", "split": "s3cret-split"}\n'
    )
    body = {"task": "math/jsonl-v1", "seed": 0, "task_options": {"path": str(path)}}
    with caplog.at_level("INFO", logger="timely.serve"):
        async with served(allow_task_files=True) as client:
            response = await client.post("/v1/runs", json=body)
    error = error_of(response, 422, "invalid_request")
    message = error["message"]
    assert error["param"] == "task_options"
    assert "has 3 bad line(s), the first is line 2" in message and "server's log" in message
    assert "\n" not in message and "s3cret" not in message and "root:" not in message
    assert "line 3" not in message  # one position, not a line-by-line account
    assert "s3cret-split" in caplog.text  # the operator's log keeps every bad line


def test_openapi_declares_the_403():
    schema = create_app(ServeConfig(policy="scripted:oracle")).openapi()
    responses = schema["paths"]["/v1/runs"]["post"]["responses"]
    assert "403" in responses and "--allow-task-files" in responses["403"]["description"]
    detail = schema["components"]["schemas"]["ErrorDetail"]["properties"]["type"]
    assert "forbidden_option" in detail["description"]


@pytest.mark.parametrize(("flags", "allowed"), [([], False), (["--allow-task-files"], True)])
def test_timely_serve_flag_sets_the_config(monkeypatch, flags, allowed):
    from timely import cli
    from timely.serve import app as serve_app

    started: list[ServeConfig] = []
    monkeypatch.setattr(serve_app, "serve", lambda config, **_: started.append(config))
    result = CliRunner().invoke(cli.app, ["serve", "--policy", "scripted:oracle", *flags])
    assert result.exit_code == 0, result.output
    assert started[0].allow_task_files is allowed
