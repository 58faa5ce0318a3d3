"""Lazy registry entries resolved from many threads at once (episodes are built in threads)."""

from __future__ import annotations

import subprocess
import sys


def test_concurrent_first_lookups_neither_deadlock_nor_miss():
    # A fresh interpreter, so nothing is imported yet: 16 threads ask for different task
    # families at the same moment, the way a suite's first episodes do.
    code = """
import threading
from timely.task import make_task
ids = ["math/arithmetic-v1", "math/multistep-v1", "math/chain-v1", "games/treasure-v1"] * 4
errors, barrier = [], threading.Barrier(len(ids))
def build(task_id):
    barrier.wait()
    try:
        make_task(task_id, seed=0)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=build, args=(t,)) for t in ids]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
print("ok")
"""
    for _ in range(3):
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0 and "ok" in res.stdout, res.stderr
