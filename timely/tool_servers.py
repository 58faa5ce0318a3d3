"""The seam through which the core runs a tool server in-process, without importing one.

``timely run`` without ``--tool-server`` and :mod:`timely.testing` need a tool server to talk to,
but the server package sits above the core. It registers an app factory in the
``timely.tool_servers`` entry-point group (``default``, declared in ``pyproject.toml``); the core
looks the factory up by name when it first needs one, and
:meth:`timely.toolclient.ToolClient.in_process` drives the ASGI app it returns without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from timely.registry import Registry


class ToolServerFactory(Protocol):
    """Builds an ASGI app that serves the tools (what ``ToolClient.in_process`` takes)."""

    def __call__(self, *, latency: str, per_tool_latency: dict[str, str], seed: int) -> Any: ...


TOOL_SERVERS: Registry[ToolServerFactory] = Registry(
    "tool server", entry_point_group="timely.tool_servers"
)


def in_process_app(
    *,
    latency: str = "constant:0",
    per_tool_latency: Mapping[str, str] | None = None,
    seed: int = 0,
    server: str = "default",
) -> Any:
    """Build the ASGI app of a registered tool server.

    Args:
        latency: default latency spec of every tool, e.g. ``constant:1.0``.
        per_tool_latency: latency overrides by tool name.
        seed: seed of the server's latency and fault streams.
        server: name in the ``timely.tool_servers`` group (``default``: the built-in server).

    Raises:
        timely.errors.RegistryError: no tool server is registered under ``server``.
    """
    factory = TOOL_SERVERS.get(server)
    return factory(latency=latency, per_tool_latency=dict(per_tool_latency or {}), seed=seed)
