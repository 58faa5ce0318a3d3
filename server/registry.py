"""The tools a tool server serves: name, description, JSON Schema, handler, default latency.

One registry feeds both the HTTP listing (the OpenAI ``tools`` array a policy is given) and
dispatch, so what the model is told and what the server accepts cannot drift apart. Tools are
declared next to their implementation with :func:`timely_tools.base.tool` (the tools package imports
nothing from the server); :func:`default_registry` collects the built-ins, and third-party
packages add theirs through the ``timely.tools`` entry-point group. A tool's own latency spec is
parsed here, when the tool is registered, so a malformed one fails before the server serves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from timely.registry import Registry
from timely_server.latency import BaseLatency, parse_latency
from timely_tools.base import ToolContext, ToolDef, ToolHandler, ToolInputError, tool

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

# "module:attr" of every built-in tool; imported only when a registry is built.
BUILTIN_TOOLS: tuple[str, ...] = (
    "timely_tools.echo:echo",
    "timely_tools.calculator:calculator",
    *(
        f"timely_tools.games.moves:{attr}"
        for attr in (
            "game_new", "look", "go", "take", "drop", "open_", "unlock", "put", "examine",
            "inventory", "step", "get_available_actions", "get_score", "get_max_score", "end_game",
        )
    ),
    "timely_tools.sandbox.tool:run_python",
    *(f"timely_tools.ml.tools:{attr}" for attr in (
        "ml_setup", "describe_data", "train_model", "evaluate_model", "submit_model",
    )),
)  # fmt: skip


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
        self._latency: dict[str, tuple[ToolDef, BaseLatency | None]] = {}
        for t in tools:
            self.add(t)

    def add(self, tooldef: ToolDef | str) -> ToolDef:
        """Add a tool, or a ``"module:attr"`` string naming one (imported now, to fail early).

        Raises:
            timely.errors.RegistryError: a different tool of that name is already registered.
            ValueError: the tool's latency spec is malformed.
        """
        if isinstance(tooldef, str):
            module, _, attr = tooldef.partition(":")
            tooldef = getattr(importlib.import_module(module), attr)
        if not isinstance(tooldef, ToolDef):
            raise TypeError(f"expected a ToolDef, got {type(tooldef).__name__}")
        self.default_latency(tooldef)  # a bad spec fails now, not on the first call
        self._reg.add(tooldef.name, tooldef, help=tooldef.description.split("\n")[0])
        return tooldef

    def default_latency(self, tooldef: ToolDef) -> BaseLatency | None:
        """The tool's own latency model (its ``latency`` spec, parsed once), or None.

        Raises:
            ValueError: the spec is malformed; the message names the tool and the valid forms.
        """
        cached = self._latency.get(tooldef.name)
        if cached is None or cached[0] is not tooldef:
            try:
                model = None if tooldef.latency is None else parse_latency(tooldef.latency)
            except ValueError as exc:
                raise ValueError(f"tool {tooldef.name!r}: latency: {exc}") from None
            cached = self._latency[tooldef.name] = (tooldef, model)
        return cached[1]

    def register(
        self,
        name: str,
        *,
        description: str,
        parameters: dict[str, Any],
        latency: Any = None,
        **hints: Any,
    ) -> Callable[[ToolHandler], ToolDef]:
        """Decorator: define a tool and add it here in one step.

        Args:
            name: the tool name.
            description: shown to the model.
            parameters: JSON Schema of the arguments.
            latency: the tool's own default latency spec.
            **hints: ``title``, ``read_only``, ``destructive``, ``idempotent``,
                ``output_schema`` (see :class:`timely_tools.base.ToolDef`).
        """

        def deco(handler: ToolHandler) -> ToolDef:
            return self.add(ToolDef(name, description, parameters, handler, latency, **hints))

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
