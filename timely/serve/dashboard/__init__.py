"""A web dashboard of runs and reports: the leaderboard, its plots, a timeline per episode.

Plain HTML, JS and CSS shipped with the package (``static/``), served by FastAPI: no CDN, no
build step, works without a network. The agent endpoint includes :func:`dashboard_router` at
``/``; ``timely dashboard DIR`` serves it alone (:func:`serve_dashboard`). docs/dashboard.md
describes the page and the API.
"""

from __future__ import annotations

import socket
from pathlib import Path

from timely.errors import ConfigError
from timely.serve.dashboard.api import check_dirs, create_dashboard_app, dashboard_router

__all__ = ["check_dirs", "create_dashboard_app", "dashboard_router", "serve_dashboard"]


def serve_dashboard(
    dirs: list[Path], *, host: str = "127.0.0.1", port: int = 8900, announce=print
) -> None:
    """Serve the dashboard of ``dirs`` in the foreground until interrupted.

    Args:
        dirs: run or report directories (see :func:`dashboard_router`).
        host: bind address; loopback by default, as the page shows file paths and records.
        port: TCP port; 0 picks a free one.
        announce: called with the page's URL once the socket is bound (before serving).

    Raises:
        ConfigError: a directory is missing or holds nothing to show, or the port is taken.
    """
    import uvicorn

    app = create_dashboard_app(dirs)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bind first so the printed URL carries the real port, also when port 0 picked one.
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); try --port 0"
        ) from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{bound}/")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
