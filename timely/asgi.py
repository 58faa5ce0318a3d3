"""HTTP plumbing both servers share (the tool server and the agent endpoint): bodies read under a
size limit, JSON decoded strictly, bearer tokens checked, unread bodies drained.

The helpers raise the small exceptions below; each app maps them onto its own error vocabulary
(the tool server's ``{"error": {"type", "message"}}``, the agent endpoint's OpenAI shape), so the
rules are written once and the wire formats stay each app's own.

Draining reads what a request still has to send before answering it early, so the client sees
the answer. A route that refuses a request before reading its body (413 ``body_too_large``, 401,
404) leaves the rest of the body on its way. When the connection then closes (the client sent
``Connection: close``, as urllib does), the kernel answers the unread bytes with a TCP reset,
and the reset can destroy the answer before the client reads it: the client sees "connection
reset" instead of the JSON error. Production servers drain (Go reads on, nginx lingers); this
middleware does the same at the ASGI level, where it works under any server: before an answer
starts while the body is still unread, it reads and discards the rest, up to ``max_bytes`` and
``max_seconds``. Beyond either bound the answer goes out with ``Connection: close`` (then a
reset is the client's own doing: it is sending more than any server should read).

Requests without a body (no Content-Length, no Transfer-Encoding) pass through untouched.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timely.clock import WallClock

_WALL = WallClock()
# "\ud800" decodes, but no UTF-8 can carry it back out: such bodies are refused as not JSON.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class BodyTooLarge(Exception):
    """The body is longer than the limit (declared or actually sent)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class BadContentLength(Exception):
    """The Content-Length header is not a number."""


class InvalidJSON(Exception):
    """The body is not JSON (the message says where it breaks)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes, whether or not it is chunked.

    Raises:
        BodyTooLarge: it is longer (declared, or a Content-Length that lied).
        BadContentLength: the Content-Length header is malformed.
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadContentLength(f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """:func:`read_body` for a plain ASGI endpoint, which has no ``Request`` to read from.

    A hot route served without the framework's request object reads its body here under the
    same rules (the tool server's ``POST /tools/{name}``).

    Raises:
        BodyTooLarge: it is longer (declared, or a Content-Length that lied).
        BadContentLength: the Content-Length header is malformed.
        starlette.requests.ClientDisconnect: the client went away before the body ended.
    """
    for key, value in scope["headers"]:
        if key == b"content-length":
            if not value.isdigit():
                raise BadContentLength(f"bad Content-Length {value.decode('latin-1')!r}")
            if int(value) > limit:
                raise BodyTooLarge(limit)
            break
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """Strict JSON: also refuses lone surrogate escapes and absurdly deep nesting.

    Raises:
        InvalidJSON: with the decoder's message.
    """
    try:
        data = json.loads(raw)
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeError, RecursionError) as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    return data


def bearer_ok(scope: Scope, tokens: Sequence[bytes]) -> bool:
    """Whether the request carries ``Authorization: Bearer <one of tokens>`` (constant time)."""
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    return any(hmac.compare_digest(given, t) for t in tokens)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path: the ``Allow`` header of
    a 405 (``GET /v1/runs`` and ``POST /v1/runs`` both count)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


class DrainUnreadBodyMiddleware:
    """Drain an unread request body before the response starts.

    Args:
        app: the wrapped app.
        max_bytes: unread bytes at most to read and discard; a body announced larger is not
            drained at all.
        max_seconds: real seconds at most spent draining (a client trickling bytes cannot hold
            the answer back for longer).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_seconds: float = 5.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        has_body = False
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else None
                has_body = declared is None or declared > 0
            elif key == b"transfer-encoding":
                has_body = True
        if not has_body:
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_and_watch() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_after_draining(message: Message) -> None:
            nonlocal body_done
            if message["type"] == "http.response.start" and not body_done:
                body_done = True  # whatever happens below, drain once
                too_big = declared is not None and declared > self.max_bytes
                if too_big or not await self._drain(receive):
                    headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_and_watch, send_after_draining)

    async def _drain(self, receive: Receive) -> bool:
        """Read the rest of the body; True when it ended within the bounds."""
        read = 0
        try:
            async with _WALL.cutoff(_WALL.now() + self.max_seconds):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return False  # the client went away
                    read += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return True
                    if read > self.max_bytes:
                        return False
        except TimeoutError:
            return False
