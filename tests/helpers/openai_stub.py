"""A deterministic OpenAI-compatible chat-completions server, and a way to serve any ASGI app.

A request with ``"stream": true`` gets the same reply as server-sent events, shaped like vLLM's:
a role chunk, the content a word per chunk, each tool call as a first fragment with its id and
function name then its arguments a few characters per chunk (as vLLM's hermes parser streams
them), a chunk with the finish reason, a usage chunk with no choices when
``stream_options.include_usage`` is set, then ``data: [DONE]``. The stream waits
``app.state.first_token_delay_s`` before its first chunk and ``app.state.token_delay_s`` before
each later one (both 0 by default), and records each stream in ``app.state.streams``
(``{"model", "chunks", "finished", "disconnected"}``), so a test can see a client hang up.

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
* ``dribble``: a long answer (``DRIBBLE_WORDS`` words); streamed, at least ``STUB_DRIBBLE_S``
  seconds per chunk.

Streams only (a plain request gets a 404, as for any unknown model):

* ``stream-drop``: a few content chunks, then the server drops the connection.
* ``stream-bad-json``: a content chunk, then a chunk that is not JSON.
* ``stream-error``: a content chunk, then an OpenAI-style error event.
* ``stream-truncated``: content chunks, then the stream ends without a finish reason or
  ``[DONE]``.

Every request body is recorded in ``app.state.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

STUB_SLOW_S = 3.0  # far past the deadlines tests set, with WALL_SLACK_S to spare
STUB_DRIBBLE_S = 0.05
DRIBBLE_WORDS = 200
ARGUMENT_FRAGMENT_CHARS = 4
_STREAM_ONLY = ("stream-drop", "stream-bad-json", "stream-error", "stream-truncated")


def create_stub_app() -> FastAPI:
    """The stub server (see module docstring)."""
    app = FastAPI()
    app.state.requests = []
    app.state.throttle_429s = 1
    app.state.retry_after = {"Retry-After": "1"}
    app.state.first_token_delay_s = 0.0
    app.state.token_delay_s = 0.0
    app.state.streams = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(body)
        model = body.get("model")
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        stream = bool(body.get("stream"))
        delay = 0.0
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
            delay = STUB_SLOW_S
            message["content"] = "Answer: slow"
        elif model == "dribble":
            message["content"] = " ".join(f"w{i}" for i in range(DRIBBLE_WORDS))
        elif stream and model in _STREAM_ONLY:
            message["content"] = "This reply will not end well."
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
        reply_id = f"chatcmpl-{len(app.state.requests)}"
        with_usage = model != "no-usage"
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = _chunks(reply_id, model, message, finish, usage if with_usage else None)
            if not include_usage:
                chunks = [c for c in chunks if c.get("choices")]
            return StreamingResponse(
                _sse(app, request, model, chunks, delay), media_type="text/event-stream"
            )
        await asyncio.sleep(delay)
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            **({"usage": usage} if with_usage else {}),
        }

    return app


def _chunks(
    reply_id: str,
    model: str,
    message: dict[str, Any],
    finish: str,
    usage: dict[str, int] | None,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a reply, split the way vLLM streams it."""

    def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None) -> dict[str, Any]:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]  # fmt: skip
        return {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": choices,
        }

    out = [chunk({"role": "assistant", "content": ""})]
    for word in re.findall(r"\s*\S+", message.get("content") or ""):
        out.append(chunk({"content": word}))
    for index, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        out.append(
            chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                   "function": {"name": fn["name"]}}]})
        )  # fmt: skip
        arguments = fn["arguments"]
        for i in range(0, len(arguments), ARGUMENT_FRAGMENT_CHARS):
            fragment = arguments[i : i + ARGUMENT_FRAGMENT_CHARS]
            out.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            )
    out.append(chunk({}, finish))
    if usage is not None:
        out.append({**chunk(None), "usage": usage})
    return out


async def _sse(
    app: FastAPI, request: Request, model: str, chunks: list[dict[str, Any]], delay: float
) -> AsyncIterator[str]:
    """Send ``chunks`` as server-sent events with the app's delays; record how it ended."""
    record = {"model": model, "chunks": 0, "finished": False, "disconnected": False}
    app.state.streams.append(record)
    token_delay = max(app.state.token_delay_s, STUB_DRIBBLE_S if model == "dribble" else 0.0)
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    if model in _STREAM_ONLY:
        broken = {
            "stream-drop": "",  # raised below, once the first chunks are out
            "stream-bad-json": "data: {this is not json\n\n",
            "stream-error": 'data: {"error": {"type": "server_error", "message": "out of KV '
            'cache"}}\n\n',
            "stream-truncated": "",
        }[model]
        events = events[:3] + ([broken] if broken else [])
    try:
        for i, event in enumerate(events):
            wait = delay + app.state.first_token_delay_s if i == 0 else token_delay
            if wait:
                await asyncio.sleep(wait)
            if await request.is_disconnected():
                record["disconnected"] = True
                return
            yield event
            record["chunks"] += 1
        if model == "stream-drop":
            raise ConnectionAbortedError("the stub drops the connection mid-stream")
        record["finished"] = True
    except (asyncio.CancelledError, GeneratorExit):
        record["disconnected"] = True  # the client closed the stream
        raise


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


# The calculator's OpenAI tool schema, as a test hands it to the stub.
CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
