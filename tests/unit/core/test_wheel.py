"""The wheel installs only the project's own import names, and every package folder is in it.

A bare ``server`` or ``tools`` top-level package would shadow (or be shadowed by) a user's
``server.py`` or another distribution's ``tools``; pyproject.toml maps the repository's folders
to ``timely_server`` and ``timely_tools`` and lists every package by hand, so a new subpackage
must be added there or it would be missing from the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.helpers.layout import PACKAGES, ROOT, package_dirs, source_dir

OWN_TOP_LEVEL = set(PACKAGES)


def _listed() -> set[str]:
    return set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )


def test_every_package_folder_is_listed():
    on_disk = set()
    for top in PACKAGES:
        base = source_dir(top)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            on_disk.add(".".join((top, *rel)))
    assert _listed() == on_disk


def test_folders_keep_their_names_and_install_under_our_own():
    assert package_dirs() == {"timely_server": "server", "timely_tools": "tools"}


@pytest.mark.slow
def test_built_wheel_has_only_our_top_level_names(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("timely_machine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == OWN_TOP_LEVEL
    assert "timely_server/app.py" in names and "timely_tools/echo.py" in names
    assert any(n.startswith("timely/adapters/") for n in names)
