"""Client mistakes get a documented 4xx that says what to send instead, never a 500.

Each case here was a 500 (or a silent coercion) once: a chat with ``timely serve --policy
scripted:oracle`` (the policy cannot play a conversation: TaskError inside the run), a tool call
or tool whose ``function`` is not an object, a restarted lifespan that kept a closed tool client.
tests/integration/test_schemathesis_agent.py fuzzes the same endpoint against its schema.
"""

from __future__ import annotations

import contextlib
import logging

import httpx2
import pytest

from tests.helpers.policies import CalculatorAgent
from timely.serve.app import create_app
from timely.serve.config import ServeConfig

USER = [{"role": "user", "content": "compute 6*7"}]


@contextlib.asynccontextmanager
async def served(config: ServeConfig, policy=None):
    """An ASGI client of an endpoint that builds what it is not given (policy, tools)."""
    app = create_app(config, policy=policy)
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://agent") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        await app.state.services.close()


def scripted() -> contextlib.AbstractAsyncContextManager[httpx2.AsyncClient]:
    return served(ServeConfig(policy="scripted:oracle"))


def chatting(**settings) -> contextlib.AbstractAsyncContextManager[httpx2.AsyncClient]:
    agent = CalculatorAgent()
    return served(ServeConfig(policy=agent.name, **settings), agent)


def error_of(response: httpx2.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["code"] == kind
    return error


@pytest.mark.parametrize(
    "content", ["compute 6*7", [{"type": "text", "text": "compute 6*7"}]], ids=["str", "parts"]
)
async def test_a_scripted_policy_refuses_a_chat_with_400_naming_what_to_send(content):
    async with scripted() as client:
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "scripted:oracle", "messages": [{"role": "user", "content": content}]},
        )
        run = await client.post("/v1/runs", json={"messages": [{"role": "user", "content": "x"}]})
        task = await client.post(
            "/v1/runs", json={"task": "math/arithmetic", "seed": 3, "time_budget_s": 20}
        )
        health = (await client.get("/health")).json()
    for response, param in ((chat, "messages"), (run, "task")):
        error = error_of(response, 400, "unsupported_by_policy")
        assert error["param"] == param
        assert "'scripted:oracle' cannot play this request" in error["message"]
        assert "POST /v1/runs with {'task': 'math/arithmetic'" in error["message"]
    assert health["in_flight"] == 0  # refused before a run started
    assert task.status_code == 200 and task.json()["score"] == 1.0  # what it can serve


async def test_startup_says_when_the_policy_cannot_chat(caplog):
    with caplog.at_level(logging.WARNING, logger="timely.serve"):
        async with scripted() as client:
            await client.app.state.services.ready()
    assert "policy scripted:oracle cannot answer conversations" in caplog.text
    assert "400 unsupported_by_policy" in caplog.text


async def test_text_parts_are_joined_and_other_parts_are_refused_by_name():
    parts = [{"type": "text", "text": "compute "}, {"type": "text", "text": "6*7"}]
    image = {"type": "image_url", "image_url": {"url": "http://127.0.0.1/cat.png"}}
    async with chatting() as client:
        ok = await client.post("/v1/runs", json={"messages": [{"role": "user", "content": parts}]})
        bad = [
            await client.post("/v1/runs", json={"messages": [{"role": "user", "content": content}]})
            for content in ([parts[0], image], ["hi"], {"text": "hi"}, [{"type": "text"}])
        ]
    assert ok.status_code == 200 and ok.json()["answer"] == "The answer is 42"
    messages = [error_of(r, 422, "invalid_request")["message"] for r in bad]
    assert "content[1] is a part of type 'image_url': this agent reads text only" in messages[0]
    assert "content[0] is a string, not a content part" in messages[1]
    assert "content must be a string or a list of parts, got an object" in messages[2]
    assert "a text part without a string 'text'" in messages[3]
    assert all("[{'type': 'text', 'text': '...'}]" in m for m in messages[:2])


