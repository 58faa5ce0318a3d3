"""The optional extras of the timely-machine distribution, and one error when one is missing.

``pip install timely-machine`` is the light core: the loop, clocks, tool server, Timely-Eval with
scripted and ``openai:`` policies, leaderboards and serving, without torch. Whatever needs more
(the ``hf:`` and ``llamacpp:`` policies, training, the ML and TextWorld tasks, the Ray backend)
calls :func:`require_extra` where it is resolved, before any episode runs, so the user reads the
``pip install`` line that fixes it instead of a ModuleNotFoundError from deep inside a worker.
The extras themselves are declared in pyproject.toml; tests/unit/core/test_extras.py checks that
this table names only packages the extra of that name (or one it includes) declares.
"""

from __future__ import annotations

import importlib.util
import sys

from timely.errors import ConfigError

DISTRIBUTION = "timely-machine"

_HF = ("torch", "transformers", "peft", "gguf", "safetensors")

# Extra -> the top-level modules whose absence means the extra is not installed. Checked with
# importlib.util.find_spec: nothing is imported.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hf": _HF,
    "llamacpp": ("llama_cpp", *_HF),
    "data": ("datasets",),
    "train": (*_HF, "datasets"),
    "ml": ("sklearn", "pandas", "threadpoolctl"),
    "games": ("textworld",),
    "jericho": ("jericho",),
    "ray": ("ray",),
    "verl": ("verl", *_HF, "datasets"),
}


class MissingExtra(ConfigError):
    """A feature needs an optional extra that is not installed; the message has the fix.

    Attributes:
        extra: the extra's name, e.g. ``"hf"``.
        missing: the modules that were not found.
    """

    def __init__(self, message: str, *, extra: str = "", missing: list[str] | None = None) -> None:
        super().__init__(message)  # one positional argument: callers re-raise type(exc)(text)
        self.extra = extra
        self.missing = missing or []


def install_line(extra: str) -> str:
    """The command that installs ``extra``: ``pip install 'timely-machine[hf]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty: it is installed).

    Raises:
        KeyError: ``extra`` is not one of :data:`EXTRAS`.
    """
    return [name for name in EXTRAS[extra] if not _importable(name)]


def _importable(name: str) -> bool:
    """Whether top-level module ``name`` can be imported, without importing it."""
    if name in sys.modules:  # imported already, or set to None: "do not import"
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken installation counts as missing
        return False


def require_extra(extra: str | None, what: str) -> None:
    """Fail with the install line when ``extra`` is missing; nothing happens when it is there.

    Args:
        extra: the extra ``what`` needs, or None when it needs none.
        what: what needs it, as the message starts: ``"the hf: policy"``, ``"task ml/digits-v1"``.

    Raises:
        MissingExtra: a module of the extra cannot be found.
    """
    if extra is None:
        return
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(
            f"{what} needs the [{extra}] extra (missing: {', '.join(missing)}): "
            f"{install_line(extra)}",
            extra=extra,
            missing=missing,
        )
