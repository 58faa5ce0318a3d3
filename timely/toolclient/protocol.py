"""What the agent loop needs from tools (:class:`ToolBackend`), and the wire names both sides share.

``run_episode`` depends on this protocol only, never on HTTP: an in-process backend, a test
double or :class:`timely.toolclient.ToolClient` all fit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from timely.policies.base import Deadline
from timely.types import ToolResult

CLOCK_HEADER = "X-Timely-Clock"
DEADLINE_HEADER = "X-Timely-Deadline-S"
IN_PROCESS_URL = "http://tool-server.in-process"


@runtime_checkable
class ToolBackend(Protocol):
    """What ``run_episode`` needs from tools.

    ``call`` never raises for a tool-level problem (unknown tool, invalid arguments, the tool
    failed, the deadline passed): it returns a ToolResult whose ``error`` says what happened, and it
    has already charged the time the call cost to ``deadline.clock``. It raises
    ``ToolServerUnavailable`` only when the server cannot be reached within the deadline.
    """

    async def list_tools(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` array of every tool the backend serves."""
        ...

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        call_id: str,
        session_id: str | None,
        deadline: Deadline,
    ) -> ToolResult: ...
