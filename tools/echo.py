"""``echo``: returns its input. The smallest possible tool, for latency experiments and tests."""

from __future__ import annotations

from typing import Any

from timely_tools.base import ToolContext, tool


@tool(
    "echo",
    description="Return the given text unchanged.",
    parameters={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The text to echo back."}},
        "required": ["text"],
        "additionalProperties": False,
    },
    title="Echo",
    read_only=True,
    idempotent=True,
)
async def echo(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """Return ``arguments["text"]``."""
    return arguments["text"]
