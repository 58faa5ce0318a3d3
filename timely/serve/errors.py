"""The agent endpoint's errors: every failure is JSON in the OpenAI shape, never a bare 500.

``{"error": {"message", "type", "code", "param"}}`` is what the official ``openai`` client reads
(it raises ``BadRequestError``, ``AuthenticationError``, ``RateLimitError``... with the message),
and the native ``/v1/runs`` API answers the same shape, so one client-side branch serves both.
``type`` and ``code`` are the same machine-readable kind, from a closed list.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from timely.asgi import allowed_methods

log = logging.getLogger("timely.serve")

# kind -> when it is answered (docs/serving.md lists the same).
ERROR_KINDS: dict[str, str] = {
    "invalid_json": "400: the body is not JSON",
    "invalid_request": "422: the body has the wrong shape or values",
    "unknown_tool": "400: a requested tool is not served by the tool server",
    "unsupported_by_policy": "400: the served policy cannot play this request (a scripted "
    "policy needs a registered task)",
    "unauthorized": "401: missing or wrong bearer token",
    "forbidden_option": "403: a task option names a file or directory on the server, which "
    "this server does not let clients choose (timely serve --allow-task-files)",
    "not_found": "404: no such route or run",
    "model_not_found": "404: the model is not the one this server serves",
    "unknown_task": "404: no registered task of that id",
    "method_not_allowed": "405",
    "body_too_large": "413: the body exceeds max_body_bytes",
    "too_many_runs": "429: max_concurrent_runs runs are in flight (Retry-After)",
    "upstream_error": "502: the model or the tool server failed during the run",
    "tools_unavailable": "503: the tool server cannot be reached",
    "internal_error": "500: a bug in the server",
}


class ServeError(Exception):
    """An error answered as OpenAI-shaped JSON with an HTTP status.

    Args:
        status: the HTTP status.
        kind: one of :data:`ERROR_KINDS`.
        message: what went wrong and what to do next.
        param: the request field at fault, if one is.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        assert kind in ERROR_KINDS, kind
        self.status, self.kind, self.message = status, kind, message
        self.param, self.headers = param, headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.kind, self.message, self.param, self.headers)


def error_response(
    status: int,
    kind: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": kind, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


class ErrorDetail(BaseModel):
    """The ``error`` object of every error response."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="What went wrong and what to send instead.")
    type: str = Field(description="Machine-readable kind: " + ", ".join(ERROR_KINDS) + ".")
    code: str = Field(description="The same as type (the openai client reads code).")
    param: str | None = Field(None, description="The request field at fault, if one is.")


class ErrorBody(BaseModel):
    """Every error response."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


_DESCRIBED = {
    400: "Not JSON, a bad header, a tool the tool server lacks, or a request the served policy "
    "cannot play (unsupported_by_policy)",
    401: "Missing or wrong bearer token (only when the server has an API key)",
    403: "A task option names a file or directory on the server (forbidden_option): allowed "
    "only when the server runs with --allow-task-files",
    404: "No such run, task or model",
    405: "Method not allowed",
    413: "Body larger than max_body_bytes",
    422: "Body, query or header values fail validation",
    429: "max_concurrent_runs runs in flight; see Retry-After",
    502: "The model or the tool server failed during the run",
    503: "The tool server cannot be reached",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses (for route decorators)."""
    return {s: {"model": ErrorBody, "description": _DESCRIBED[s]} for s in statuses}


# JSON type names for messages: what a client sent, in the words of its own language's JSON.
_JSON_TYPES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """``value``'s JSON type, as a message says it ("a string", "an array", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def validation_message(errors: Any) -> tuple[str, str | None]:
    """One line naming every failing field of a pydantic error, and the first field's path.

    A wrong JSON type also names what was sent (``"30"`` for a number is "got a string"), since
    the fix is then to send the right type, not a different value.
    """
    parts, first = [], None
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        first = first or loc or None
        got = ""
        if e.get("type", "").endswith("_type") and "input" in e:
            value = e["input"]
            shown = f" {json.dumps(value)[:40]}" if isinstance(value, str | int | float) else ""
            got = f" (got {json_type(value)}{shown})"
        msg = str(e["msg"]).removeprefix("Value error, ")  # our validators' own words
        parts.append(f"{loc or 'body'}: {msg}{got}")
    return "invalid request: " + "; ".join(parts), first


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app answers (ours, FastAPI's, Starlette's, crashes) JSON."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return error_response(422, "invalid_request", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if kind is None:
            kind = "invalid_request" if exc.status_code < 500 else "internal_error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, kind, str(exc.detail), None, headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", f"the agent server failed: {type(exc).__name__}: {exc}"
        )
