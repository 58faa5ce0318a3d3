"""The 'Adding a task' example in docs/timely-eval.md runs and passes the task checks."""

from __future__ import annotations

import re
from pathlib import Path

from timely.task import TASKS
from timely.testing import check_task, check_task_with_loop

DOC = Path(__file__).resolve().parents[3] / "docs" / "timely-eval.md"


async def test_the_documented_task_registers_and_passes_the_checks():
    section = DOC.read_text().split("## Adding a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
        check_task("math/sum-squares-v1", n_seeds=5)
        await check_task_with_loop("math/sum-squares-v1", n_seeds=2)
    finally:
        TASKS._items.pop("math/sum-squares-v1", None)  # keep the registry as other tests see it
        TASKS._help.pop("math/sum-squares-v1", None)
