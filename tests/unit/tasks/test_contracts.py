"""Every registered task family passes the task contract, including a real episode."""

import pytest

from timely.task import TASKS, task_names
from timely.testing import check_task, check_task_with_loop

# Families that need options to build (a data file: requires_options = True) are checked in
# their own test files, with data written by the test.
VERSIONED = [
    name
    for name in task_names()
    if name.rsplit("-v", 1)[-1].isdigit()
    and not getattr(TASKS.get(name), "requires_options", False)
]


@pytest.mark.parametrize("task_id", VERSIONED)
def test_static_contract(task_id):
    check_task(task_id, n_seeds=10)


@pytest.mark.parametrize("task_id", VERSIONED)
async def test_oracle_solves_within_default_budget(task_id):
    await check_task_with_loop(task_id, n_seeds=5)
