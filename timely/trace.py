"""Readable traces of trajectories in the terminal (rich)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

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
