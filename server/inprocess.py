"""The tool server as the core runs it in-process: the ``timely.tool_servers`` entry point.

The core sits below the server and cannot import it, so ``pyproject.toml`` registers this factory
as ``default`` in the ``timely.tool_servers`` group, and
:func:`timely.tool_servers.in_process_app` calls it with the few settings a run has.
"""

from __future__ import annotations

from fastapi import FastAPI

from timely_server.app import create_app
from timely_server.config import ServerConfig


def create_in_process_app(
    *, latency: str = "constant:0", per_tool_latency: dict[str, str] | None = None, seed: int = 0
) -> FastAPI:
    """The built-in tools with ``latency`` (and per-tool overrides), seeded by ``seed``."""
    return create_app(
        ServerConfig(latency=latency, per_tool_latency=dict(per_tool_latency or {}), seed=seed)
    )
