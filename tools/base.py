"""The contract between a tool implementation and the tool server.

Kept free of any server import so tool modules stay plain Python: a tool is an async handler wrapped
in a :class:`ToolDef` by the :func:`tool` decorator; the handler gets a :class:`ToolContext` and
raises :class:`ToolInputError` when the model's input is wrong, which the server turns into an
observation the model can act on (not an HTTP failure). The server (``timely_server.registry``)
collects ToolDefs and interprets what they declare (e.g. the latency spec).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


class ToolInputError(ValueError):
    """The arguments were well-formed but the tool cannot act on them.

    The message is shown to the model, so it should say what to change.
    """


@dataclass
class WorkMeter:
    """The work a handler reports, in virtual seconds of a deterministic work model.

    On a virtual clock a call costs its injected latency plus this (real service time is not
    charged there: it varies from run to run). A tool whose work grows with its input (a model
    fit, a program run) adds what its documented model says the work costs, computed from the
    call alone, so the same call costs the same seconds on every run and machine
    (docs/tool-server.md, "Work model"). Wall-clock calls ignore it: real time is measured.
    """

    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        """Report ``seconds`` more of work.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"work must be a finite number of seconds >= 0, got {seconds!r}")
        self.seconds += seconds


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
        work: where the handler reports its modelled work (see :class:`WorkMeter`).
    """

    tool: str
    session_id: str | None = None
    seed: int = 0
    clock: Literal["wall", "virtual"] = "wall"
    state: dict[str, Any] | None = field(default=None, compare=False)
    deadline_s: float | None = None
    work: WorkMeter = field(default_factory=WorkMeter, compare=False)


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class ToolDef:
    """One tool: what the model is told about it and the handler that runs it.

    Attributes:
        name: the name the model calls it by.
        description: what the tool does, shown to the model.
        parameters: JSON Schema of the arguments object (checked when the ToolDef is built).
        handler: ``async (arguments, ctx) -> result``; the result must be JSON-serialisable.
        latency: the tool's own default latency spec (e.g. ``"constant:0"``), or None to use the
            server's default. Kept as given; the server parses it when it registers the tool
            (``timely_server.latency.parse_latency``), and its per-tool overrides still win.
        title: a human-readable name for UIs (MCP ``title``); None: clients show ``name``.
        read_only: the tool changes nothing (MCP ``readOnlyHint``): a client may call it freely.
        destructive: a call may overwrite or end state (MCP ``destructiveHint``; the spec's
            default is True). False: it only adds state. Meaningless for read-only tools.
        idempotent: calling it again with the same arguments has no further effect.
        output_schema: JSON Schema (an object type) of the result, for tools that return a JSON
            object; MCP clients get it as ``outputSchema`` and the result as
            ``structuredContent``. None for tools that answer in text.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: ToolHandler
    latency: Any = None
    title: str | None = None
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False
    output_schema: dict[str, Any] | None = None
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(
                f"tool name {self.name!r} must be 1-64 ASCII letters, digits, '_' or '-' "
                "(OpenAI function names)"
            )
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON Schema object type")
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {self.name!r}: invalid JSON Schema: {exc.message}") from None
        if self.output_schema is not None:
            if self.output_schema.get("type") != "object":
                raise ValueError(
                    f"tool {self.name!r}: output_schema must be a JSON Schema object type "
                    "(MCP structured content is a JSON object)"
                )
            try:
                Draft202012Validator.check_schema(self.output_schema)
            except SchemaError as exc:
                raise ValueError(
                    f"tool {self.name!r}: invalid output_schema: {exc.message}"
                ) from None
        if self.read_only and self.destructive:
            object.__setattr__(self, "destructive", False)  # nothing to destroy: MCP reads it so
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
            },
        }


def tool(
    name: str,
    *,
    description: str,
    parameters: dict[str, Any],
    latency: Any = None,
    title: str | None = None,
    read_only: bool = False,
    destructive: bool = True,
    idempotent: bool = False,
    output_schema: dict[str, Any] | None = None,
) -> Callable[[ToolHandler], ToolDef]:
    """Decorator turning an async handler into a :class:`ToolDef`.

    Args:
        name: the tool name.
        description: shown to the model.
        parameters: JSON Schema of the arguments.
        latency: optional default latency spec for this tool.
        title: human-readable name (MCP ``title``).
        read_only: the tool changes no state (MCP ``readOnlyHint``).
        destructive: a call may overwrite or end state (MCP ``destructiveHint``).
        idempotent: repeating a call with the same arguments changes nothing more.
        output_schema: JSON Schema of a JSON-object result (MCP ``outputSchema``).
    """

    def deco(handler: ToolHandler) -> ToolDef:
        return ToolDef(
            name,
            description,
            parameters,
            handler,
            latency,
            title=title,
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            output_schema=output_schema,
        )

    return deco