@pytest.mark.parametrize(
    ("field", "value", "got"),
    [
        ("time_budget_s", "30", 'got a string "30"'),
        ("time_budget_s", True, "got a boolean"),
        ("max_turns", 2.5, "got a number 2.5"),
    ],
)
async def test_wrong_json_types_are_422_naming_what_was_sent(field, value, got):
    """Strict like the tool server and OpenAI: "30" for a number is a client bug, not a guess."""
    async with chatting() as client:
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "test:calculator-agent", "messages": USER, field: value},
        )
        run = await client.post("/v1/runs", json={"messages": USER, field: value})
    for response in (chat, run):
        error = error_of(response, 422, "invalid_request")
        assert error["param"] == field and got in error["message"]


async def test_a_budget_header_is_checked_whenever_it_is_sent():
    body = {"model": "test:calculator-agent", "messages": USER, "time_budget_s": 5}
    async with chatting() as client:
        answers = {
            raw: await client.post(
                "/v1/chat/completions", json=body, headers={"X-Timely-Budget-S": raw}
            )
            for raw in ("soon", "1_0", "nan", "0", "1e9", "7.5")
        }
    for raw in ("soon", "1_0", "nan"):
        error = error_of(answers[raw], 400, "invalid_request")
        assert "must be a number of seconds" in error["message"]
    for raw in ("0", "1e9"):
        assert error_of(answers[raw], 422, "invalid_request")["param"] == "X-Timely-Budget-S"
    assert answers["7.5"].json()["timely"]["budget_s"] == 5  # the body's budget wins


async def test_tool_calls_and_tools_that_are_not_objects_are_422_not_500():
    async with chatting() as client:
        call = await client.post(
            "/v1/runs",
            json={
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": "calculator"}]},
                    *USER,
                ]
            },
        )
        tool = await client.post(
            "/v1/chat/completions",
            json={"model": "test:calculator-agent", "messages": USER, "tools": [{"function": "x"}]},
        )
    assert (
        "tool_calls[0] needs a function object" in error_of(call, 422, "invalid_request")["message"]
    )
    assert error_of(tool, 422, "invalid_request")["param"] == "tools"


@pytest.mark.parametrize(
    "body",
    [
        {"task": "math/arithmetic", "difficulty": 10**9},
        {"task": "math/arithmetic", "task_options": {"difficulty": 10**9}},
        {"task": "math/arithmetic", "task_options": {"seed": 1}},
    ],
)
async def test_difficulty_is_bounded_and_not_smuggled_through_task_options(body):
    """math/arithmetic builds difficulty + 1 operations: 10**9 ate the server's memory."""
    async with chatting() as client:
        r = await client.post("/v1/runs", json=body)
    error_of(r, 422, "invalid_request")


async def test_the_app_serves_again_after_its_lifespan_restarts():
    """An app whose lifespan ends and starts again (embedding, test clients) builds its tool
    client anew: it used to answer 500 'the client has been closed'."""
    async with chatting() as client:
        services = client.app.state.services
        for _ in range(2):
            await services.ready()
            r = await client.post("/v1/runs", json={"messages": USER, "time_budget_s": 5})
            assert r.status_code == 200 and r.json()["answer"] == "The answer is 42"
            await services.close()


async def test_405_names_every_method_of_the_path():
    async with chatting() as client:
        r = await client.put("/v1/runs")
    assert error_of(r, 405, "method_not_allowed") and r.headers["allow"] == "GET, POST"


async def test_the_schema_documents_bodies_limits_and_every_error_status():
    async with chatting(api_key="k", max_budget_s=30) as client:
        schema = (await client.get("/openapi.json", headers={"Authorization": "Bearer k"})).json()
    paths = schema["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["model"]["enum"] == [
        "test:calculator-agent",
        "calculator-agent",
    ]
    budget = body["schema"]["properties"]["time_budget_s"]["anyOf"][0]
    assert budget["maximum"] == 30 and budget["exclusiveMinimum"] == 0
    assert "$ref" not in str(body["schema"])  # nested models inlined: the schema resolves
    assert {"400", "401", "404", "413", "422", "429", "502", "503"} <= set(chat["responses"])
    assert {"400", "401", "404", "413", "422", "429", "503"} <= set(
        paths["/v1/runs"]["post"]["responses"]
    )
    assert [p["name"] for p in chat["parameters"]] == ["X-Timely-Budget-S"]
    for path, operations in paths.items():
        for operation in operations.values():
            statuses = set(operation["responses"])
            assert ("401" in statuses) == (path != "/health"), path
            assert {s for s in statuses if s.startswith("5")} <= {"502", "503"}, path
