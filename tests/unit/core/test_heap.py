"""timely.heap: the fixed glibc mmap threshold the CLIs set at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from timely.heap import fix_heap_threshold


def test_a_threshold_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_heap_threshold() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_go_back_to_the_system():
    # Without the fix, freeing a large tensor raises glibc's threshold, the next ones of that
    # size come from the heap, and after freeing them the process keeps their memory.
    code = """
import sys
from timely.heap import fix_heap_threshold
if sys.argv[1] == "fix":
    assert fix_heap_threshold()
import numpy as np
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = np.ones(8 << 20, dtype=np.uint8); del big  # 8 MiB: mapped, then freed
held, kept = [], []
for _ in range(64):  # 3 MiB tensors, each followed by a small one that stays
    held.append(np.ones(3 << 20, dtype=np.uint8))
    kept.append(np.ones(64 << 10, dtype=np.uint8))
del held
print(rss() >> 20)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = {}
    for mode in ("fix", "default"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        out[mode] = int(done.stdout.split()[-1])
    assert out["fix"] < out["default"] - 100, out
