"""The MCP façade: the same tools, latency, faults and deadlines over MCP Streamable HTTP.

OpenAI Agents, LangGraph (langchain-mcp-adapters) and smolagents all consume MCP servers, so
``/mcp`` makes the simulator usable from those frameworks without an adapter. Tools are listed
straight from the registry (name, description, JSON Schema) through the SDK's low-level ``Server``,
whose handlers take raw schemas; ``MCPServer`` would derive schemas from Python signatures instead.
Every call goes through :meth:`timely_server.core.ToolServer.execute`, exactly as over plain HTTP.

Clock, deadline and session come from the ``tools/call`` request's ``_meta``
(``timely/clock``, ``timely/deadline_s``, ``timely/session_id``) or, for clients that can only
set HTTP headers, from ``X-Timely-Clock``, ``X-Timely-Deadline-S`` and ``X-Timely-Session-Id``;
without either, a legacy (2025) MCP session's ``Mcp-Session-Id`` keys the session. The result's
``_meta`` reports ``timely/latency_s``, ``timely/service_s``, ``timely/work_s``,
``timely/fault`` and ``timely/status``. Tools are listed with their titles, behaviour hints
(read-only, destructive, idempotent; never open-world) and, where they answer with a JSON
object, an ``outputSchema``; those results also carry the object as ``structuredContent``. A
client that cancels (2026 protocol: closes the response stream; 2025:
``notifications/cancelled``) cancels the injected wait.

The SDK's session manager runs a task group that must be entered from the host app's lifespan
(:meth:`McpFacade.run`); without it ``/mcp`` answers 503 ``mcp_not_started``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from timely_server.core import CallOutcome, ToolServer
from timely_server.errors import ApiError, error_response
from timely_server.routes import LOG_SCOPE_KEY, body_too_large, parse_clock_headers
from timely_tools.base import ToolDef

META_CLOCK = "timely/clock"
META_DEADLINE = "timely/deadline_s"
META_SESSION = "timely/session_id"
SESSION_HEADER = "X-Timely-Session-Id"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def transport_security(host: str, extra_hosts: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: accept loopback, the bind host and ``extra_hosts``."""
    if "*" in extra_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = list(_LOOPBACK)
    if host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(f"[{host}]" if ":" in host else host)
    hosts = [*names, *(f"{n}:*" for n in names), *extra_hosts]
    origins = [
        f"{scheme}://{n}{port}"
        for n in names
        for scheme in ("http", "https")
        for port in ("", ":*")
    ]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class McpFacade:
    """The MCP server of one :class:`ToolServer`, as an ASGI endpoint for ``/mcp``."""

    def __init__(self, tools: ToolServer) -> None:
        self.tools = tools
        self.server: Server[Any] = Server(
            "timely-tool-server",
            version="1",
            instructions="Simulated tools with controllable latency (Timely Machine).",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self.manager: StreamableHTTPSessionManager | None = None

    def _new_manager(self) -> StreamableHTTPSessionManager:
        config = self.tools.config
        return StreamableHTTPSessionManager(
            app=self.server,
            json_response=False,  # SSE: closing the stream cancels the call (2026 protocol)
            security_settings=transport_security(config.host, config.mcp_allowed_hosts),
            max_request_body_size=config.max_body_bytes,
            session_idle_timeout=config.session_ttl_s,
            max_sessions=config.max_live_sessions,
        )

    @property
    def running(self) -> bool:
        return self.manager is not None

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Run a session manager (enter from the app's lifespan).

        The SDK's manager runs once, so each lifespan gets a new one: an app whose lifespan is
        entered again (test harnesses do) keeps serving MCP.
        """
        manager = self._new_manager()
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.manager
        if manager is None:
            response = error_response(
                503,
                "mcp_not_started",
                "the MCP endpoint needs the app's lifespan: serve the app with uvicorn "
                "(`timely tool-server`), or enter its lifespan in tests",
            )
            await response(scope, receive, send)
            return
        # A declared size is refused in the server's own error format; the SDK answers chunked
        # bodies that outgrow max_request_body_size with its plain-text 413.
        limit = self.tools.config.max_body_bytes
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await body_too_large(limit).response()(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)

    # -- handlers ------------------------------------------------------------------------------
    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        registry = self.tools.registry
        return types.ListToolsResult(tools=[_tool(registry.get(n)) for n in registry.names()])

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        server = self.tools
        name = params.name
        meta: Mapping[str, Any] = ctx.meta or {}
        request = ctx.request
        headers: Mapping[str, str] = request.headers if request is not None else {}
        fields = request.scope.get(LOG_SCOPE_KEY, {}) if request is not None else {}
        fields["tool"] = name
        try:
            tooldef = server.tool(name)
        except ApiError as exc:
            server.metrics.requests.labels(server.label(name), "404", "mcp").inc()
            raise MCPError(code=types.INVALID_PARAMS, message=exc.message) from None
        session_id = (
            meta.get(META_SESSION) or headers.get(SESSION_HEADER) or headers.get("mcp-session-id")
        )
        fields["session"] = session_id
        try:
            virtual, deadline_s = _clock(meta, headers)
            arguments = dict(params.arguments or {})
            server.check_arguments(tooldef, arguments)
            outcome = await server.execute(
                tooldef,
                arguments,
                str(session_id) if session_id is not None else None,
                virtual=virtual,
                deadline_s=deadline_s,
                transport="mcp",
            )
        except ApiError as exc:
            server.metrics.requests.labels(name, str(exc.status), "mcp").inc()
            body = {"error": {"type": exc.type, "message": exc.message}, **exc.extra}
            outcome = CallOutcome(name, exc.status, body)
        fields.update(
            latency_s=outcome.latency_s,
            service_s=outcome.service_s,
            work_s=outcome.work_s,
            fault=outcome.fault,
        )
        return _result(outcome, tooldef)


def _tool(tooldef: ToolDef) -> types.Tool:
    """The MCP listing of one tool: schemas, title and behaviour hints from its ToolDef."""
    return types.Tool(
        name=tooldef.name,
        title=tooldef.title,
        description=tooldef.description,
        input_schema=tooldef.parameters,
        output_schema=tooldef.output_schema,
        annotations=types.ToolAnnotations(
            title=tooldef.title,
            read_only_hint=tooldef.read_only,
            destructive_hint=tooldef.destructive,
            idempotent_hint=tooldef.idempotent,
            open_world_hint=False,  # simulated tools: nothing outside the server is touched
        ),
    )


def _clock(meta: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[bool, float | None]:
    """Clock and deadline from ``_meta`` first, then the HTTP headers."""

    def get(header: str) -> Any:
        key = META_CLOCK if header.endswith("Clock") else META_DEADLINE
        value = meta.get(key)
        return str(value) if value is not None else headers.get(header)

    return parse_clock_headers(get)


def _result(outcome: CallOutcome, tooldef: ToolDef) -> types.CallToolResult:
    """A call's MCP result: text (JSON for objects), plus ``structuredContent`` for tools that
    declare an output schema; a tool-level failure is ``isError`` text."""
    body = outcome.body
    meta = {
        "timely/latency_s": outcome.latency_s,
        "timely/service_s": outcome.service_s,
        "timely/work_s": outcome.work_s,
        "timely/fault": outcome.fault,
        "timely/status": outcome.status,
    }
    error = body.get("error")
    if isinstance(error, dict):
        meta["timely/error"] = error.get("type")
        text = f"Error ({error.get('type')}): {error.get('message')}"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], is_error=True, meta=meta
        )
    result = body.get("result")
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    # The text block stays for clients that predate structured content (the spec asks for it).
    structured = result if tooldef.output_schema is not None and isinstance(result, dict) else None
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=structured,
        meta=meta,
    )
