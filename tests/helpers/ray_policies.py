"""Policies for the Ray backend's tests: one that logs each construction, one that kills its
process.

Both play the scripted oracle, so their episodes are ordinary ones. Ray worker processes do not
run the test module, so :func:`register` is also their ``worker_process_setup_hook``
(``tests.helpers.ray_policies.register``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from timely.policies.base import POLICY_BACKENDS, Policy
from timely.policies.scripted import make_scripted

COUNTING = "test-count"
DYING = "test-die"

_calls = 0  # generate calls in this process (DyingOracle dies at one of them)


def make_counting(name: str = "oracle", *, log: str) -> Policy:
    """A scripted policy that appends this process's pid to ``log`` each time it is built."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    return make_scripted(name)


class DyingOracle:
    """The scripted oracle, except that the ``at``-th generate call of a process ends the process
    with ``os._exit(1)``, as a killed worker would.

    Args:
        at: which call of the process dies (1 = the first).
        marker: when set, only the process that creates this file dies: the first death of the
            whole run, so the retry succeeds. None: every process dies at its ``at``-th call.
    """

    name = "test:die"

    def __init__(self, at: int = 1, marker: str | None = None, inner: Any = None) -> None:
        self.at, self.marker = at, marker
        self.inner = inner if inner is not None else make_scripted("oracle")

    def bind(self, task: Any) -> DyingOracle:
        return DyingOracle(self.at, self.marker, self.inner.bind(task))

    async def generate(self, messages, tools, *, deadline):
        global _calls
        _calls += 1
        if _calls == self.at and self._claim():
            os._exit(1)
        return await self.inner.generate(messages, tools, deadline=deadline)

    def _claim(self) -> bool:
        if self.marker is None:
            return True
        try:
            Path(self.marker).open("x").close()  # "x": exactly one process creates it
        except FileExistsError:
            return False
        return True


def make_dying(name: str = "oracle", *, at: int = 1, marker: str | None = None) -> Policy:
    return DyingOracle(at, marker)


def register() -> None:
    """Register both backends in this process (idempotent)."""
    if COUNTING not in POLICY_BACKENDS:
        POLICY_BACKENDS.add(COUNTING, make_counting, help="test: logs each construction")
    if DYING not in POLICY_BACKENDS:
        POLICY_BACKENDS.add(DYING, make_dying, help="test: kills its process once")
