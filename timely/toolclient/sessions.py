"""Sessions on the tool server: create one for a stateful episode, end it when the episode ends.

Stateful tasks call :meth:`ToolClient.create_session` in ``setup`` and
:meth:`ToolClient.end_session` in ``teardown``; calls naming an unseen id also create it
implicitly, so stateless tasks need neither. These functions hold the protocol; the client
supplies how a request is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx2

from timely.errors import ToolError
from timely.toolclient.results import error_fields, json_body

AdminRequest = Callable[[str, str, dict[str, Any] | None], Awaitable[httpx2.Response]]


async def create_session(
    request: AdminRequest, session_id: str | None = None, ttl_s: float | None = None
) -> str:
    """``POST /sessions``; the new session's id.

    Raises:
        ToolError: the server refused (the id is live, too many sessions).
    """
    body: dict[str, Any] = {}
    if session_id is not None:
        body["session_id"] = session_id
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    response = await request("POST", "/sessions", body)
    payload = json_body(response)
    if response.status_code == 201 and isinstance(payload, dict):
        return str(payload["session_id"])
    etype, message = error_fields(
        payload.get("error") if isinstance(payload, dict) else None, response.status_code
    )
    raise ToolError(f"could not create session {session_id!r}: {etype}: {message}")


async def end_session(request: AdminRequest, session_id: str) -> bool:
    """``DELETE /sessions/{id}``; True if it was live, False if it had ended or never existed.

    Raises:
        ToolError: the server answered something else than 200, 404 or 410.
    """
    response = await request("DELETE", f"/sessions/{quote(session_id, safe='')}", None)
    if response.status_code in (404, 410):
        return False
    if response.status_code != 200:
        raise ToolError(f"could not end session {session_id!r}: HTTP {response.status_code}")
    return True
