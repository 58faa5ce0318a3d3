"""Reading the tool server's answers: JSON bodies, non-negative numbers, error fields, results.

Everything here is pure: the client decides what a call cost and charges it; these helpers only
decode what came back and build the :class:`~timely.types.ToolResult` records.
"""

from __future__ import annotations

from typing import Any

import httpx2

from timely.types import ToolResult


def failed(
    call_id: str, name: str, etype: str, message: str, charged: float = 0.0, retries: int = 0
) -> ToolResult:
    """The result of a call that failed with ``etype`` before the server could answer it."""
    return ToolResult(
        call_id=call_id,
        name=name,
        content=f"Error ({etype}): {message}",
        error=etype,
        charged_s=charged,
        retries=retries,
    )


def json_body(response: httpx2.Response) -> Any:
    """The decoded JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def seconds(value: Any) -> float:
    """``value`` as seconds: a non-negative float (0 for anything else)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if out >= 0 else 0.0


def error_fields(error: Any, status: int) -> tuple[str, str]:
    """(type, message) of an ``{"error": {...}}`` body, or ones made from the HTTP status."""
    if isinstance(error, dict):
        return str(error.get("type") or f"http_{status}"), str(error.get("message") or "")
    return f"http_{status}", f"the tool server answered HTTP {status}"
