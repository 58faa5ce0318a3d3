"""Integration fixtures: a `timely tool-server` started as its own process on loopback."""

import contextlib
import socket
import subprocess
import sys
import time

import httpx2
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cli_tool_server(*args: str, startup_timeout_s: float = 30.0):
    """Run ``timely tool-server --port P ARGS`` in a subprocess; yield (url, process).

    The process is killed when the block exits (if it is still alive).
    """
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "timely.cli",
        "tool-server",
        "--port",
        str(port),
        "--no-access-log",
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"tool server exited with {proc.returncode}: {err[-2000:]}")
            try:
                if httpx2.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"tool server did not answer on {url}")
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def tool_server_process():
    """The :func:`cli_tool_server` context manager, as a fixture."""
    return cli_tool_server


@pytest.fixture(scope="module")
def stub():
    """The loopback OpenAI-compatible stub (tests/helpers/openai_stub.py): ``(app, base_url)``."""
    from tests.helpers.openai_stub import create_stub_app, serve_in_thread

    app = create_stub_app()
    with serve_in_thread(app) as url:
        yield app, f"{url}/v1"
