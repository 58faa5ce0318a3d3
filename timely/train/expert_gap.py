"""How far the cold-start expert is from the oracle: on-time score against the budget multiplier.

The expert (``scripted:timely``) must not be optimal - RL needs room to improve on it - but how
far it is should be a number, not a guess. The reference is the scripted oracle, which replays
the solution and ignores time: at ample budgets it scores full marks, at short ones it is cut
off and scores nothing. An agent that knew the future would score the best partial result that
fits; :func:`expert_gap` reports that too ("hindsight": the oracle capped at the most steps that
still answer in time, found by replaying), so the table shows both what the expert wins over the
budget-blind oracle and what it leaves on the table.

Every episode is played through the rollout engine on a virtual clock, budgets relative to the
oracle's unconstrained time on the same instance and latency (:class:`~timely.rollout.Calibrator`)::

    python -m timely.train.expert_gap --seeds 20
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from timely.budget import Budget
from timely.clock import speed_profile
from timely.policies.base import make_policy
from timely.rollout import EpisodeSpec, Runtime, time_awareness
from timely.task import make_task
from timely.train.experts import salvage
from timely.types import EndReason, Trajectory

MULTIPLIERS = (0.25, 0.5, 0.75, 1.0, 2.0)
TASKS = ("math/chain-v1", "games/treasure-v1")


@dataclass(frozen=True)
class GapRow:
    """Mean on-time scores of one (task, multiplier) cell over seeds and latencies."""

    task_id: str
    multiplier: float
    oracle: float
    expert: float
    hindsight: float
    expert_on_time: float
    episodes: int


def on_time_score(t: Trajectory) -> float:
    """The score of an episode answered within its budget, else 0."""
    return t.score if t.end_reason == EndReason.ANSWERED and t.compliant else 0.0


async def expert_gap(
    *,
    tasks: Sequence[str] = TASKS,
    multipliers: Sequence[float] = MULTIPLIERS,
    seeds: int = 20,
    latencies: Sequence[str] = ("constant:0.2", "constant:1.0"),
    time_mode: str = "push",
    speed: str = "smollm2-cpu",
    expert: str = "scripted:timely",
    expert_options: dict | None = None,
) -> list[GapRow]:
    """On-time scores of the oracle, the expert and the hindsight oracle per task and budget.

    Args:
        tasks: task ids (test split, default difficulty).
        multipliers: budgets as multiples of the oracle's unconstrained time.
        seeds: test seeds 0..seeds-1 per task.
        latencies: tool latency specs; every seed is played at each.
        time_mode: how the time is shown (push, pull, both).
        speed: the virtual clock's speed profile.
        expert: the expert policy spec.
        expert_options: its options (the data stage's ``expert_options``: safety 2.0).
    """
    options = {"safety": 2.0} if expert_options is None else dict(expert_options)
    profile = speed_profile(speed)
    rows = []
    async with Runtime(clock="virtual") as runtime:
        oracle = make_policy("scripted:oracle")
        aware = make_policy(expert, **options)
        for task_id in tasks:
            for multiplier in multipliers:
                got: dict[str, list[float]] = {"oracle": [], "expert": [], "hindsight": []}
                on_time = []
                for seed in range(seeds):
                    task = make_task(task_id, seed=seed, split="test")
                    for latency in latencies:
                        base = await runtime.calibrator.oracle_seconds(
                            task, latency, profile, time_mode
                        )
                        spec = EpisodeSpec(
                            task_id=task_id,
                            seed=seed,
                            split="test",
                            latency=latency,
                            budget=Budget(seconds=multiplier * base),
                            time=time_awareness(time_mode),
                            speed=profile,
                        )
                        plain = await runtime.play(spec, oracle, task=task)
                        mine = await runtime.play(spec, aware, task=task)
                        best = plain
                        if plain.end_reason == EndReason.BUDGET_EXHAUSTED:
                            best = await salvage(
                                plain,
                                lambda cap, s=spec, t=task: runtime.play(
                                    s, make_policy("scripted:oracle", stop_after=cap), task=t
                                ),
                            )
                        got["oracle"].append(on_time_score(plain))
                        got["expert"].append(on_time_score(mine))
                        got["hindsight"].append(on_time_score(best))
                        on_time.append(float(_answered(mine)))
                n = len(on_time)
                rows.append(
                    GapRow(
                        task_id,
                        multiplier,
                        *(sum(got[k]) / n for k in ("oracle", "expert", "hindsight")),
                        expert_on_time=sum(on_time) / n,
                        episodes=n,
                    )
                )
    return rows


def _answered(t: Trajectory) -> bool:
    return t.end_reason == EndReason.ANSWERED and t.compliant


def markdown(rows: Sequence[GapRow]) -> str:
    """The table as markdown: one row per (task, multiplier)."""
    lines = [
        "| task | budget | oracle | expert | hindsight | expert on time | episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task_id} | {r.multiplier:g}x | {r.oracle:.2f} | {r.expert:.2f} | "
            f"{r.hindsight:.2f} | {r.expert_on_time:.0%} | {r.episodes} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the expert-vs-oracle table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--time-mode", default="push", choices=("push", "pull", "both"))
    parser.add_argument("--safety", type=float, default=2.0)
    args = parser.parse_args(argv)
    rows = asyncio.run(
        expert_gap(
            seeds=args.seeds, time_mode=args.time_mode, expert_options={"safety": args.safety}
        )
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
