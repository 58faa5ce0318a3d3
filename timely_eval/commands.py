"""What ``timely eval`` and ``timely leaderboard`` do, with their terminal output (rich).

``timely/cli.py`` only parses flags and calls :func:`eval_command` / :func:`leaderboard_command`;
the runner and the leaderboard stay free of terminal concerns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from timely.errors import ConfigError
from timely.progress import Bar, ProgressDisplay
from timely.runrecord import ERRORS, TRAJECTORIES
from timely.types import Trajectory
from timely_eval.leaderboard import (
    Run,
    load_run,
    overview_columns,
    report_from_runs,
    write_leaderboard,
)
from timely_eval.runner import RunReport, check_extras, playable_here, run_suite
from timely_eval.suite import check_policies, load_suite, select


class RichProgress:
    """One progress bar per phase, with done / skipped / failed counts."""

    def __init__(self, console: Console) -> None:
        self.progress = ProgressDisplay(console)
        self._tasks: dict[str, Bar] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def __enter__(self) -> RichProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _text(self, phase: str) -> str:
        c = self._counts[phase]
        return (
            f"done {c['done']} · skipped {c['skipped']} · failed {c['failed']} · "
            f"episode errors {c['errors']}"
        )

    def start_phase(self, phase: str, total: int, skipped: int) -> None:
        self._counts[phase] = {"done": 0, "skipped": skipped, "failed": 0, "errors": 0}
        bar = self.progress.bar(phase, total, done=skipped, unit="episodes")
        self._tasks[phase] = bar
        bar.update(skipped, note=self._text(phase) if total else "nothing to do")

    def episode_done(self, phase: str, traj: Trajectory | None, error: str | None) -> None:
        c = self._counts[phase]
        if traj is None:
            c["failed"] += 1
        else:
            c["done"] += 1
            c["errors"] += traj.error is not None
        self._tasks[phase].advance(note=self._text(phase))


# Columns a narrow terminal keeps (the rest are in summary.md and the leaderboard).
_NARROW_COLUMNS = ("Policy", "Score [95% CI]", "Pass@k", "On time", "Mean s", "n")


def summary_tables(run_dir: Path | Run, width: int = 200) -> list[Table]:
    """Rich tables of a run: one overview per task family.

    Args:
        run_dir: the run directory, or the run already loaded.
        width: terminal columns; below ~150 only the score, latency and compliance columns stay.
    """
    report = report_from_runs([run_dir])
    tables = []
    for fam in report["families"]:
        header, rows = overview_columns(fam)
        if width < 150:
            keep = [i for i, h in enumerate(header) if h in _NARROW_COLUMNS or h.startswith("@")]
            header = [header[i] for i in keep]
            rows = [[row[i] for i in keep] for row in rows]
        table = Table(
            title=f"{fam['family']} · {len(fam['tasks'])} task(s) · budgets "
            f"{', '.join(fam['budgets'])}",
            title_justify="left",
        )
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def eval_command(
    console: Console,
    *,
    suite: str,
    overrides: list[str],
    tasks: list[str] | None = None,
    policies: list[str] | None = None,
    policy_options: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
    out: str | None = None,
    resume: bool = True,
    plots: bool = True,
) -> RunReport:
    """Load, narrow and run a suite with progress bars, then print the summary.

    Args:
        console: where to print.
        suite: suite name or YAML path.
        overrides: ``key=value`` suite overrides (flags already turned into overrides).
        tasks: ``--tasks`` filters. Without them, the suite's tasks whose optional extra is
            not installed are skipped with a note (tasks asked for by name fail instead).
        policies: ``--policy`` names (see :func:`timely_eval.suite.select`).
        policy_options: options for policies added on the command line.
        task_options: ``-T`` options of every selected task.
        out: run directory (default ``runs/eval-SUITE``).
        resume: keep and skip what ``out`` already holds.
        plots: also draw the leaderboard plots into ``out/plots``.
    """
    loaded = select(
        load_suite(suite, overrides),
        tasks=_split(tasks),
        policies=policies or None,
        policy_options=policy_options,
        task_options=task_options,
    )
    check_policies(loaded)  # before any output: a typo is the only thing printed
    skipped: list[str] = []
    if not tasks:  # the suite's own tasks: play those this install has the extras for
        loaded, skipped = playable_here(loaded)
    check_extras(loaded)  # what is left, or what was asked for by name, needs its extras
    for why in skipped:
        console.print(f"[yellow]skipping:[/] {escape(why)}", soft_wrap=True)
    run_dir = Path(out or f"runs/eval-{loaded.name}")
    labels = ", ".join(p.name for p in loaded.policies)
    console.print(
        f"[bold]timely eval[/] {loaded.name}: {len(loaded.tasks)} task(s) × "
        f"{len(loaded.policies)} policies ({labels}) × {len(loaded.latencies)} latencies · "
        + (f"{loaded.limit} seed(s) per cell at most · " if loaded.limit else "")
        + (f"{loaded.epochs} epochs · " if loaded.epochs > 1 else "")
        + f"{loaded.clock} clock · {loaded.backend} backend → {run_dir}"
    )
    if any(p.spec.startswith("hf:") for p in loaded.policies):
        console.print("loading the local model (the first load takes ~15 s)…")
    with RichProgress(console) as progress:
        report = asyncio.run(run_suite(loaded, run_dir, resume=resume, progress=progress))
    run = load_run(run_dir)  # read once for the tables and the plots
    for table in summary_tables(run, console.width):
        console.print(table)
    if plots and report.results.get("episodes"):
        write_leaderboard([run], run_dir / "plots")
    for problem in report.problems[:10]:
        console.print(f"[yellow]not planned:[/] {problem}")
    if report.failed:
        console.print(
            f"[red]{report.failed} episode(s) could not be played[/] (see "
            f"{run_dir / ERRORS}); run the same command again to retry them."
        )
    console.print(
        f"wrote {run_dir / TRAJECTORIES}, results.json, summary.md" + (", plots/" if plots else "")
    )
    return report


def leaderboard_command(console: Console, runs: list[Path], out: Path) -> dict[str, Path]:
    """Write the leaderboard of ``runs`` into ``out`` and say where it is."""
    if not runs:
        raise ConfigError("give at least one run directory: timely leaderboard runs/A runs/B")
    files = write_leaderboard(runs, out)
    console.print(
        f"wrote {out / 'leaderboard.md'}, leaderboard.html, results.json and "
        f"{sum(name.endswith('.png') for name in files)} plots"
    )
    return files


def _split(values: list[str] | None) -> list[str] | None:
    """Accept repeated flags and comma-separated lists alike."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
