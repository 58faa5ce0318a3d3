"""``timely eval``: run a suite into a resumable run directory.

The runner plans episodes from the suite (:mod:`timely_eval.plan`), skips the keys already in the
run directory, plays the rest on a backend (in-process asyncio, or Ray workers) and appends each
trajectory to ``trajectories.jsonl`` the moment it finishes. Relative budgets first need a
calibration pass, which is recorded and resumed the same way (``calibration.jsonl``). At the end
it writes ``results.json`` and ``summary.md``, recomputed from the trajectories on disk.

Kill it at any point and start it again: nothing is lost and nothing is played twice. An episode
the runner could not play at all (its task cannot be built, its policy cannot be loaded) is
written to ``errors.jsonl``, counted as failed and retried on the next start; it never stops the
other episodes. Concurrency is an ``anyio.CapacityLimiter`` (see docs/timely-eval.md for why not
asyncio-throttle).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from timely.errors import ConfigError
from timely.runrecord import (
    CALIBRATION,
    ERRORS,
    RESULTS,
    SUMMARY,
    TRAJECTORIES,
    EpisodeLog,
    append_error,
    read_manifest,
    write_run_record,
)
from timely.task import make_task
from timely.types import Trajectory
from timely_eval.calibration import calibration_summary, relative_budgets
from timely_eval.episodes import SuiteRuntime
from timely_eval.metrics import aggregate
from timely_eval.plan import EpisodeItem, fingerprint, plan_calibration, plan_eval
from timely_eval.suite import Suite, TaskEntry, check_policies, check_registered

OnResult = Callable[[EpisodeItem, Trajectory | None, str | None], None]


class Progress(Protocol):
    """What the runner reports while it works (the CLI draws rich progress bars from it)."""

    def start_phase(self, phase: str, total: int, skipped: int) -> None: ...

    def episode_done(self, phase: str, traj: Trajectory | None, error: str | None) -> None: ...


class _Quiet:
    def start_phase(self, phase: str, total: int, skipped: int) -> None:
        pass

    def episode_done(self, phase: str, traj: Trajectory | None, error: str | None) -> None:
        pass


@dataclass
class PhaseCounts:
    """Episodes of one phase in one invocation."""

    planned: int = 0
    skipped: int = 0  # already in the run directory
    done: int = 0  # played now
    failed: int = 0  # could not be played (errors.jsonl); retried on the next start
    episode_errors: int = 0  # played, but the episode ended in a policy or tool-server error


@dataclass
class RunReport:
    """What a run did and where it is."""

    run_dir: Path
    counts: dict[str, PhaseCounts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.counts.values())


class Executor(Protocol):
    """Plays items and reports each result; local asyncio or Ray."""

    async def execute(self, items: list[EpisodeItem], on_result: OnResult) -> None: ...


class LocalExecutor:
    """Plays items concurrently in this process, ``suite.concurrency`` at a time (the
    runtime's limiter)."""

    def __init__(self, runtime: SuiteRuntime) -> None:
        self.runtime = runtime

    async def execute(self, items: list[EpisodeItem], on_result: OnResult) -> None:
        """Play ``items``; ``on_result(item, trajectory or None, error or None)`` for each."""
        limiter = self.runtime.runtime.limiter  # the runtime's one concurrency limit

        async def one(item: EpisodeItem, token: object) -> None:
            traj: Trajectory | None = None
            error: str | None = None
            try:
                traj = await self.runtime.play(item)
            except Exception as exc:  # one episode's failure never cancels the others
                error = f"{type(exc).__name__}: {exc}"
            finally:
                limiter.release_on_behalf_of(token)
            on_result(item, traj, error)

        async with anyio.create_task_group() as tg:
            for item in items:  # acquiring here keeps at most `concurrency` tasks alive
                token = object()
                await limiter.acquire_on_behalf_of(token)
                tg.start_soon(one, item, token)


@contextlib.asynccontextmanager
async def open_executor(suite: Suite) -> AsyncIterator[Executor]:
    """The executor of ``suite.backend``, open for both phases of a run."""
    if suite.backend == "ray":
        from timely_eval.ray_backend import RayExecutor

        with RayExecutor(suite) as ray_executor:
            yield ray_executor
        return
    async with SuiteRuntime(suite) as runtime:
        yield LocalExecutor(runtime)


def playable_here(suite: Suite) -> tuple[Suite, list[str]]:
    """``suite`` without the tasks whose optional extra is not installed, and why each went.

    For a suite's own task list on a light install (``--suite smoke`` without the [ml] and
    [games] extras): it plays what it can. When no task is left, the suite comes back whole, so
    :func:`check_extras` fails with the install line; tasks asked for by name are never dropped
    (the caller passes only a suite's own list).
    """
    from timely.extras import MissingExtra, require_extra
    from timely.task import TASKS

    kept: list[TaskEntry] = []
    skipped: list[str] = []
    for t in suite.tasks:
        try:
            require_extra(getattr(TASKS.get(t.id), "requires_extra", None), f"task {t.id}")
        except MissingExtra as exc:
            skipped.append(str(exc))
        else:
            kept.append(t)
    if not skipped or not kept:
        return suite, []
    return suite.model_copy(update={"tasks": kept}), skipped


def check_extras(suite: Suite) -> None:
    """Fail before anything runs when a task family or the backend needs an optional extra of
    timely-machine that is not installed (the message has the ``pip install`` line).

    Raises:
        MissingExtra: naming the task or backend and the extra.
    """
    from timely.extras import require_extra
    from timely.task import TASKS

    for t in suite.tasks:
        require_extra(getattr(TASKS.get(t.id), "requires_extra", None), f"task {t.id}")
    if suite.backend == "ray":
        require_extra("ray", "the Ray backend (--backend ray)")


async def run_suite(
    suite: Suite,
    out: str | Path,
    *,
    resume: bool = True,
    progress: Progress | None = None,
) -> RunReport:
    """Run a suite into ``out`` and return what happened.

    Args:
        suite: the (selected) suite.
        out: the run directory; when it exists its episodes are kept and skipped.
        resume: False moves an existing run's records aside (``*.old-N``) and starts afresh.
        progress: receives phase starts and each finished episode.

    Raises:
        ConfigError: a task is unregistered, a task family, policy or backend needs an extra
            that is not installed (MissingExtra), a policy is mistyped (unknown backend or option),
            or ``out`` holds a run made with different episode settings (resuming would mix
            incomparable episodes).
        PolicyError: a policy's model does not exist (checked before any episode runs).
    """
    check_registered(suite)
    check_extras(suite)
    check_policies(suite)
    progress = progress or _Quiet()
    run_dir = Path(out)
    fp = fingerprint(suite)
    _prepare_dir(run_dir, fp, resume)
    write_run_record(
        run_dir,
        suite,
        seeds=[suite.seed + i for i in range(min(suite.episodes, suite.limit or suite.episodes))],
        extra={"kind": "timely-eval", "suite": suite.name, "fingerprint": fp},
    )
    report = RunReport(run_dir=run_dir)
    calib_log = EpisodeLog(run_dir / CALIBRATION)
    eval_log = EpisodeLog(run_dir / TRAJECTORIES)
    try:
        async with open_executor(suite) as executor:
            await _phase(
                "calibration", plan_calibration(suite), calib_log, executor, progress, report
            )
            items, problems = plan_eval(
                suite,
                default_budget=_default_budgets(suite),
                relative_budget=relative_budgets(suite, calib_log.records),
            )
            report.problems += problems
            await _phase("eval", items, eval_log, executor, progress, report)
    finally:
        calib_log.close()
        eval_log.close()
    report.results = write_results(
        run_dir,
        suite,
        trajectories=list(eval_log.records.values()),
        calibration=list(calib_log.records.values()),
    )
    return report


async def _phase(
    phase: str,
    items: list[EpisodeItem],
    log: EpisodeLog,
    executor: Executor,
    progress: Progress,
    report: RunReport,
) -> None:
    todo = [it for it in items if it.key not in log]
    counts = PhaseCounts(planned=len(items), skipped=len(items) - len(todo))
    report.counts[phase] = counts
    progress.start_phase(phase, len(items), counts.skipped)
    if not todo:
        return
    errors_file = log.path.parent / ERRORS

    def on_result(item: EpisodeItem, traj: Trajectory | None, error: str | None) -> None:
        if traj is not None:
            log.append(traj)
            counts.done += 1
            counts.episode_errors += traj.error is not None
        else:
            counts.failed += 1
            append_error(errors_file, {**item.model_dump(), "error": error})
        progress.episode_done(phase, traj, error)

    await executor.execute(todo, on_result)


def _prepare_dir(run_dir: Path, fp: str, resume: bool) -> None:
    logs = [run_dir / TRAJECTORIES, run_dir / CALIBRATION, run_dir / ERRORS]
    if not any(p.exists() for p in logs):
        return
    if not resume:
        for p in logs:
            if p.exists():
                n = 1
                while p.with_name(f"{p.name}.old-{n}").exists():
                    n += 1
                p.rename(p.with_name(f"{p.name}.old-{n}"))
        return
    stored = read_manifest(run_dir).get("fingerprint")
    if stored is not None and stored != fp:
        raise ConfigError(
            f"{run_dir} holds a run with different episode settings (fingerprint {stored}, "
            f"this suite {fp}: clock, split, episode options, budget protocol or calibration "
            "changed). Resuming would mix incomparable episodes: pass --no-resume to move the "
            "old records aside and start over, or choose another --out."
        )


def _default_budgets(suite: Suite) -> Callable[[TaskEntry, int], float]:
    cache: dict[tuple[str, int], float] = {}

    def default(task: TaskEntry, seed: int) -> float:
        key = (task.model_dump_json(), seed)
        if key not in cache:
            inst = make_task(
                task.id, seed=seed, split=suite.split, difficulty=task.difficulty, **task.options
            )
            cache[key] = inst.spec.default_budget_s
        return cache[key]

    return default


def write_results(
    run_dir: Path,
    suite: Suite | None = None,
    *,
    trajectories: list[Trajectory] | None = None,
    calibration: list[Trajectory] | None = None,
) -> dict[str, Any]:
    """Recompute ``results.json`` and ``summary.md`` from the run directory's trajectories.

    Args:
        run_dir: the run directory.
        suite: the suite it ran (recorded by name and fingerprint).
        trajectories: the eval records when the caller holds them (else read from disk).
        calibration: the calibration records likewise.
    """
    from timely_eval.leaderboard import Run, render_markdown, report_from_runs

    trajs = (
        trajectories
        if trajectories is not None
        else list(EpisodeLog(run_dir / TRAJECTORIES).records.values())
    )
    calib = (
        calibration
        if calibration is not None
        else list(EpisodeLog(run_dir / CALIBRATION).records.values())
    )
    results = {
        "suite": suite.name if suite else None,
        "fingerprint": fingerprint(suite) if suite else None,
        "episodes": len(trajs),
        "cells": aggregate(trajs),
        "families": aggregate(trajs, ("policy", "family", "latency", "budget")),
        "calibration": calibration_summary(calib),
    }
    (run_dir / RESULTS).write_text(json.dumps(results, indent=1, default=str) + "\n")
    run = Run(name=run_dir.name, path=run_dir, manifest=read_manifest(run_dir), trajectories=trajs)
    (run_dir / SUMMARY).write_text(render_markdown(report_from_runs([run])))
    return results
