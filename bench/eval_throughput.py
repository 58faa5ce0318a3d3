"""Benchmark: Timely-Eval throughput on the smoke suite with scripted policies, virtual time.

Prints:
- episodes/s of ``run_suite`` (planning, calibration, the JSONL log, results and summary files),
  next to an anchor measured in the same run: the same episodes played back to back through
  ``SuiteRuntime.play`` (the agent loop and the in-process tool server, nothing else) at the same
  concurrency. Ratio = runner / anchor (goal >= 0.8x: the runner adds little to the loop).
- simulated seconds per wall second = sum of episode elapsed (virtual) time / wall time of the
  runner (goal >= 1000x).

Usage: python bench/eval_throughput.py [--suite smoke] [--repeat 3] [--episodes N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import anyio

from timely.runrecord import TRAJECTORIES, EpisodeLog
from timely_eval.episodes import SuiteRuntime
from timely_eval.plan import plan_eval
from timely_eval.runner import _default_budgets, run_suite
from timely_eval.suite import Suite, load_suite, select


def scripted_only(suite: Suite, episodes: int | None) -> Suite:
    labels = [p.name for p in suite.policies if p.spec.startswith("scripted:")]
    narrowed = select(suite, policies=labels)
    if episodes:
        narrowed = narrowed.model_copy(update={"episodes": episodes})
    return narrowed


async def anchor(suite: Suite) -> tuple[int, float]:
    """Play the suite's eval items through SuiteRuntime.play only; (episodes, wall seconds)."""
    items, _ = plan_eval(suite, default_budget=_default_budgets(suite), relative_budget={})
    limiter = anyio.CapacityLimiter(suite.concurrency)
    async with SuiteRuntime(suite) as runtime:

        async def one(item) -> None:
            async with limiter:
                await runtime.play(item)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
        return len(items), time.perf_counter() - t0


async def runner(suite: Suite) -> tuple[int, float, float]:
    """Run the suite into a fresh directory; (episodes, wall seconds, simulated seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = await run_suite(suite, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        trajs = EpisodeLog(Path(tmp) / "run" / TRAJECTORIES).records.values()
        simulated = sum(t.elapsed_s for t in trajs)
        return report.counts["eval"].done, wall, simulated


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--repeat", type=int, default=3, help="Best of N runs of each.")
    parser.add_argument("--episodes", type=int, default=None, help="Episodes per cell.")
    args = parser.parse_args()
    suite = scripted_only(load_suite(args.suite), args.episodes)
    print(
        f"suite {suite.name}: {len(suite.tasks)} tasks x {len(suite.policies)} scripted policies "
        f"x {len(suite.latencies)} latencies, {suite.episodes} episodes a cell, "
        f"concurrency {suite.concurrency}, virtual clock"
    )
    await runner(suite)  # warm-up: imports, first server builds, caches
    best_anchor = best_runner = float("inf")
    simulated = 0.0
    n = 0
    for _ in range(args.repeat):
        n, wall = await anchor(suite)
        best_anchor = min(best_anchor, wall)
        n_run, wall, simulated = await runner(suite)
        assert n_run == n, (n_run, n)
        best_runner = min(best_runner, wall)
    eps_anchor, eps_runner = n / best_anchor, n / best_runner
    print(f"anchor (SuiteRuntime.play only): {eps_anchor:8.1f} episodes/s  ({n} episodes)")
    print(f"run_suite:                  {eps_runner:8.1f} episodes/s")
    print(f"ratio runner / anchor:      {eps_runner / eps_anchor:8.2f}x  (goal >= 0.8x)")
    print(
        f"simulated s / wall s:       {simulated / best_runner:8.0f}x  (goal >= 1000x; "
        f"{simulated:.0f} simulated s in {best_runner:.2f} wall s)"
    )
    # Per family: math and our game engine are pure loop; TextWorld (a Z-machine) and ML (real
    # scikit-learn fits) do real work on every call, which a virtual clock does not skip.
    print("per family (run_suite, best of 2):")
    for family in sorted({t.family for t in suite.tasks}):
        part = select(suite, tasks=[family])
        best, sim, n_fam = float("inf"), 0.0, 0
        for _ in range(2):
            n_fam, wall, sim = await runner(part)
            best = min(best, wall)
        print(
            f"  {family:6s} {n_fam:4d} episodes {n_fam / best:7.1f} episodes/s  "
            f"{sim / best:7.0f}x simulated/wall"
        )


if __name__ == "__main__":
    asyncio.run(main())
