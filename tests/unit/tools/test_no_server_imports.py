"""The tools package stands alone: importing every tool module pulls in no ``timely_server`` code.

Run in a fresh interpreter, so modules other tests imported cannot hide a dependency.
"""

import pkgutil
import subprocess
import sys

import timely_tools

# _child.py is the sandbox child's bootstrap: it runs (and confines its process) when imported.
NOT_IMPORTED = {"timely_tools.sandbox._child"}


def tool_modules() -> list[str]:
    found = pkgutil.walk_packages(timely_tools.__path__, prefix="timely_tools.")
    return sorted(m.name for m in found if m.name not in NOT_IMPORTED)


def test_every_tools_module_is_covered():
    modules = tool_modules()
    assert {
        "timely_tools.base",
        "timely_tools.echo",
        "timely_tools.ml.tools",
        "timely_tools.sandbox.tool",
    } <= set(modules)
    assert "timely_tools.games.moves" in modules


def test_importing_the_tools_imports_no_server_module():
    code = (
        "import importlib, sys\n"
        f"for name in {tool_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'timely_server')\n"
        "assert not bad, bad\n"
        "from timely_tools.echo import echo\n"
        "from timely_tools.base import ToolDef\n"
        "assert isinstance(echo, ToolDef)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
