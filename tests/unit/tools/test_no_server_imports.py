"""The tools package stands on its own: importing every tool module pulls in no ``server`` code.

Run in a fresh interpreter, so modules other tests imported cannot hide a dependency.
"""

import pkgutil
import subprocess
import sys

import tools

# _child.py is the sandbox child's bootstrap: it runs (and confines its process) when imported.
NOT_IMPORTED = {"tools.sandbox._child"}


def tool_modules() -> list[str]:
    found = pkgutil.walk_packages(tools.__path__, prefix="tools.")
    return sorted(m.name for m in found if m.name not in NOT_IMPORTED)


def test_every_tools_module_is_covered():
    modules = tool_modules()
    assert {"tools.base", "tools.echo", "tools.ml.tools", "tools.sandbox.tool"} <= set(modules)
    assert "tools.games.moves" in modules


def test_importing_the_tools_imports_no_server_module():
    code = (
        "import importlib, sys\n"
        f"for name in {tool_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'server' or m.startswith('server.'))\n"
        "assert not bad, bad\n"
        "from tools.echo import echo\n"
        "from tools.base import ToolDef\n"
        "assert isinstance(echo, ToolDef)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
