"""The seam through which the core runs a tool server in-process, without importing one.

``timely run`` without ``--tool-server`` and :mod:`timely.testing` need a tool server to talk to,
but the server package sits above the core. It registers an app factory in the
``timely.tool_servers`` entry-point group (``default``, declared in ``pyproject.toml``); the core
looks the factory up by name when it first needs one, and
:meth:`timely.toolclient.ToolClient.in_process` drives the ASGI app it returns without sockets.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tool_server_process(
    *args: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    startup_timeout_s: float = 30.0,
    log: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``timely tool-server --host HOST --port PORT ARGS`` as its own process.

    For runs that outlive an event loop or need their own cores (an RL job's thousands of
    concurrent rollouts). Yields ``(url, process)`` once ``/health`` answers; the process is
    killed when the block exits.

    Args:
        args: more ``timely tool-server`` flags (``--latency constant:1``).
        host: bind address (and the host of the URL, unless it is 0.0.0.0).
        port: the port (default: a free one).
        startup_timeout_s: how long to wait for ``/health``.
        log: append the server's stderr here (default: kept in memory for the error message).

    Raises:
        RuntimeError: the server exited or did not answer in time (its stderr is in the message).
    """
    import httpx2

    port = port if port is not None else free_port(host if host != "0.0.0.0" else "127.0.0.1")
    cmd = [sys.executable, "-m", "timely.cli", "tool-server", "--host", host, "--port", str(port)]
    cmd += ["--no-access-log", *args]
    err = open(log, "ab") if log is not None else subprocess.PIPE  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    try:
        end = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                text = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                where = f" (log: {log})" if log is not None else ""
                raise RuntimeError(
                    f"tool server exited with {proc.returncode}{where}: {text[-2000:]}"
                )
            try:
                if httpx2.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"tool server did not answer on {url} in {startup_timeout_s} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # the poll interval; returns at once if it died
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        if log is not None:
            err.close()  # type: ignore[union-attr]
