"""Timely Machine: agents that plan under wall-clock time budgets.

The public Python API, importable from here (see docs/api.md)::

    from timely import Budget, VirtualClock, make_policy, make_task, run_episode

Every name is imported on first use, so ``import timely`` stays cheap (the command line imports
this package too) and pulls in none of the layers above the core: ``load_suite`` and
``run_suite`` come from Timely-Eval (``timely_eval``) only when they are asked for.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know it)

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "run_episode": "timely.loop",
    "EpisodeOptions": "timely.loop",
    "Budget": "timely.budget",
    "WallClock": "timely.clock",
    "VirtualClock": "timely.clock",
    "make_clock": "timely.clock",
    "SpeedProfile": "timely.clock",
    "make_policy": "timely.policies.base",
    "make_task": "timely.task",
    "open_tools": "timely.rollout",
    "Trajectory": "timely.types",
    "append_trajectories": "timely.runrecord.trajectories",
    "iter_trajectories": "timely.runrecord.trajectories",
    "read_run": "timely.runrecord.trajectories",
    "compute_reward": "timely.reward",
    "RewardConfig": "timely.reward",
    # Timely-Eval sits above the core: reached by name, never imported by it.
    "load_suite": "timely_eval.suite",
    "run_suite": "timely_eval.runner",
}

__all__ = [
    "Budget",
    "EpisodeOptions",
    "RewardConfig",
    "SpeedProfile",
    "Trajectory",
    "VirtualClock",
    "WallClock",
    "__version__",
    "append_trajectories",
    "compute_reward",
    "iter_trajectories",
    "load_suite",
    "make_clock",
    "make_policy",
    "make_task",
    "open_tools",
    "read_run",
    "run_episode",
    "run_suite",
]

if TYPE_CHECKING:
    from typing import Any

    from timely.budget import Budget
    from timely.clock import SpeedProfile, VirtualClock, WallClock, make_clock
    from timely.loop import EpisodeOptions, run_episode
    from timely.policies.base import make_policy
    from timely.reward import RewardConfig, compute_reward
    from timely.rollout import open_tools
    from timely.runrecord.trajectories import append_trajectories, iter_trajectories, read_run
    from timely.task import make_task
    from timely.types import Trajectory


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'timely' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
