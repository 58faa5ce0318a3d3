"""The project's import packages and the repository folders they install from.

pyproject.toml maps two folders to import names of the project's own (``server/`` installs as
``timely_server``, ``tools/`` as ``timely_tools``); tests that read source files by package go
through :func:`source_dir` so the mapping lives in one place.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest layer first (DESIGN.md, Layers).
PACKAGES = ("timely", "timely_tools", "timely_server", "timely_eval")


@functools.cache
def package_dirs() -> dict[str, str]:
    """Import name -> folder, as pyproject.toml's ``[tool.setuptools] package-dir`` says."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(setuptools.get("package-dir", {}))


def source_dir(package: str) -> Path:
    """The folder holding top-level import package ``package``'s source."""
    return ROOT / package_dirs().get(package, package)


def module_name(path: Path) -> str:
    """The import name of source file ``path`` (``server/app.py`` -> ``timely_server.app``)."""
    folders = {folder: name for name, folder in package_dirs().items()}
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    parts = (folders.get(parts[0], parts[0]), *parts[1:])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
