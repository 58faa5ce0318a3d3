"""Shared builders: an in-process tool server and client, tasks, policies."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app


@contextlib.asynccontextmanager
async def in_process_tools(
    latency: str = "constant:1.0", seed: int = 0, **kw
) -> AsyncIterator[ToolClient]:
    """A tool client talking to a fresh in-process (ASGI) tool server."""
    app = create_app(ServerConfig(latency=latency, seed=seed, **kw))
    async with ToolClient.in_process(app) as client:
        yield client
