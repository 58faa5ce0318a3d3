"""The simulated tool server: tools over HTTP and MCP, with latency injected from a latency model.

Tool speed is the paper's independent variable, so the server makes it a setting: every call
takes ``service`` (the tool's own work) plus a ``latency`` drawn from the configured model. In
wall mode the server really waits; when the caller sends ``X-Timely-Clock: virtual`` it only
reports the latency, which the client charges to its simulated clock, so an eval with 5-second
tools runs in milliseconds and stays reproducible. ``X-Timely-Deadline-S`` carries the caller's
remaining budget: a call that cannot finish in time is answered 504 at the deadline, never later.
Every error is JSON ``{"error": {"type", "message"}}`` with a message the caller can act on.

This module assembles the app from its parts: the execution layer (``timely_server.core``), the HTTP
routes (``timely_server.routes``, ``timely_server.admin``), the MCP façade (``timely_server.mcp``),
sessions, faults, metrics and security; and runs it (``serve``, ``running_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from timely.asgi import DrainUnreadBodyMiddleware
from timely.clock import WallClock
from timely_server.admin import install_admin_routes
from timely_server.calls import ToolCallEndpoint
from timely_server.config import ServerConfig
from timely_server.core import ToolServer
from timely_server.errors import install_error_handlers
from timely_server.mcp import McpFacade
from timely_server.registry import ToolRegistry
from timely_server.routes import install_routes
from timely_server.security import ACCESS_LOGGER, AccessLogMiddleware, BearerAuthMiddleware
from timely_server.sessions import close_state

__all__ = [
    "ServerConfig",
    "ToolServer",
    "ToolServerApp",
    "close_state",
    "create_app",
    "freeze_startup_objects",
    "running_server",
    "serve",
    "uvicorn_config",
]

log = logging.getLogger(__name__)
_WALL = WallClock()


def create_app(config: ServerConfig, registry: ToolRegistry | None = None) -> ToolServerApp:
    """Build the tool server's ASGI app.

    Args:
        config: the server settings.
        registry: the tools to serve (the built-ins when None).

    Returns:
        A FastAPI app with ``/health``, ``/tools``, ``/tools/{name}``, ``/sessions``,
        ``/admin/*``, ``/metrics`` and ``/mcp``. Everything but ``/mcp`` works without the
        lifespan running, so ``httpx2.ASGITransport`` can drive it directly; the lifespan
        starts the MCP session manager and the session sweeper.

    Raises:
        timely.errors.ConfigError: an explicit per-tool setting names an unknown tool.
    """
    state = ToolServer(config, registry)
    mcp = McpFacade(state) if config.mcp else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "tool server: %d tools, latency %s, faults %s, seed %d",
            len(state.registry),
            state.latency.describe(),
            state.faults.describe(),
            config.seed,
        )
        sweeper = asyncio.create_task(_sweep_forever(state), name="timely-session-sweeper")
        try:
            async with mcp.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            state.sessions.close_all()

    app = ToolServerApp(
        title="Timely Machine tool server",
        version="1",
        description="Simulated tools with controllable latency, faults and sessions. "
        "See docs/tool-server.md.",
        lifespan=lifespan,
    )
    app.state.tool_server = state
    install_error_handlers(app)
    calls: ASGIApp = ToolCallEndpoint(state)
    install_routes(app, state, calls)
    install_admin_routes(app, state)
    _route_first(app, "/tools/{name}")
    if mcp is not None:
        app.router.routes.append(Route("/mcp", endpoint=mcp))
    # Innermost first. Every request passes the same layers, the hot route included.
    layers: list[tuple[type[Any], dict[str, Any]]] = []
    if config.api_key is not None:
        tokens = [config.api_key.get_secret_value()]
        if config.admin_token is not None:
            tokens.append(config.admin_token.get_secret_value())
        layers.append((BearerAuthMiddleware, {"tokens": tokens}))
    # Outside auth, so a 401 to an unauthenticated upload is read by the client too.
    layers.append((DrainUnreadBodyMiddleware, {"max_bytes": config.drain_body_bytes}))
    if config.access_log:
        layers.append((AccessLogMiddleware, {}))  # outermost: it sees 401s too
    for layer, options in layers:
        app.add_middleware(layer, **options)
        calls = layer(calls, **options)
    app.tool_calls = calls
    return app


class ToolServerApp(FastAPI):
    """The tool server's FastAPI app, with ``POST /tools/{name}`` dispatched before FastAPI.

    Tool calls are the hot path: they go straight to :class:`timely_server.calls.ToolCallEndpoint`
    behind the server's own middleware (``tool_calls``), skipping the framework's stack around
    the router (error and exception middleware, native telemetry, route matching), which cost a
    zero-latency call more than the call itself. Every other request, and a tool call under a
    ``root_path``, takes the normal route, whose app is the same endpoint.
    """

    tool_calls: ASGIApp | None = None

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        """Add middleware; one added after :func:`create_app` also sees the tool calls.

        The direct dispatch only knows the server's own layers, so it stops, and tool calls take
        the route (through every middleware) again.
        """
        super().add_middleware(middleware_class, *args, **kwargs)
        self.tool_calls = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        calls = self.tool_calls
        if (
            calls is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            path: str = scope["path"]
            if path.startswith("/tools/"):
                name = path[7:]
                if name and "/" not in name:
                    scope["path_params"] = {"name": name}
                    await calls(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def _route_first(app: FastAPI, path: str) -> None:
    """Match ``path`` before every other route: tool calls are the hot path (a few µs each)."""
    routes = app.router.routes
    hot = [r for r in routes if getattr(r, "path", None) == path]
    routes[:] = hot + [r for r in routes if getattr(r, "path", None) != path]


async def _sweep_forever(state: ToolServer) -> None:
    """Expire idle sessions every ``session_sweep_s`` (calls also sweep lazily)."""
    while True:
        await _WALL.sleep(state.config.session_sweep_s)
        try:
            state.sessions.sweep()
        except Exception:  # noqa: BLE001 - one bad close() must not stop the sweeper
            log.exception("session sweep failed")


def uvicorn_config(app: Any, config: ServerConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings every launcher (CLI, tests, benchmarks) shares."""
    settings: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "timeout_keep_alive": config.keep_alive_s,
        "access_log": False,  # the server's own access log (config.access_log) replaces it
        "log_level": "info",
        "timeout_graceful_shutdown": 5,
        **overrides,
    }
    return uvicorn.Config(app, **settings)


def _enable_access_log() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def freeze_startup_objects() -> None:
    """Keep the garbage collector away from everything built so far (call before serving).

    A server process holds ~10^5 long-lived objects (FastAPI, pydantic, the registry); a full
    collection walks them all and stalls the event loop for tens of milliseconds, which would
    show up as injected-latency error. Frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


def serve(config: ServerConfig, registry: ToolRegistry | None = None) -> None:
    """Run the tool server in the foreground until interrupted (the ``tool-server`` command)."""
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("tool server binds %s: it is reachable from other machines", config.host)
        if config.api_key is None:
            log.warning("no api key: anyone who can reach %s may call the tools", config.host)
    if config.access_log:
        _enable_access_log()
    app = create_app(config, registry)
    freeze_startup_objects()
    uvicorn.Server(uvicorn_config(app, config)).run()


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that tells another thread when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    def run_quietly(self) -> None:
        """Run; a failed startup (uvicorn exits) is reported by ``running_server`` instead."""
        try:
            self.run()
        except SystemExit:
            self.ready.set()


@contextlib.contextmanager
def running_server(
    config: ServerConfig | None = None,
    registry: ToolRegistry | None = None,
    *,
    startup_timeout_s: float = 10.0,
) -> Iterator[str]:
    """Run a tool server on a background thread and yield its base URL.

    The server binds ``config.host`` (loopback by default) on ``config.port`` (pass ``port=0``,
    the default here, for any free port) and is shut down when the block exits.

    Args:
        config: the server settings; ``ServerConfig(port=0)`` when None.
        registry: the tools to serve (the built-ins when None).
        startup_timeout_s: how long to wait for the server to listen.

    Yields:
        The base URL, e.g. ``"http://127.0.0.1:54321"``.

    Raises:
        RuntimeError: the server did not start (port taken, bad host).
    """
    config = config if config is not None else ServerConfig(port=0)
    app = create_app(config, registry)
    server = _ThreadServer(
        uvicorn_config(app, config, log_level="warning", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run_quietly, name="timely-tool-server", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(startup_timeout_s) or not server.started:
            raise RuntimeError(
                f"tool server did not start on {config.host}:{config.port}; is the port taken?"
            )
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout_s)
