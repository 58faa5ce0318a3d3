"""The pooled HTTP connections of a tool client: httpx2 clients in shards of 32 connections.

httpcore scans its whole pool on every request, which costs O(connections) per call; with
hundreds of concurrent episodes sharing one client that dominates (one 1,000-connection pool
reached 491 calls/s where shards reach 984), so the pool is split into small shards and each
request goes to the least busy one.
"""

from __future__ import annotations

import math
import ssl
from typing import Any

import httpx2

SHARD_SIZE = 32  # connections per pooled client


class ShardedPool:
    """httpx2 clients for one server, each request sent on the least busy one.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8700"``.
        headers: sent with every request (the bearer token).
        transport: an httpx2 transport to use instead of TCP; it is not cloned (one shard).
        max_connections: connections at most, over all shards.
        default_timeout_s: the timeout of a request that passes none (every caller passes one).
        connect_timeout_s: the most one connection attempt may take by default.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        transport: httpx2.AsyncBaseTransport | None,
        max_connections: int,
        default_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        shards = 1 if transport is not None else max(1, math.ceil(max_connections / SHARD_SIZE))
        per_shard = math.ceil(max_connections / shards)
        # One TLS context for all shards (building one costs ~20 ms); none for plain HTTP.
        tls = ssl.create_default_context() if base_url.startswith("https:") else False
        self._shards = [
            httpx2.AsyncClient(
                base_url=base_url,
                headers=headers,
                transport=transport,
                timeout=httpx2.Timeout(default_timeout_s, connect=connect_timeout_s),
                limits=httpx2.Limits(
                    max_connections=per_shard,
                    max_keepalive_connections=per_shard,
                    keepalive_expiry=30.0,
                ),
                trust_env=False,  # no proxies or netrc picked up behind the caller's back
                follow_redirects=False,
                verify=tls,
            )
            for _ in range(shards)
        ]
        self._busy = [0] * shards

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        timeout: httpx2.Timeout,
    ) -> httpx2.Response:
        """Send one request (JSON ``body`` when not None) on the least busy shard.

        Raises:
            httpx2.TransportError: as httpx2 does (timeouts included).
        """
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._shards[i].request(
                method, path, json=body, headers=headers, timeout=timeout
            )
        finally:
            self._busy[i] -= 1

    async def aclose(self) -> None:
        """Close every shard's connections."""
        for shard in self._shards:
            await shard.aclose()


def asgi_transport(app: Any) -> httpx2.ASGITransport:
    """A transport that calls the ASGI ``app`` in process (no sockets).

    ``raise_app_exceptions=False``: a server bug reads as HTTP 500, as it would over TCP.
    """
    return httpx2.ASGITransport(app=app, raise_app_exceptions=False)
