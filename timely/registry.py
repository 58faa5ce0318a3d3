"""A small generic registry, filled by decorators, lazy ``module:attr`` strings or entry points.

Lazy entries are how the core stays a library: ``timely/`` names the task families, tool servers
and backends that live above it only as strings (entry points declared in ``pyproject.toml``),
which are imported the first time someone asks for them.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from timely.errors import RegistryError

T = TypeVar("T")

# Lazy entries are imported on first use, often from several threads at once (episodes built
# in worker threads): one lock, so two threads never import sibling modules of one package
# concurrently (Python's import locks then report a deadlock) and nobody sees a half-filled
# plugin list. Re-entrant: importing an entry may register, or look up, another.
_LOAD_LOCK = threading.RLock()


def load_object(target: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the object.

    Raises:
        RegistryError: ``target`` has no ``:attr`` part.
    """
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise RegistryError(f"{target!r} must look like 'package.module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _names(obj: object, target: str) -> bool:
    """Whether lazy ``target`` ("module:attr") names ``obj``."""
    module, _, attr = target.partition(":")
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == attr


class Registry(Generic[T]):
    """Name -> object, with did-you-mean errors and plugin discovery.

    Args:
        kind: what is registered ("task", "policy", ...), used in messages.
        entry_point_group: third-party plugins register through this entry-point group.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._help: dict[str, str] = {}
        self._group = entry_point_group
        self._plugins_loaded = False

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: ``@registry.register("family/name-v1")``."""

        def deco(obj: T) -> T:
            self.add(name, obj, help=help)
            return obj

        return deco

    def add(self, name: str, obj: T | str, help: str = "") -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``.

        A decorator that runs while its module is imported for a lazy entry naming the same
        object fulfils that entry; any other second registration of a name is an error.
        """
        old = self._items.get(name)
        if name in self._items and old is not obj:
            fulfils = isinstance(old, str) and not isinstance(obj, str) and _names(obj, old)
            if not fulfils:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        if help or not isinstance(obj, str):  # a lazy entry's help comes with its object
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            obj = self._items[name]
        except KeyError:
            raise RegistryError(self._unknown(name)) from None
        if isinstance(obj, str):
            with _LOAD_LOCK:
                current = self._items[name]
                obj = load_object(current) if isinstance(current, str) else current
                self._items[name] = obj
                self._help.setdefault(name, _first_line(obj))
        return obj  # type: ignore[return-value]

    def help(self, name: str) -> str:
        """One-line help; a lazy entry is imported to find it (its decorator supplies it)."""
        self._load_plugins()
        if name not in self._help and isinstance(self._items.get(name), str):
            self.get(name)
        return self._help.get(name, "")

    def described(self) -> dict[str, str]:
        """Every name with its help, sorted; lazy entries are imported to find theirs."""
        for name in self.names():
            self.help(name)  # importing one entry may register more names
        return {name: self.help(name) for name in self.names()}

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        if self._items:
            return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
        where = f" in entry-point group {self._group!r}" if self._group else ""
        return (
            f"unknown {self.kind} {name!r}: none are registered{where}. The built-in ones are "
            "entry points of the installed package: install it (pip install -e .) rather than "
            "putting the source on sys.path"
        )

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self._group:
            return
        with _LOAD_LOCK:
            if self._plugins_loaded:
                return
            for ep in entry_points(group=self._group):
                if ep.name not in self._items:
                    self._items[ep.name] = ep.value
            self._plugins_loaded = True


def _first_line(obj: object) -> str:
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return lines[0] if lines else ""
