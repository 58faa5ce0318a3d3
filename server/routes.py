"""The plain-HTTP façade: ``/tools``, ``/sessions``, ``/health`` and ``/metrics``.

Bodies are read by hand rather than by FastAPI so that size, JSON and shape errors keep the
server's error format (413 / 400 / 422 with ``{"error": ...}``) instead of framework defaults;
the OpenAPI schema still documents every body, header and error, so tools like schemathesis
and client generators see the real contract.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp

from timely import asgi
from timely.clock import wall_seconds
from timely_server.core import ToolServer
from timely_server.errors import ApiError, ErrorDetail, error_responses, pydantic_message
from timely_server.metrics import CONTENT_TYPE_LATEST

CLOCK_HEADER = "X-Timely-Clock"
DEADLINE_HEADER = "X-Timely-Deadline-S"
LOG_SCOPE_KEY = "timely.log"  # the access log reads what a route learned about the call here
CALL_SHAPE = '{"arguments": {...}, "session_id": "..." or null}'

M = TypeVar("M", bound=BaseModel)


class CallRequest(BaseModel):
    """Body of ``POST /tools/{name}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    arguments: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments.")
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Episode id: selects the session (state, latency and fault streams); "
        "created on first use.",
    )


class CallResponse(BaseModel):
    """Answer of a call that ran (HTTP 200), even when the tool reports an error."""

    result: Any = Field(None, description="The tool's result (null when error is set).")
    latency_s: float = Field(description="Injected latency: waited (wall) or to charge (virtual).")
    service_s: float = Field(description="Measured seconds of the tool's own work.")
    work_s: float = Field(
        0.0,
        description="Virtual clock: the tool's work in seconds of its deterministic work model, "
        "to charge with the latency (0 on a wall clock, where the real time is measured).",
    )
    error: ErrorDetail | None = Field(None, description="Tool-level error (an observation).")
    fault: str | None = Field(None, description="Injected fault: error, slow_first_byte or null.")


class SessionCreate(BaseModel):
    """Body of ``POST /sessions`` (optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: str | None = Field(
        None, min_length=1, max_length=256, description="Id to use (generated when omitted)."
    )
    ttl_s: float | None = Field(
        None, gt=0, le=7 * 86400, description="Idle lifetime in seconds (server default if null)."
    )


class SessionInfo(BaseModel):
    """A live session."""

    session_id: str
    expires_in_s: float = Field(description="Seconds until it expires if left idle.")


class SessionEnded(BaseModel):
    """Answer of ``DELETE /sessions/{id}``."""

    session_id: str
    ended: bool = True


class Health(BaseModel):
    status: str = "ok"


class ToolsList(BaseModel):
    tools: list[dict[str, Any]] = Field(description="OpenAI `tools` array.")


def _header_params() -> list[dict[str, Any]]:
    return [
        {
            "name": CLOCK_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": ["wall", "virtual"], "default": "wall"},
            "description": "virtual: report the latency instead of waiting it.",
        },
        {
            "name": DEADLINE_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "number"},
            "description": "Seconds the caller has left; a call that cannot finish answers 504.",
        },
    ]


def body_schema(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that a route reads by hand."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def body_too_large(limit: int) -> ApiError:
    """The 413 every route (and ``/mcp``, for a declared size) answers past ``limit``."""
    return ApiError(
        413, "body_too_large", f"request body exceeds {limit} bytes; send smaller arguments"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 otherwise, whether or not it is chunked)."""
    try:
        return await asgi.read_body(request, limit)
    except asgi.BodyTooLarge:
        raise body_too_large(limit) from None
    except asgi.BadContentLength as exc:
        raise ApiError(400, "invalid_header", str(exc)) from None


def parse_json(raw: bytes, model: type[M], expected: str, *, empty_ok: bool = False) -> M:
    """Decode a body into ``model`` (400 for bad JSON, 422 naming the failing fields)."""
    if empty_ok and not raw:  # no body at all; whitespace alone is not JSON (400 below)
        return model()
    try:
        data = asgi.decode_json(raw)
    except asgi.InvalidJSON as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    return validate(data, model, expected)


