"""``POST /tools/{name}`` as a plain ASGI endpoint: the one route every episode step calls.

A wall-clock episode calls the tool server on every step, so the server's own cost per call is
added to every injected latency and bounds how many episodes one server can carry. Served as a
FastAPI route, a call spent most of its server time in the framework rather than in the call:
dependency solving for a ``Request`` parameter, two ``Response`` objects, the middleware stack
around the router. This endpoint does the same work on the raw ASGI messages: it reads the body
under the same limit, decodes it with the same strict rules, answers the same statuses, headers
and bytes, and runs the call through the same :meth:`ToolServer.execute` as the MCP façade.
The FastAPI route for the path stays registered, so the OpenAPI schema documents the operation
as before; :class:`timely_server.app.ToolServerApp` sends the requests here directly, behind the
server's own middleware (bearer auth, body drain, access log).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from timely import asgi
from timely.clock import WallClock, wall_seconds
from timely_server.core import CallOutcome, ClientGone, ToolServer
from timely_server.errors import ApiError, error_response
from timely_server.routes import (
    CALL_SHAPE,
    CLOCK_HEADER,
    DEADLINE_HEADER,
    LOG_SCOPE_KEY,
    CallRequest,
    body_too_large,
    parse_clock_headers,
    validate,
)
from timely_server.waits import Wait

log = logging.getLogger("timely.server")

_WALL = WallClock()
_CALL_KEYS = frozenset(CallRequest.model_fields)
_CLOCK = b"x-timely-clock"
_DEADLINE = b"x-timely-deadline-s"
_JSON = (b"content-type", b"application/json")


# Starlette's JSONResponse settings; one encoder, as json.dumps builds one per call with them.
JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    """``value`` encoded exactly as Starlette's ``JSONResponse`` encodes a body."""
    return JSON_ENCODER.encode(value).encode("utf-8")


class ToolCallEndpoint:
    """The ASGI app of ``POST /tools/{name}`` (``scope["path_params"]["name"]`` names the tool).

    Args:
        server: the server state the calls run against.
    """

    def __init__(self, server: ToolServer) -> None:
        self.server = server
        self.limit = server.config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._call(scope, receive)
        except ApiError as exc:
            await exc.response()(scope, receive, send)
            return
        except Exception as exc:  # the same answer as the app's error handler gives
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(
                500, "internal_error", f"the tool server failed: {type(exc).__name__}"
            )
            await response(scope, receive, send)
            return
        await _send(send, status, body, headers)

    async def _call(self, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        """Run the call: (status, body, headers) to answer; ApiError for an error answer."""
        started = wall_seconds()
        server = self.server
        name = scope["path_params"]["name"]
        fields = scope.get(LOG_SCOPE_KEY)
        if not isinstance(fields, dict):
            fields = {}  # the access log is off
        fields["tool"] = name
        transport = "http"
        try:
            try:
                raw = await asgi.receive_body(scope, receive, self.limit)
            except ClientDisconnect:
                raise ClientGone from None
            except asgi.BodyTooLarge:
                raise body_too_large(self.limit) from None
            except asgi.BadContentLength as exc:
                raise ApiError(400, "invalid_header", str(exc)) from None
            virtual, deadline_s = parse_clock_headers(_timely_headers(scope["headers"]))
            tooldef = server.tool(name)
            arguments, session_id = _parse_call(raw)
            fields["session"] = session_id
            server.check_arguments(tooldef, arguments)
            outcome = await server.execute(
                tooldef,
                arguments,
                session_id,
                virtual=virtual,
                deadline_s=deadline_s,
                transport=transport,
                wait=_wait_unless_gone(receive),
                started=started,
            )
        except ApiError as exc:
            server.metrics.child("requests", server.label(name), str(exc.status), transport).inc()
            raise
        except ClientGone:
            fields["cancelled"] = True
            return 499, b"", {}  # nobody reads it; uvicorn drops it
        fields.update(
            latency_s=outcome.latency_s,
            service_s=outcome.service_s,
            work_s=outcome.work_s,
            fault=outcome.fault,
        )
        headers = {**outcome.headers, "Server-Timing": _server_timing(outcome, started)}
        return outcome.status, _body(outcome), headers


def _timely_headers(raw: list[tuple[bytes, bytes]]) -> Any:
    """A ``get`` for :func:`parse_clock_headers` over raw ASGI headers (first value wins)."""
    clock = deadline = None
    for key, value in raw:
        if key == _CLOCK:
            if clock is None:
                clock = value.decode("latin-1")
        elif key == _DEADLINE and deadline is None:
            deadline = value.decode("latin-1")
    return {CLOCK_HEADER: clock, DEADLINE_HEADER: deadline}.get


def _parse_call(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """(arguments, session id) from a call's body: 400 for bad JSON, 422 for a wrong shape.

    The usual body (an ``arguments`` object, a short ``session_id`` string or none) is checked
    by hand; anything else goes through :class:`CallRequest`, which decides and words the 422,
    so the answer is the model's either way.
    """
    try:
        data = asgi.decode_json(raw)
    except asgi.InvalidJSON as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    if type(data) is dict and data.keys() <= _CALL_KEYS:
        arguments = data.get("arguments", {})
        session_id = data.get("session_id")
        if type(arguments) is dict and (
            session_id is None or (type(session_id) is str and 1 <= len(session_id) <= 256)
        ):
            return arguments, session_id
    request = validate(data, CallRequest, CALL_SHAPE)
    return request.arguments, request.session_id


def _body(outcome: CallOutcome) -> bytes:
    """The response body; a result already encoded by the server is not encoded again."""
    body = outcome.body
    if outcome.result_json is None or next(iter(body), None) != "result":
        return json_bytes(body)
    rest = json_bytes({k: v for k, v in body.items() if k != "result"})
    return b'{"result":' + outcome.result_json.encode("utf-8") + b"," + rest[1:]


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    """Send a JSON response with the headers (and their order) Starlette's would have."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append(_JSON)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _wait_unless_gone(receive: Receive) -> Wait:
    """A wall-clock wait that ends early (ClientGone) when the client disconnects."""

    async def wait(seconds: float) -> None:
        try:
            async with _WALL.cutoff(_WALL.now() + seconds):
                while True:
                    # The body is fully read, so the next message is the disconnect (or, with
                    # the ASGI test transport, the end of the response, which comes later).
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
        except TimeoutError:
            return

    return wait


def _server_timing(outcome: CallOutcome, started: float) -> str:
    """``Server-Timing`` (milliseconds): injected latency, tool work, time in the server."""
    total = (wall_seconds() - started) * 1000
    return (
        f"latency;dur={outcome.latency_s * 1000:.3f}, service;dur={outcome.service_s * 1000:.3f}, "
        f"total;dur={total:.3f}"
    )
