"""The configs that ship with the package, and the one rule that turns a name into a file.

Commands name configs: ``timely eval --suite smoke``, ``timely tool-server --latency-profile
slow``, ``timely-rl --config smollm2_cpu``. The YAML files live in this folder, one subfolder
per kind (``eval/``, ``latency/``, ``run/``, ``server/``, ``train/``), so an installed package
has them wherever it runs (the repository's ``configs/`` is a link to this folder, so the
documented ``configs/train/smollm2_cpu.yaml`` paths work in a checkout too).

The rule, for every command: a bare word (no path separator, no ``.yaml``/``.yml``) is the
name of a shipped config of that kind; anything else is a path, read as given. An unknown name
fails with the available names and a did-you-mean.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from timely.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent

# Kind (the subfolder) -> what one is called in messages.
KINDS: dict[str, str] = {
    "eval": "suite",
    "latency": "latency profile",
    "run": "run config",
    "server": "tool server config",
    "serve": "serve config",
    "train": "train config",
}

_SUFFIXES = (".yaml", ".yml")


def is_name(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` names a shipped config rather than a file.

    Args:
        name_or_path: a command's argument, e.g. ``"smoke"`` or ``"configs/eval/smoke.yaml"``.
    """
    text = str(name_or_path)
    return bool(text) and not (
        text.endswith(_SUFFIXES) or "/" in text or "\\" in text or text.startswith(".")
    )


def config_names(kind: str) -> list[str]:
    """The names of the shipped configs of one kind, sorted.

    Args:
        kind: a subfolder, one of :data:`KINDS` (``"eval"``, ``"latency"``, ...).
    """
    folder = CONFIG_DIR / _checked(kind)
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in _SUFFIXES})


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """The YAML file a command's argument means: a shipped config by name, or a path.

    Args:
        kind: a subfolder, one of :data:`KINDS`.
        name_or_path: a name (``"smoke"``) or a path to a YAML file.

    Raises:
        ConfigError: an unknown name (the message lists the available ones) or a path that
            does not exist (naming the shipped config of that stem, if there is one).
    """
    label = KINDS[_checked(kind)]
    text = str(name_or_path)
    names = config_names(kind)
    if not is_name(text):
        path = Path(text).expanduser()
        if path.is_file():
            return path
        stem = path.stem
        hint = f"; the shipped {label} {stem!r} is named without a path" if stem in names else ""
        raise ConfigError(f"{label} file {str(path)!r} does not exist{hint}")
    for suffix in _SUFFIXES:
        path = CONFIG_DIR / kind / f"{text}{suffix}"
        if path.is_file():
            return path
    close = difflib.get_close_matches(text, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    shipped = f"Available: {', '.join(names)}; or" if names else "None ship with timely;"
    raise ConfigError(f"unknown {label} {text!r}.{hint} {shipped} pass a path to a YAML file.")


def _checked(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; one of {', '.join(KINDS)}")
    return kind
