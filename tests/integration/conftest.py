"""Integration fixtures: a `timely tool-server` started as its own process on loopback."""

import pytest

from timely.tool_servers import tool_server_process as _tool_server_process


def cli_tool_server(*args: str, startup_timeout_s: float = 30.0):
    """Run ``timely tool-server ARGS`` on a free loopback port; yield (url, process)."""
    return _tool_server_process(*args, startup_timeout_s=startup_timeout_s)


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
