"""A deterministic OpenAI-compatible chat-completions server, and a way to serve any ASGI app.

The behaviour is chosen by the requested model name, so one server covers every case:

* ``tool-then-answer``: a tool call to the first tool on the first turn, a final answer
  quoting the tool result once the last message is a tool result.
* ``hermes-text``: a ``<tool_call>`` block in the text and no ``tool_calls`` (a server
  without a tool parser).
* ``bad-args``: a tool call whose arguments are not JSON.
* ``length``: ``finish_reason="length"``.
* ``slow``: waits ``STUB_SLOW_S`` seconds, then answers.
* ``error``: HTTP 500 with an OpenAI-style error body.
* ``no-usage``: a plain answer and no ``usage`` object (some proxies omit it).
* ``answer``: a plain final answer ("Answer: 42"), with usage.
* ``throttled``: HTTP 429 with ``app.state.retry_after`` as headers (default ``Retry-After: 1``)
  for the first ``app.state.throttle_429s`` requests (default 1), then like ``answer``.
* ``no-quota``: HTTP 429 ``insufficient_quota`` (an account out of credit), always.

Every request body is recorded in ``app.state.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

STUB_SLOW_S = 1.5


def create_stub_app() -> FastAPI:
    """The stub server (see module docstring)."""
    app = FastAPI()
    app.state.requests = []
    app.state.throttle_429s = 1
    app.state.retry_after = {"Retry-After": "1"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(body)
        model = body.get("model")
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        if model == "error":
            return JSONResponse(
                {"error": {"type": "server_error", "message": "the stub exploded"}}, 500
            )
        if model == "throttled" and app.state.throttle_429s > 0:
            app.state.throttle_429s -= 1
            return JSONResponse(
                {"error": {"type": "requests", "code": "rate_limit_exceeded",
                           "message": "Rate limit reached for requests"}},
                429,
                headers=app.state.retry_after,
            )  # fmt: skip
        if model == "no-quota":
            return JSONResponse(
                {"error": {"type": "insufficient_quota", "code": "insufficient_quota",
                           "message": "You exceeded your current quota."}},
                429,
            )  # fmt: skip
        if model in ("answer", "throttled"):
            message["content"] = "Answer: 42"
        elif model == "slow":
            await asyncio.sleep(STUB_SLOW_S)
            message["content"] = "Answer: slow"
        elif model == "tool-then-answer":
            last = body["messages"][-1]
            if last["role"] == "tool":
                message["content"] = f"Answer: {last['content']}"
            else:
                name = body["tools"][0]["function"]["name"]
                args = json.dumps({"expression": "6*7"})
                message["tool_calls"] = [
                    {
                        "id": "call_stub_1",
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                ]
                finish = "tool_calls"
        elif model == "hermes-text":
            message["content"] = (
                'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": '
                '{"expression": "1+1"}}\n</tool_call>'
            )
        elif model == "bad-args":
            message["tool_calls"] = [
                {
                    "id": "call_bad",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": '},
                }
            ]
            finish = "tool_calls"
        elif model == "no-usage":
            message["content"] = "The answer is 42, computed with care."
        elif model == "length":
            message["content"] = "It all started"
            finish = "length"
        else:
            return JSONResponse(
                {"error": {"type": "not_found", "message": f"model {model!r} does not exist"}},
                404,
            )
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        completion_tokens = 1 + len(json.dumps(message)) // 4
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return {
            "id": f"chatcmpl-{len(app.state.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            **({} if model == "no-usage" else {"usage": usage}),
        }

    return app


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    else:
        raise RuntimeError("the test server did not start within 10 s")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
