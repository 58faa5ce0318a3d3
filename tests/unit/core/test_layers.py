"""The core is a library: ``timely`` imports nothing above it, and the layers form no cycle.

Allowed imports between the top-level packages (DESIGN.md, Layers)::

    timely_eval   -> timely_server, timely_tools, timely
    timely_server -> timely_tools, timely        (the server/ folder)
    timely_tools  -> timely                      (the tools/ folder)
    timely        -> (none of them)

The built-in task families and the in-process tool server reach the core through entry points
declared in pyproject.toml, so those lists must stay whole.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.helpers.layout import PACKAGES, source_dir

ROOT = Path(__file__).resolve().parents[3]
ALLOWED = {
    "timely": set(),
    "timely_tools": {"timely"},
    "timely_server": {"timely", "timely_tools"},
    "timely_eval": {"timely", "timely_tools", "timely_server"},
}


def _imports(package: str) -> list[tuple[str, str]]:
    """(other top-level package, 'file:line') for every import of ``package``'s source.

    Imports inside functions and ``if TYPE_CHECKING:`` blocks count too: a layer that needs a
    name from above it only for typing still depends on it.
    """
    found = []
    for path in sorted(source_dir(package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative imports stay inside the package
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.append((top, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


def _violations(package: str) -> list[str]:
    return [
        f"{where} imports {top}" for top, where in _imports(package) if top not in ALLOWED[package]
    ]


def test_the_allowed_layers_form_no_cycle():
    # Depth-first over ALLOWED: a package may not reach itself.
    def reach(pkg: str, seen: tuple[str, ...]) -> None:
        for dep in ALLOWED[pkg]:
            assert dep not in seen, f"import cycle {' -> '.join((*seen, dep))}"
            reach(dep, (*seen, dep))

    for pkg in PACKAGES:
        reach(pkg, (pkg,))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below_them(package):
    bad = _violations(package)
    below = ", ".join(sorted(ALLOWED[package])) or "none of the other packages"
    assert not bad, (
        f"{package} may import {below}; reach a layer above through an entry point or a lazy "
        "'module:attr' string:\n" + "\n".join(bad)
    )


def _fresh_modules(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; the modules it loaded, by top-level package."""
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(json.dumps({'new': new, 'stdlib': sorted(sys.stdlib_module_names)}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    stdlib = set(out["stdlib"])
    by_top: dict[str, list[str]] = {}
    for name in out["new"]:
        top = name.split(".")[0]
        if top not in stdlib and not top.startswith("_"):
            by_top.setdefault(top, []).append(name)
    return by_top


def test_importing_the_core_loads_no_layer_above_it():
    loaded = _fresh_modules(
        "import timely, timely.loop, timely.rollout, timely.run, timely.task, timely.testing"
    )
    above = {
        top: mods
        for top, mods in loaded.items()
        if top in ("timely_eval", "timely_server", "timely_tools")
    }
    assert not above, f"the core pulled in {above}"
    assert "torch" not in loaded and "fastapi" not in loaded, sorted(loaded)


def test_import_timely_is_cheap():
    # The package only names its API (docs/api.md); everything loads on first use.
    loaded = _fresh_modules("import timely")
    assert set(loaded) == {"timely"}, (
        f"import timely also loaded {sorted(set(loaded) - {'timely'})}"
    )
    assert loaded["timely"] == ["timely"]


def test_every_builtin_task_is_an_entry_point():
    import timely_eval.tasks  # noqa: F401 - registers every built-in family by decorator
    from timely.task import TASKS

    declared = {ep.name: ep.value for ep in entry_points(group="timely.tasks")}
    builtin = {}
    for name in TASKS.names():
        cls = TASKS.get(name)
        if cls.__module__.startswith("timely_eval."):
            builtin[name] = f"{cls.__module__}:{cls.__qualname__}"
    missing = {name: target for name, target in builtin.items() if declared.get(name) != target}
    assert not missing, (
        'declare these in pyproject.toml under [project.entry-points."timely.tasks"] '
        "(then pip install -e . refreshes the metadata):\n"
        + "\n".join(f'"{name}" = "{target}"' for name, target in sorted(missing.items()))
    )
    for name, target in declared.items():
        if target.startswith("timely_eval."):
            assert builtin.get(name) == target, f"entry point {name} = {target} names no family"


def test_aliases_resolve_to_their_versioned_family():
    from timely.task import TASKS, make_task

    assert TASKS.get("math/arithmetic") is TASKS.get("math/arithmetic-v1")
    assert TASKS.get("games/treasure") is TASKS.get("games/treasure-v1")
    assert make_task("math/arithmetic", seed=3).spec.id == "math/arithmetic-v1"


async def test_the_in_process_tool_server_comes_through_its_entry_point():
    from timely.rollout import open_tools
    from timely.tool_servers import TOOL_SERVERS

    assert "default" in TOOL_SERVERS
    async with open_tools(latency="constant:2.5") as tools:
        schemas = await tools.list_tools()
        assert any(s["function"]["name"] == "calculator" for s in schemas)


# The rollout engine (timely/rollout.py) is the one place that builds tool servers and assembles
# episode options; DESIGN.md, "One rollout engine around the loop".
ENGINE = {"timely/rollout.py"}
BUILDS_TOOL_SERVERS = ("in_process_app(", "ToolClient.in_process(", "create_app(ServerConfig(")


def _sources(*packages: str) -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for package in packages
        for path in sorted(source_dir(package).rglob("*.py"))
    }


def test_only_the_rollout_engine_builds_tool_servers():
    sources = _sources("timely", "timely_eval")
    # Where the in-process seam and the client are defined (their docstrings name them).
    allowed = ENGINE | {"timely/tool_servers.py", "timely/toolclient/__init__.py"}
    allowed |= {"timely/toolclient/client.py"}
    found = [
        f"{name}: {pattern}"
        for name, text in sources.items()
        for pattern in BUILDS_TOOL_SERVERS
        if pattern in text and name not in allowed
    ]
    assert not found, (
        "build tool servers through timely.rollout.Runtime.tools (one per latency):\n"
        + "\n".join(found)
    )


def test_only_the_run_record_names_its_trajectory_files():
    # timely/runrecord is the one module that writes, reads and resumes a run directory; the
    # others name its files through its constants (prose, f-strings and help text may mention
    # them: only a string that *is* a file name counts).
    from timely.runrecord import CALIBRATION, ERRORS, TRAJECTORIES

    names = {TRAJECTORIES, CALIBRATION, ERRORS}
    found = []
    for name, text in _sources("timely", "timely_eval").items():
        if name.startswith("timely/runrecord/"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    assert not found, "use timely.runrecord's file-name constants:\n" + "\n".join(found)


def test_only_the_rollout_engine_assembles_episode_options():
    sources = _sources("timely", "timely_eval")
    found = [
        name
        for name, text in sources.items()
        if "EpisodeOptions(" in text and name not in ENGINE | {"timely/loop.py"}
    ]
    assert not found, f"assemble EpisodeOptions with timely.rollout.episode_options: {found}"
