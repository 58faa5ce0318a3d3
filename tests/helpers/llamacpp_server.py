"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``, its
``[server]`` extra) as a subprocess on loopback, for testing the ``openai:`` policy against a
server nobody here wrote.

On a host whose llama.cpp build uses AMX (``llama_print_system_info()`` shows ``AMX_INT8 = 1``)
the weight-repacking buffers crash the first decode (llama.cpp issue 20824; "Illegal
instruction" on the 2-core development machine), and the server's CLI has no switch for them.
There the server is started through :data:`NO_REPACK_LAUNCHER`, which turns them off exactly as
the ``llamacpp:`` backend does (``use_extra_bufts=False``) and then runs the server's own
``__main__`` unchanged. Elsewhere the plain ``python -m llama_cpp.server`` command runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from timely.clock import WallClock
from timely.tool_servers import free_port

# The model name the server answers to (its ``--model_alias``); the policy is openai:MODEL_ALIAS.
MODEL_ALIAS = "smollm2-135m"

# `python -c NO_REPACK_LAUNCHER --model ...` = `python -m llama_cpp.server --model ...` with
# llama.cpp's repacking buffers off (docs/policies.md shows the same one-liner).
NO_REPACK_LAUNCHER = (
    "import runpy, llama_cpp.llama_cpp as c; d = c.llama_model_default_params; "
    "c.llama_model_default_params = lambda: (p := d(), setattr(p, 'use_extra_bufts', False))[0]; "
    "runpy.run_module('llama_cpp.server', run_name='__main__')"
)


# What ``llama-cpp-python[server]`` adds to the package itself (uvicorn and PyYAML are ours too).
SERVER_MODULES = ("llama_cpp", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def server_missing() -> str | None:
    """Why ``llama_cpp.server`` cannot run here, or None when it can."""
    for module in SERVER_MODULES:
        if importlib.util.find_spec(module) is None:
            return (
                f"llama_cpp.server needs {module}: pip install 'llama-cpp-python[server]' "
                "(the project's llamacpp extra)"
            )
    return None


def needs_no_repack() -> bool:
    """Whether this llama.cpp build uses AMX, whose repacked matmul crashes the first decode."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def server_command(model: Path, port: int, *args: str) -> list[str]:
    """The argv that serves ``model`` on 127.0.0.1:``port`` with one decode thread."""
    launch = ["-c", NO_REPACK_LAUNCHER] if needs_no_repack() else ["-m", "llama_cpp.server"]
    return [
        sys.executable,
        *launch,
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "1",
        "--n_threads_batch", "1",
        "--verbose", "false",
        *args,
    ]  # fmt: skip


@contextlib.contextmanager
def llamacpp_server(model: Path, *args: str, startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``model`` with ``python -m llama_cpp.server ARGS``; yield its ``/v1`` base URL.

    The process is stopped when the block exits, also when the start fails.

    Raises:
        RuntimeError: the server exited or did not list its model in time (its log is in the
            message).
    """
    import httpx2

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    clock = WallClock()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            server_command(model, port, *args), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            end = clock.now() + startup_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"llama_cpp.server exited with {proc.returncode}: {_tail(log)}"
                    )
                with contextlib.suppress(httpx2.TransportError):
                    models = httpx2.get(f"{url}/models", timeout=1, trust_env=False)
                    if models.status_code == 200:
                        break
                if clock.now() > end:
                    raise RuntimeError(
                        f"llama_cpp.server did not answer on {url} in {startup_timeout_s} s: "
                        f"{_tail(log)}"
                    )
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)  # the poll interval; returns at once if it died
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]
