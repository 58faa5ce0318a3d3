"""The wheel installs only the project's own import names, and every package folder is in it.

A bare ``server`` or ``tools`` top-level package would shadow (or be shadowed by) a user's
``server.py`` or another distribution's ``tools``; pyproject.toml maps the repository's folders
to ``timely_server`` and ``timely_tools`` and lists every package by hand, so a new subpackage
must be added there or it would be missing from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once for this module's tests."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("timely_machine-*.whl")
    return built


@pytest.mark.slow
def test_built_wheel_has_only_our_top_level_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == OWN_TOP_LEVEL
    assert "timely_server/app.py" in names and "timely_tools/echo.py" in names
    assert any(n.startswith("timely/adapters/") for n in names)
    shipped = [
        p.relative_to(ROOT).as_posix() for p in (ROOT / "timely" / "configs").rglob("*.yaml")
    ]
    assert shipped and set(shipped) <= set(names)


@pytest.mark.slow
def test_the_installed_wheel_runs_named_configs_outside_the_checkout(wheel, tmp_path):
    """`pip install` of the wheel, then commands that name shipped configs, from elsewhere."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's copy first; the dependencies come from this environment.
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200", "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    where = run(sys.executable, "-c", "import timely.configs as c; print(c.CONFIG_DIR)")
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    res = run(str(site / "bin" / "timely"), "eval", "--suite", "smoke", "--policy", "oracle",
              "--out", "runs/smoke", "--no-plots", "episodes=1")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (elsewhere / "runs" / "smoke" / "results.json").is_file()
    res = run(str(site / "bin" / "timely-rl"), "--config", "smollm2_cpu", "--dry-run")
    assert res.returncode == 0 and "rl:" in res.stdout, res.stderr[-3000:]
    res = run(str(site / "bin" / "timely"), "eval", "--suite", "smok")
    assert res.returncode != 0 and "Did you mean 'smoke'" in res.stdout + res.stderr
