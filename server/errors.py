"""The tool server's error vocabulary: every failure is JSON ``{"error": {"type", "message"}}``.

Clients (the agent loop, schemathesis, someone's agent framework) branch on ``error.type``, so
the types are a closed list, documented in the OpenAPI schema, and a message always says what
to do next. Client mistakes are 4xx; a 500 means a bug in the server, never in the request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from timely.asgi import allowed_methods

log = logging.getLogger("timely.server")

# type -> when it is answered; the OpenAPI schema and docs/tool-server.md list the same.
ERROR_TYPES: dict[str, str] = {
    "invalid_json": "400: the body is not JSON",
    "invalid_header": "400: a Timely header or Content-Length is malformed",
    "unauthorized": "401: missing or wrong bearer token",
    "forbidden": "403: the admin endpoints need the admin token",
    "not_found": "404: no such route",
    "unknown_tool": "404: no tool of that name",
    "unknown_session": "404: no session of that id",
    "method_not_allowed": "405",
    "session_exists": "409: POST /sessions named a live session",
    "session_expired": "410: the session expired or was ended",
    "body_too_large": "413: the body exceeds max_body_bytes",
    "invalid_request": "422: the body has the wrong shape",
    "invalid_arguments": "422: the arguments fail the tool's JSON Schema",
    "overloaded": "429: max_concurrency calls are in flight (Retry-After)",
    "too_many_sessions": "429: max_live_sessions are live (Retry-After)",
    "internal_error": "500: a server bug",
    "injected_fault": "503: an injected HTTP 5xx fault (retry)",
    "mcp_not_started": "503: /mcp needs the app lifespan (run under uvicorn)",
    "deadline_exceeded": "504: the call could not finish before X-Timely-Deadline-S",
}


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message"}, **extra}`` with an HTTP status.

    Args:
        status: the HTTP status.
        type: one of :data:`ERROR_TYPES`.
        message: what went wrong and what to do next.
        headers: extra response headers (e.g. ``Retry-After``).
        extra: extra top-level body fields (e.g. ``fault``, ``latency_s``).
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type, message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        return error_response(self.status, self.type, self.message, self.headers, **self.extra)


def error_response(
    status: int, type: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON error response every route and middleware answers with."""
    body = {"error": {"type": type, "message": message}, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def pydantic_message(errors: Any, expected: str = "") -> str:
    """One line naming every failing field of a pydantic validation error."""
    parts = [f"{'.'.join(map(str, e.get('loc', ()))) or 'body'}: {e['msg']}" for e in errors]
    return "invalid request: " + "; ".join(parts) + (f" (expected {expected})" if expected else "")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error the app answers (ours, FastAPI's, Starlette's, crashes) JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", pydantic_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, kind, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", f"the tool server failed: {type(exc).__name__}"
        )


class ErrorDetail(BaseModel):
    """The ``error`` object of every error response."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Machine-readable kind: " + ", ".join(ERROR_TYPES) + ".")
    message: str = Field(description="What went wrong and what to do next.")


class ErrorBody(BaseModel):
    """Every error response. Tool-call errors also carry timing and the injected fault."""

    error: ErrorDetail
    fault: str | None = Field(None, description="Injected fault, when one caused the error.")
    latency_s: float | None = Field(None, description="Injected latency charged (504).")
    service_s: float | None = Field(None, description="Seconds of the tool's own work (504).")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses (for route decorators)."""
    described = {
        400: "Malformed JSON or header",
        401: "Missing or wrong bearer token",
        403: "Admin token required",
        404: "Unknown tool, session or route",
        409: "Session already live",
        410: "Session expired or ended",
        413: "Body too large",
        422: "Body or arguments fail validation",
        429: "Overloaded or too many sessions; see Retry-After",
        503: "Injected 5xx fault, or /mcp without a lifespan",
        504: "Deadline exceeded (or an injected hang)",
    }
    return {s: {"model": ErrorBody, "description": described[s]} for s in statuses}
