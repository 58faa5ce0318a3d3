"""What the agent endpoint documents in its OpenAPI schema beyond what FastAPI infers.

The POST routes read their bodies by hand (a size limit and strict JSON before pydantic), so
FastAPI does not see them: :func:`body_schema` documents each body with this server's own limits
(a budget above ``max_budget_s`` is refused, so the schema says so), and :func:`document_auth`
adds the 401 of the API-key middleware to every guarded operation. Clients generated from the
schema and schemathesis (tests/integration/test_schemathesis_agent.py) then see every status the
server answers: a 5xx that is not documented here is a bug.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from timely.serve.config import ServeConfig
from timely.serve.errors import error_responses
from timely.serve.schemas import ChatCompletion, ChatRequest, RunRequest, RunSummary

BUDGET_HEADER = "X-Timely-Budget-S"


def body_schema(
    model: type[BaseModel], config: ServeConfig, examples: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as a route's required JSON body.

    Args:
        model: the request model (its nested models are inlined: the schema has no ``$defs``).
        config: the server settings: ``time_budget_s`` gets ``max_budget_s`` as its maximum,
            ``model`` the names of the served policy as its values.
        examples: name -> an example request body.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    schema = _inline(schema, defs)
    budget = schema["properties"].get("time_budget_s")
    if budget is not None:
        for option in budget.get("anyOf", [budget]):
            if option.get("type") == "number":
                option["maximum"] = config.max_budget_s
    if "model" in schema["properties"]:
        schema["properties"]["model"]["enum"] = list(config.model_ids)
    media = {"schema": schema, "examples": {k: {"value": v} for k, v in examples.items()}}
    return {
        "requestBody": {"required": True, "content": {"application/json": media}},
        "parameters": [budget_header(config)],
    }


_QUESTION = [{"role": "user", "content": "What is 17*23+5?"}]
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}
}


def run_docs(config: ServeConfig) -> dict[str, Any]:
    """Route-decorator arguments documenting ``POST /v1/runs``."""
    examples = {
        "task": {"task": "math/arithmetic", "seed": 4, "time_budget_s": 20},
        "conversation": {"messages": _QUESTION, "time_budget_s": 10},
    }
    stream = "JSON: the run (event: run), a step event (named by its type) or the summary"
    return {
        "responses": {
            200: {
                "model": RunSummary,
                "description": "The run's summary, or (stream: true) Server-Sent Events",
                "content": event_stream(stream),
            },
            202: {"model": RunSummary, "description": "wait: false: the run, started"},
            **error_responses(400, 403, 404, 413, 422, 429, 503),
        },
        "openapi_extra": body_schema(RunRequest, config, examples),
    }


def chat_docs(config: ServeConfig) -> dict[str, Any]:
    """Route-decorator arguments documenting ``POST /v1/chat/completions``."""
    example = {"model": config.policy, "messages": _QUESTION, "time_budget_s": 10}
    stream = "JSON chat.completion.chunk (step events in timely_event), an error, or [DONE]"
    return {
        "responses": {
            200: {
                "model": ChatCompletion,
                "description": "The final message and the run's timing, or (stream: true) "
                "Server-Sent Events",
                "content": event_stream(stream),
            },
            **error_responses(400, 404, 413, 422, 429, 502, 503),
        },
        "openapi_extra": body_schema(ChatRequest, config, {"chat": example}),
    }


def event_stream(data: str) -> dict[str, Any]:
    """The ``text/event-stream`` content of a streamed answer: each event, as SSE parses it.

    Args:
        data: what each event's ``data`` (JSON text) holds.
    """
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "description": "The event's name, where it has one."},
            "data": {"type": "string", "description": data},
        },
    }
    return {"text/event-stream": {"schema": event}}


def budget_header(config: ServeConfig) -> dict[str, Any]:
    """The ``X-Timely-Budget-S`` header: the budget when the body names none."""
    return {
        "name": BUDGET_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": config.max_budget_s},
        "description": "Seconds the run may take when the body has no time_budget_s (checked "
        "whenever it is sent: a malformed value is a 400 even if the body names a budget).",
    }


def document_auth(app: FastAPI, open_paths: frozenset[str]) -> None:
    """Add the bearer-token 401 to every operation but those on ``open_paths``."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        unauthorized = error_responses(401)[401]
        for path, operations in schema["paths"].items():
            if path in open_paths:
                continue
            for operation in operations.values():
                operation.setdefault("responses", {})["401"] = {
                    "description": unauthorized["description"],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    },
                }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by (a copy of) ``defs[X]``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **rest}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node
