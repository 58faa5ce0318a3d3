"""The contract between a tool implementation and the tool server.

Kept free of any server import so tool modules stay plain Python: a handler gets a
:class:`ToolContext` and raises :class:`ToolInputError` when the model's input is wrong, which the
server turns into an observation the model can act on (not an HTTP failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


class ToolInputError(ValueError):
    """The arguments were well-formed but the tool cannot act on them.

    The message is shown to the model, so it should say what to change.
    """


@dataclass(frozen=True)
class ToolContext:
    """What a handler may know about the call besides its arguments.

    Attributes:
        tool: the name the tool was called by.
        session_id: the episode's session, or None; stateful tools key their state on it.
        seed: the server's seed; stochastic tools derive RNGs from it with ``timely.rng.make_rng``.
        clock: "virtual" when the caller runs on simulated time, else "wall".
        state: the session's state dict (None without a session). Stateful tools (a game, an ML
            workspace) keep per-episode state here; values with a ``close()`` method are closed
            when the session ends or expires.
        deadline_s: real seconds the handler's own work may take before the caller's deadline
            (what the caller has left minus the injected latency), or None without a deadline.
            On a virtual clock it is the server's cap on real work instead
            (``ServerConfig.virtual_work_cap_s``): virtual deadlines never cut real work.
            The server cancels the handler then anyway; long-running tools (the code sandbox)
            use it to stop their work in time and still answer.
    """

    tool: str
    session_id: str | None = None
    seed: int = 0
    clock: Literal["wall", "virtual"] = "wall"
    state: dict[str, Any] | None = field(default=None, compare=False)
    deadline_s: float | None = None
