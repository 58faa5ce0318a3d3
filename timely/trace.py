"""Readable traces of trajectories in the terminal (rich), and picking which to show.

:class:`TraceFilter` is what ``timely show RUN --task … --outcome …`` narrows a run by; the
outcome of an episode is the run record's (:func:`timely.runrecord.outcome`), the vocabulary the
dashboard uses too, so a filter means the same in the terminal and on the page.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from timely.errors import ConfigError
from timely.runrecord import outcome, parse_outcome, read_run
from timely.types import Trajectory


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trace_table(traj: Trajectory) -> Table:
    """One row per model turn: when it started, generation and tool time, what happened."""
    table = Table(
        title=f"{traj.task_id} seed={traj.seed} · {traj.policy} · {traj.clock} clock · "
        f"budget {traj.budget_s:g}s · latency {traj.latency or '-'}",
        title_justify="left",
        expand=False,
    )
    table.add_column("turn", justify="right")
    table.add_column("t start", justify="right")
    table.add_column("gen s", justify="right")
    table.add_column("tool s", justify="right")
    table.add_column("tokens in/out", justify="right")
    table.add_column("model said → tool results", overflow="fold")
    for step in traj.steps:
        lines = [_short(step.text) or "(no text)"]
        for call, result in zip(step.tool_calls, step.tool_results, strict=False):
            args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
            mark = "✗" if result.error else "→"
            lines.append(f"  {call.name}({_short(args, 80)}) {mark} {_short(result.content, 80)}")
        if step.malformed_calls:
            lines.append(f"  {step.malformed_calls} malformed tool call(s)")
        if step.finish_reason == "deadline":
            lines.append("  cut off at the deadline")
        table.add_row(
            str(step.index),
            f"{step.started_at:.2f}",
            f"{step.gen_s:.2f}",
            f"{step.tool_s:.2f}",
            f"{step.prompt_tokens}/{step.completion_tokens}",
            "\n".join(lines),
        )
    return table


def outcome_line(traj: Trajectory) -> Text:
    style = "green" if traj.compliant and traj.score >= 1 else "yellow" if traj.compliant else "red"
    answer = _short(traj.final_answer or "-", 60)
    text = Text(
        f"{traj.end_reason.value}: answer {answer!r} · score {traj.score:.2f} · "
        f"{'on time' if traj.compliant else 'NOT on time'} · elapsed {traj.elapsed_s:.2f}s "
        f"of {traj.budget_s:g}s (gen {traj.gen_s:.2f}s, tools {traj.tool_s:.2f}s) · "
        f"reward {traj.reward:.3f}",
        style=style,
    )
    if traj.started_at_utc is not None:  # when it ran, to find it in server and model logs
        text.append(f" · started {traj.started_at_utc.isoformat(timespec='milliseconds')}")
    if traj.error:
        text.append(f"\nerror: {traj.error}", style="red")
    return text


def print_trace(traj: Trajectory, console: Console | None = None) -> None:
    console = console or Console()
    console.print(trace_table(traj))
    console.print(outcome_line(traj))


def summary_table(trajectories: Iterable[Trajectory]) -> Table:
    table = Table(title="episodes", title_justify="left")
    for col in (
        "seed",
        "end",
        "score",
        "on time",
        "elapsed s",
        "gen s",
        "tool s",
        "turns",
        "tool calls",
        "reward",
    ):
        table.add_column(col, justify="right")
    for t in trajectories:
        table.add_row(
            str(t.seed),
            t.end_reason.value,
            f"{t.score:.2f}",
            "yes" if t.compliant else "no",
            f"{t.elapsed_s:.2f}",
            f"{t.gen_s:.2f}",
            f"{t.tool_s:.2f}",
            str(len(t.steps)),
            str(t.n_tool_calls),
            f"{t.reward:.3f}",
        )
    return table


def live_line(seed: int, event: Any) -> str | None:
    """One line of a live trace for a step event (None for events not worth a line)."""
    head = f"[dim]seed {seed} · {event.at:7.2f}s[/dim]"
    kind = event.type
    if kind == "episode_started":
        return f"{head} start · budget {event.budget_s:g}s · tools {', '.join(event.tools)}"
    if kind == "generation_finished":
        calls = ", ".join(c.name for c in event.tool_calls)
        said = _short(event.text, 70).replace("[", "\\[") or "(no text)"
        return (
            f"{head} turn {event.turn}: {event.completion_tokens} tok in {event.gen_s:.2f}s"
            f" ({event.finish_reason}) → {calls or said}"
        )
    if kind == "tool_result":
        r = event.result
        status = f"[red]{r.error}[/red]" if r.error else "ok"
        fault = f" fault={r.fault}" if r.fault else ""
        return f"{head}   {r.name} {status} in {event.tool_s:.2f}s{fault}"
    if kind == "episode_ended":
        verdict = "[red]cut off[/red]" if event.cut_off else str(event.end_reason)
        return (
            f"{head} {verdict} · score {event.score:.2f} · "
            f"{'on time' if event.compliant else 'NOT on time'} · reward {event.reward:.3f}"
        )
    return None


# ---- picking episodes ------------------------------------------------------------------------


def _label(traj: Trajectory) -> str:
    return str(traj.metadata.get("label") or traj.policy)


def _budget_label(traj: Trajectory) -> str:
    return str(traj.metadata.get("budget_label") or f"{traj.budget_s:g}s")


def _seconds(text: str) -> float | None:
    try:
        return float(text.removesuffix("s"))
    except ValueError:
        return None


def _split(values: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or () for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class TraceFilter:
    """Which episodes of a run to show; an empty field lets everything through.

    Values within a field are alternatives (any may match), fields must all match.

    Attributes:
        tasks: task ids, globs (``math/*``), families (``math``) or unversioned ids
            (``math/arithmetic`` matches ``math/arithmetic-v1``).
        policies: suite labels or policy specs, or globs of them; a spec's name alone
            (``oracle`` for ``scripted:oracle``) matches too.
        seeds: episode seeds.
        latencies: latency specs (``constant:0.2``), globs, or seconds of a constant latency
            (``0.2`` or ``0.2s``).
        budgets: budget labels as the leaderboard shows them (``30s``, ``1x``) or seconds.
        outcomes: names in :data:`~timely.runrecord.OUTCOMES` (or ``ok``, ``cut-off``…).
    """

    tasks: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    latencies: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        tasks: Iterable[str] | None = None,
        policies: Iterable[str] | None = None,
        seeds: Iterable[int] | None = None,
        latencies: Iterable[str] | None = None,
        budgets: Iterable[str] | None = None,
        outcomes: Iterable[str] | None = None,
    ) -> TraceFilter:
        """A filter from repeated (or comma-separated) command-line values.

        Raises:
            ConfigError: an outcome is not one of :data:`~timely.runrecord.OUTCOMES`.
        """
        return cls(
            tasks=_split(tasks),
            policies=_split(policies),
            seeds=tuple(seeds or ()),
            latencies=_split(latencies),
            budgets=_split(budgets),
            outcomes=tuple(parse_outcome(raw).value for raw in _split(outcomes)),
        )

    def __bool__(self) -> bool:
        return any(
            (self.tasks, self.policies, self.seeds, self.latencies, self.budgets, self.outcomes)
        )

    def matches(self, traj: Trajectory) -> bool:
        """Whether ``traj`` passes every field of the filter."""
        return (
            (not self.tasks or any(_task_matches(traj.task_id, t) for t in self.tasks))
            and (not self.policies or any(_policy_matches(traj, p) for p in self.policies))
            and (not self.seeds or traj.seed in self.seeds)
            and (
                not self.latencies or any(_latency_matches(traj.latency, x) for x in self.latencies)
            )
            and (not self.budgets or any(_budget_matches(traj, b) for b in self.budgets))
            and (not self.outcomes or outcome(traj) in self.outcomes)
        )

    def describe(self) -> str:
        parts = [
            f"{name} {', '.join(map(str, values))}"
            for name, values in (
                ("task", self.tasks),
                ("policy", self.policies),
                ("seed", self.seeds),
                ("latency", self.latencies),
                ("budget", self.budgets),
                ("outcome", self.outcomes),
            )
            if values
        ]
        return " · ".join(parts) or "no filter"


def _task_matches(task_id: str, pattern: str) -> bool:
    if "/" not in pattern and not any(c in pattern for c in "*?["):
        return task_id.split("/", 1)[0] == pattern  # a family
    base, _, version = task_id.rpartition("-v")
    unversioned = base if version.isdigit() else task_id
    return fnmatch.fnmatchcase(task_id, pattern) or unversioned == pattern


def _policy_matches(traj: Trajectory, pattern: str) -> bool:
    names = {_label(traj), traj.policy}
    names |= {n.partition(":")[2] for n in names if ":" in n}  # `oracle` for `scripted:oracle`
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def _latency_matches(spec: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(spec, pattern):
        return True
    seconds = _seconds(pattern)
    kind, _, arg = spec.partition(":")
    return seconds is not None and kind == "constant" and _seconds(arg) == seconds


def _budget_matches(traj: Trajectory, pattern: str) -> bool:
    if fnmatch.fnmatchcase(_budget_label(traj), pattern):
        return True
    seconds = _seconds(pattern)
    return seconds is not None and abs(traj.budget_s - seconds) < 1e-9


def what_is_there(trajs: Sequence[Trajectory]) -> str:
    """The values a run holds, for a filter that matched nothing."""

    def values(items: Iterable[Any]) -> str:
        vals = sorted({str(v) for v in items})
        return ", ".join(vals[:12]) + (f" (+{len(vals) - 12} more)" if len(vals) > 12 else "")

    seeds = sorted({t.seed for t in trajs})
    return (
        f"tasks: {values(t.task_id for t in trajs)}; policies: {values(map(_label, trajs))}; "
        f"seeds: {seeds[0]}..{seeds[-1]}; latencies: {values(t.latency for t in trajs)}; "
        f"budgets: {values(map(_budget_label, trajs))}; outcomes: {values(map(outcome, trajs))}"
        if trajs
        else "no episodes"
    )


def episode_table(trajectories: Iterable[Trajectory]) -> Table:
    """One row per episode with what a filter picks on: task, policy, seed, cell and outcome."""
    table = Table(title="episodes", title_justify="left")
    for col in ("task", "policy", "seed", "latency", "budget", "outcome", "score", "elapsed s"):
        table.add_column(col, justify="left" if col in ("task", "policy", "outcome") else "right")
    for t in trajectories:
        table.add_row(
            t.task_id,
            _label(t),
            str(t.seed) + (f"#{t.sample}" if t.sample else ""),
            t.latency or "-",
            _budget_label(t),
            outcome(t),
            f"{t.score:.2f}",
            f"{t.elapsed_s:.2f}",
        )
    return table


def show_run(
    path: str | Path,
    trace_filter: TraceFilter,
    console: Console,
    *,
    limit: int | None = None,
    as_list: bool = False,
) -> int:
    """Print the traces (or, with ``as_list``, a table) of a run's matching episodes.

    Returns:
        How many episodes matched.

    Raises:
        ConfigError: nothing matched (the message lists what the run holds).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    trajs = read_run(path, calibration=True)  # show what the file holds
    picked = sorted(
        (t for t in trajs if trace_filter.matches(t)),
        key=lambda t: (t.task_id, _label(t), t.latency, t.budget_s, t.seed, t.sample),
    )
    if not picked:
        raise ConfigError(
            f"no episode of {path} matches {trace_filter.describe()} ({len(trajs)} episodes; "
            f"{what_is_there(trajs)})"
        )
    shown = picked[:limit] if limit else picked
    if as_list:
        console.print(episode_table(shown))
    else:
        for traj in shown:
            print_trace(traj, console)
    if trace_filter or len(shown) < len(picked):
        more = f"; showing {len(shown)} (--limit)" if len(shown) < len(picked) else ""
        console.print(
            f"{len(picked)} of {len(trajs)} episodes match {trace_filter.describe()}{more}"
        )
    return len(picked)
