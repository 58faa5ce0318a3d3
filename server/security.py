"""Who may talk to the server, and a record of who did: bearer auth and the access log.

Both are plain ASGI middleware so they cover every route alike, the MCP endpoint included,
and cost nothing when switched off (they are only installed when configured). The server binds
loopback by default; with ``api_key`` set, every route but ``/health`` needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timely.asgi import bearer_ok
from timely.clock import wall_seconds
from timely_server.errors import error_response
from timely_server.routes import LOG_SCOPE_KEY

ACCESS_LOGGER = "timely.server.access"
OPEN_PATHS = frozenset({"/health"})


class BearerAuthMiddleware:
    """Answer 401 ``unauthorized`` unless the request carries one of ``tokens``.

    Args:
        app: the wrapped app.
        tokens: accepted bearer tokens (the api key, and the admin token, which may do
            everything the api key may).
        open_paths: paths served without a token.
    """

    def __init__(
        self, app: ASGIApp, tokens: list[str], open_paths: frozenset[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.open_paths = open_paths

    def _authorized(self, scope: Scope) -> bool:
        return bearer_ok(scope, self.tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "this server needs 'Authorization: Bearer <api key>' (the key it was started with: "
            "--api-key or TIMELY_TOOL_SERVER_API_KEY)",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class AccessLogMiddleware:
    """Log one JSON line per HTTP request to the ``timely.server.access`` logger.

    Fields: method, path, status, duration_s, and, when a tool call was served, tool, session,
    latency_s, service_s, work_s, fault (routes put them in ``scope["timely.log"]``).
    """

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = wall_seconds()
        fields: dict[str, Any] = {}
        scope[LOG_SCOPE_KEY] = fields
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            record = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status or 500,
                "duration_s": round(wall_seconds() - t0, 6),
                **fields,
            }
            client = scope.get("client")
            if client:
                record["client"] = client[0]
            self.log.info(json.dumps(record, default=str))
