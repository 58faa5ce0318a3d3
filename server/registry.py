"""The tools a tool server serves: name, description, JSON Schema, handler, default latency.

One registry feeds both the HTTP listing (the OpenAI ``tools`` array a policy is given) and
dispatch, so what the model is told and what the server accepts cannot drift apart. Tools are
declared next to their implementation with :func:`tool`; :func:`default_registry` collects the
built-ins, and third-party packages add theirs through the ``timely.tools`` entry-point group.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from server.latency import parse_latency
from timely.registry import Registry
from tools.base import ToolContext, ToolInputError

__all__ = [
    "BUILTIN_TOOLS",
    "ToolContext",
    "ToolDef",
    "ToolHandler",
    "ToolInputError",
    "ToolRegistry",
    "default_registry",
    "tool",
]

ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]

# "module:attr" of every built-in tool; imported only when a registry is built.
BUILTIN_TOOLS: tuple[str, ...] = (
    "tools.echo:echo",
    "tools.calculator:calculator",
    *(
        f"tools.games.moves:{attr}"
        for attr in (
            "game_new", "look", "go", "take", "drop", "open_", "unlock", "put", "examine",
            "inventory", "step", "get_available_actions", "get_score", "get_max_score", "end_game",
        )
    ),
    "tools.sandbox.tool:run_python",
    *(f"tools.ml.tools:{attr}" for attr in (
        "ml_setup", "describe_data", "train_model", "evaluate_model", "submit_model",
    )),
)  # fmt: skip


@dataclass(frozen=True)
class ToolDef:
    """One tool as the server sees it.

    Attributes:
        name: the name the model calls it by.
        description: what the tool does, shown to the model.
        parameters: JSON Schema of the arguments object (checked when the ToolDef is built).
        handler: ``async (arguments, ctx) -> result``; the result must be JSON-serialisable.
        latency: the tool's own default latency model (a spec or model), or None to use the
            server's default. Server-side per-tool overrides still win.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: ToolHandler
    latency: Any = None
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
        if self.latency is not None:
            object.__setattr__(self, "latency", parse_latency(self.latency))
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
    name: str, *, description: str, parameters: dict[str, Any], latency: Any = None
) -> Callable[[ToolHandler], ToolDef]:
    """Decorator turning an async handler into a :class:`ToolDef`.

    Args:
        name: the tool name.
        description: shown to the model.
        parameters: JSON Schema of the arguments.
        latency: optional default latency spec for this tool.
    """

    def deco(handler: ToolHandler) -> ToolDef:
        return ToolDef(name, description, parameters, handler, latency)

    return deco


class ToolRegistry:
    """The set of tools one server exposes, with did-you-mean lookups.

    Args:
        tools: ToolDefs (or lazy ``"module:attr"`` strings) to add.
        entry_point_group: also discover plugin tools through this entry-point group.
    """

    def __init__(
        self, tools: Iterable[ToolDef | str] = (), *, entry_point_group: str | None = None
    ) -> None:
        self._reg: Registry[ToolDef] = Registry("tool", entry_point_group)
        for t in tools:
            self.add(t)

    def add(self, tooldef: ToolDef | str) -> ToolDef:
        """Add a tool, or a ``"module:attr"`` string naming one (imported now, to fail early).

        Raises:
            timely.errors.RegistryError: a different tool of that name is already registered.
        """
        if isinstance(tooldef, str):
            module, _, attr = tooldef.partition(":")
            tooldef = getattr(importlib.import_module(module), attr)
        if not isinstance(tooldef, ToolDef):
            raise TypeError(f"expected a ToolDef, got {type(tooldef).__name__}")
        self._reg.add(tooldef.name, tooldef, help=tooldef.description.split("\n")[0])
        return tooldef

    def register(
        self, name: str, *, description: str, parameters: dict[str, Any], latency: Any = None
    ) -> Callable[[ToolHandler], ToolDef]:
        """Decorator: define a tool and add it here in one step."""

        def deco(handler: ToolHandler) -> ToolDef:
            return self.add(ToolDef(name, description, parameters, handler, latency))

        return deco

    def get(self, name: str) -> ToolDef:
        """The tool called ``name``.

        Raises:
            timely.errors.RegistryError: unknown name; the message suggests close matches.
        """
        tooldef = self._reg.get(name)
        if isinstance(tooldef, ToolDef):
            return tooldef
        raise TypeError(f"tool plugin {name!r} does not point at a ToolDef")

    def names(self) -> list[str]:
        """All tool names, sorted."""
        return self._reg.names()

    def __contains__(self, name: str) -> bool:
        return name in self._reg

    def __len__(self) -> int:
        return len(self.names())

    def openai_tools(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` array for ``names`` (all tools when None), in the given order.

        Raises:
            timely.errors.RegistryError: one of ``names`` is unknown.
        """
        return [self.get(n).openai() for n in (self.names() if names is None else names)]


def default_registry() -> ToolRegistry:
    """A fresh registry holding the built-in tools and any ``timely.tools`` plugins."""
    return ToolRegistry(BUILTIN_TOOLS, entry_point_group="timely.tools")
