"""Run and report directories with known contents, for the dashboard's tests.

Trajectories are built as :class:`~timely.types.Trajectory` records (so they follow the schema
the loop writes) with chosen step timings and every outcome the dashboard tells apart; reports
come from the real ``timely leaderboard`` code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from timely.runrecord import MANIFEST, TRAJECTORIES, append_trajectories
from timely.types import EndReason, Message, Step, ToolCall, ToolResult, Trajectory

# outcome -> (end reason, compliant, score, answer)
OUTCOME_FIELDS = {
    "on_time": (EndReason.ANSWERED, True, 1.0, "Answer: 42"),
    "wrong": (EndReason.ANSWERED, True, 0.0, "Answer: 41"),
    "late": (EndReason.ANSWERED, False, 1.0, "Answer: 42"),
    "cut_off": (EndReason.BUDGET_EXHAUSTED, False, 0.0, None),
    "no_answer": (EndReason.MAX_TURNS, False, 0.0, None),
    "failed": (EndReason.POLICY_ERROR, False, 0.0, None),
}


def make_steps(timings: Sequence[tuple[float, Sequence[float]]]) -> list[Step]:
    """Steps one after another: each (generation seconds, [charged seconds of each tool call])."""
    steps, t = [], 0.0
    for i, (gen, tools) in enumerate(timings):
        calls = [
            ToolCall(id=f"t{i}_{j}", name="calculator", arguments={"expression": f"{i}+{j}"})
            for j in range(len(tools))
        ]
        results = [
            ToolResult(call_id=c.id, name=c.name, content=str(i), latency_s=s, charged_s=s)
            for c, s in zip(calls, tools, strict=True)
        ]
        steps.append(
            Step(
                index=i,
                clock="virtual",
                started_at=t,
                ended_at=t + gen + sum(tools),
                gen_s=gen,
                tool_s=sum(tools),
                completion_tokens=10,
                text=f"step {i}",
                tool_calls=calls,
                tool_results=results,
            )
        )
        t += gen + sum(tools)
    return steps


def make_trajectory(
    *,
    outcome: str = "on_time",
    task: str = "math/arithmetic-v1",
    policy: str = "oracle",
    latency: str = "constant:1.0",
    budget_s: float = 10.0,
    seed: int = 0,
    timings: Sequence[tuple[float, Sequence[float]]] = ((0.5, [1.0]), (0.5, [])),
    phase: str = "eval",
) -> Trajectory:
    """One episode that ends as ``outcome`` (see :data:`OUTCOME_FIELDS`)."""
    end, compliant, score, answer = OUTCOME_FIELDS[outcome]
    steps = make_steps(timings)
    elapsed = steps[-1].ended_at if steps else 0.0
    if outcome == "cut_off":
        elapsed = budget_s
    if outcome == "late" and steps and elapsed <= budget_s:
        extra = budget_s + 0.5 - elapsed  # the answering turn runs past the budget
        steps[-1].gen_s += extra
        steps[-1].ended_at += extra
        elapsed = steps[-1].ended_at
    key = hashlib.sha1(f"{task}|{policy}|{latency}|{budget_s}|{seed}".encode()).hexdigest()[:16]
    return Trajectory(
        task_id=task,
        seed=seed,
        policy=f"scripted:{policy}",
        clock="virtual",
        budget_s=budget_s,
        overrun="late" if outcome == "late" else "hard",
        messages=[Message(role="user", content=f"Compute task {seed}.")],
        steps=steps,
        final_answer=answer,
        score=score,
        elapsed_s=elapsed,
        gen_s=sum(s.gen_s for s in steps),
        tool_s=sum(s.tool_s for s in steps),
        compliant=compliant,
        end_reason=end,
        error="PolicyError: the model server went away" if outcome == "failed" else None,
        latency=latency,
        target="42",
        metadata={
            "key": key,
            "label": policy,
            "budget_label": f"{budget_s:g}s",
            "phase": phase,
        },
    )


def mixed_trajectories() -> list[Trajectory]:
    """Twelve episodes: two policies x two latencies x the six outcomes spread over them."""
    out = []
    outcomes = list(OUTCOME_FIELDS)
    i = 0
    for policy in ("oracle", "budget-aware"):
        for latency in ("constant:0.2", "constant:3.0"):
            for seed in range(3):
                tools = [0.2, 0.2] if latency == "constant:0.2" else [3.0]
                out.append(
                    make_trajectory(
                        outcome=outcomes[i % len(outcomes)],
                        task="math/arithmetic-v1" if seed < 2 else "games/treasure-v1",
                        policy=policy,
                        latency=latency,
                        budget_s=10.0 if seed else 5.0,
                        seed=seed,
                        timings=[(0.4, tools)] * (seed + 1) + [(0.3, [])],
                    )
                )
                i += 1
    return out


def write_run(path: Path, trajectories: Sequence[Trajectory]) -> Path:
    """A run directory: trajectories.jsonl and a manifest, as ``timely eval`` leaves them."""
    path.mkdir(parents=True, exist_ok=True)
    (path / TRAJECTORIES).unlink(missing_ok=True)
    append_trajectories(path / TRAJECTORIES, trajectories)
    (path / MANIFEST).write_text(json.dumps({"schema_version": 2, "kind": "timely-eval"}))
    return path


def write_report(run: Path, out: Path, *, plots: bool = False) -> Path:
    """A report directory of ``run``: results.json by the leaderboard code, and PNG plots
    (drawn with matplotlib when ``plots``, else two tiny placeholder PNGs)."""
    from timely_eval.leaderboard import report_from_runs, write_leaderboard

    if plots:
        write_leaderboard([run], out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    report = report_from_runs([run])
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    for name in ("score_vs_latency.png", "time_breakdown.png"):
        (out / name).write_bytes(TINY_PNG)
    return out


# A valid 1x1 transparent PNG.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)