def validate(data: Any, model: type[M], expected: str) -> M:
    """Decoded JSON as ``model`` (422 naming the failing fields and the ``expected`` shape)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", pydantic_message(exc.errors(), expected)) from None


def parse_clock_headers(get: Any) -> tuple[bool, float | None]:
    """(virtual, deadline seconds or None) from the Timely headers; 400 when malformed."""
    clock = (get(CLOCK_HEADER) or "wall").strip().lower()
    if clock not in ("wall", "virtual"):
        raise ApiError(400, "invalid_header", f"{CLOCK_HEADER} must be 'wall' or 'virtual'")
    raw = get(DEADLINE_HEADER)
    if raw is None:
        return clock == "virtual", None
    try:
        deadline = float(raw)
    except (TypeError, ValueError):
        deadline = math.nan
    if not math.isfinite(deadline):
        raise ApiError(
            400,
            "invalid_header",
            f"{DEADLINE_HEADER} must be a finite number of seconds remaining, got {raw!r}",
        )
    return clock == "virtual", deadline


def log_fields(request: Request) -> dict[str, Any]:
    """The dict the access log reads for this request (a throwaway when logging is off)."""
    fields = request.scope.get(LOG_SCOPE_KEY)
    return fields if isinstance(fields, dict) else {}


def install_routes(app: FastAPI, server: ToolServer, call_endpoint: ASGIApp) -> None:
    """Add the plain-HTTP routes of ``server`` to ``app``.

    Args:
        app: the app.
        server: the server state.
        call_endpoint: the ASGI app that serves ``POST /tools/{name}``
            (:class:`timely_server.calls.ToolCallEndpoint`); the FastAPI route documents it.
    """
    config = server.config
    limit = config.max_body_bytes

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness probe (never needs a token)."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["ops"],
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            },
            **error_responses(401),
        },
    )
    async def metrics() -> Response:
        """Prometheus metrics (``timely_*``)."""
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tools", response_model=ToolsList, responses=error_responses(401), tags=["tools"])
    async def list_tools() -> dict[str, list[dict[str, Any]]]:
        """The OpenAI ``tools`` array of every tool served."""
        return {"tools": server.registry.openai_tools()}

    @app.post(
        "/tools/{name}",
        response_model=CallResponse,
        responses=error_responses(400, 401, 404, 410, 413, 422, 429, 503, 504),
        openapi_extra={**body_schema(CallRequest), "parameters": _header_params()},
        tags=["tools"],
    )
    async def call_tool(name: str, request: Request) -> Response:
        """Call tool ``name``: ``{"arguments": {...}, "session_id": ...}``.

        Headers: ``X-Timely-Clock: virtual`` reports the latency instead of waiting it;
        ``X-Timely-Deadline-S`` is the time the caller has left (504 at the deadline).
        """
        # Documentation only: the route's ASGI app is ``call_endpoint`` (set below), which
        # serves the calls without FastAPI's per-request machinery.
        raise AssertionError("POST /tools/{name} is served by timely_server.calls.ToolCallEndpoint")

    for route in app.router.routes:
        if getattr(route, "endpoint", None) is call_tool:
            route.app = call_endpoint  # type: ignore[attr-defined]

    @app.post(
        "/sessions",
        status_code=201,
        response_model=SessionInfo,
        responses=error_responses(400, 401, 409, 413, 422, 429),
        openapi_extra=body_schema(SessionCreate, required=False),
        tags=["sessions"],
    )
    async def create_session(request: Request) -> JSONResponse:
        """Create a session (optional body ``{"session_id", "ttl_s"}``)."""
        raw = await read_body(request, limit)
        req = parse_json(raw, SessionCreate, '{"session_id"?: str, "ttl_s"?: float}', empty_ok=True)
        session = server.sessions.create(req.session_id, req.ttl_s)
        log_fields(request)["session"] = session.id
        info = {"session_id": session.id, "expires_in_s": session.ttl_s}
        return JSONResponse(info, status_code=201)

    @app.get(
        "/sessions/{session_id}",
        response_model=SessionInfo,
        responses=error_responses(401, 404, 410, 422),
        tags=["sessions"],
    )
    async def get_session(session_id: str) -> dict[str, Any]:
        """A live session and when it expires."""
        session = server.sessions.lookup(session_id)
        return {"session_id": session.id, "expires_in_s": session.expires_in(wall_seconds())}

    @app.delete(
        "/sessions/{session_id}",
        response_model=SessionEnded,
        responses=error_responses(401, 404, 410, 422),
        tags=["sessions"],
    )
    async def end_session(session_id: str, request: Request) -> dict[str, Any]:
        """End a session now; its state is closed."""
        log_fields(request)["session"] = session_id
        server.sessions.end(session_id)
        return {"session_id": session_id, "ended": True}
