"""``run_python``: the paper's code-execution tool, backed by the sandbox.

The agent sends a whole program; it runs in the episode's workspace (files persist between calls,
interpreter state does not, like running ``python script.py`` repeatedly) and the tool answers
with stdout, stderr, the exit code and, on wall clocks, how long it took. On a virtual clock the
measured times are left out of the answer, so the same episode replays byte for byte, and the
program's counted trace events are its work (:func:`timely_tools.sandbox.core.work_s`), charged with
the injected latency.
"""

from __future__ import annotations

from typing import Any

from timely_tools.base import ToolContext, ToolInputError, tool
from timely_tools.sandbox.core import SandboxLimits, Workspace, run_code, work_s

WORKSPACE_KEY = "workspace"
LIMITS_KEY = "sandbox_limits"
DEFAULT_LIMITS = SandboxLimits()
MAX_CODE_CHARS = 100_000

# What run_python answers (MCP outputSchema). Open to more fields: workspace observers add their
# own (the ML tasks' `submission`, tools/ml/schemas.py).
RUN_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exit_code": {
            "type": ["integer", "null"],
            "description": "The program's status; null when a signal ended it.",
        },
        "killed": {
            "enum": ["timeout", "deadline", "cpu_limit", None],
            "description": "Why the sandbox stopped it early; null when it ended by itself.",
        },
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "signal": {"type": "string", "description": "The signal that ended it, e.g. SIGKILL."},
        "truncated": {
            "type": "array",
            "items": {"enum": ["stdout", "stderr"]},
            "description": "Streams cut at the output limit.",
        },
        "duration_s": {"type": "number", "description": "Wall seconds (wall clocks only)."},
        "cpu_s": {"type": "number", "description": "CPU seconds (wall clocks only)."},
    },
    "required": ["exit_code", "killed", "stdout", "stderr"],
}


def session_workspace(ctx: ToolContext) -> Workspace | None:
    """The session's workspace, created on first use; None for calls without a session."""
    if ctx.state is None:
        return None
    ws = ctx.state.get(WORKSPACE_KEY)
    if ws is None:
        ws = ctx.state[WORKSPACE_KEY] = Workspace.create()
    return ws


@tool(
    "run_python",
    description="Run a Python 3 program in this episode's sandboxed working directory and "
    "return its stdout, stderr and exit code (and, in real time, its duration). Files written "
    "with relative paths stay for later calls; variables do not (each call is a fresh "
    "interpreter). numpy, pandas and scikit-learn are available; there is no network, and "
    "only the working directory can be written. Print what you want to see.",
    parameters={
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "description": 'The whole program, e.g. "import pandas as pd\\n'
                "print(pd.read_csv('data/public/train.csv').shape)\".",
                "minLength": 1,
                "maxLength": MAX_CODE_CHARS,
            },
            "timeout_s": {
                "type": "number",
                "description": "Stop the program after this many seconds (capped by the "
                "sandbox limit and the time left).",
                "exclusiveMinimum": 0,
                "maximum": 3600,
            },
        },
        "required": ["code"],
        "additionalProperties": False,
    },
    title="Run Python",
    destructive=True,  # the program may overwrite or delete the workspace's files
    output_schema=RUN_OUTPUT,
)
async def run_python(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Run ``arguments["code"]`` in the session's workspace (a throwaway one without a session)."""
    code = arguments["code"]
    if not code.strip():
        raise ToolInputError("the code is empty; send a whole Python program")
    limits: SandboxLimits = (ctx.state or {}).get(LIMITS_KEY) or DEFAULT_LIMITS
    if "timeout_s" in arguments:
        limits = limits.model_copy(
            update={"timeout_s": min(limits.timeout_s, float(arguments["timeout_s"]))}
        )
    ws = session_workspace(ctx)
    scratch = ws is None
    if ws is None:
        ws = Workspace.create()
    try:
        async with ws.lock:
            counted = ctx.clock == "virtual"  # counting slows the code; wall clocks measure time
            result = await run_code(
                code, ws.path, limits, deadline_s=ctx.deadline_s, count_events=counted
            )
            if counted:
                ctx.work.add(work_s(result, limits))
            ws.runs += 1
            out = result.public(timings=ctx.clock == "wall")
            for observer in ws.observers:
                out.update(observer(ws) or {})
    finally:
        if scratch:
            ws.close()
    return out
