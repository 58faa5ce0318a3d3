"""The held-out evaluation of a training run, and the results page it produces.

``timely-rl`` ends with :func:`evaluate_policies`: the base model and every trained adapter
(SFT, SFT+RL, SFT+RL without the time reward) are played by Timely-Eval's runner on the tasks'
**test split** at relative budgets (each policy's own calibrated time x 0.75 / 1 / 2, the
reference protocol) and several tool latencies. The suite it ran is written next to the results
(``suite.yaml``), so ``timely eval --suite RUN/suite.yaml`` replays it. :func:`write_results`
turns the run into ``results.md`` with the per-cell table and the paper's Figure-3 view
(generated tokens and tool calls against the budget multiplier), regenerated from the
trajectories alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from timely.train.config import EvalStageConfig
from timely.types import Trajectory
from timely_eval.episodes import EpisodeLog
from timely_eval.metrics import aggregate, mean_ci, on_time_score
from timely_eval.suite import family_of

RUN = "run"
SUITE_FILE = "suite.yaml"


def eval_suite(
    policies: dict[str, dict[str, Any]], config: EvalStageConfig, *, speed: str
) -> dict[str, Any]:
    """The suite (as YAML data) that evaluates ``policies`` (label -> spec and options)."""
    families = sorted({family_of(t) for t in config.tasks})
    entries = []
    for label, p in policies.items():
        options = {k: v for k, v in p.items() if k != "spec"}
        entries.append({"spec": p["spec"], "label": label, "options": options, "speed": speed})
    return {
        "name": "timely-rl-eval",
        "description": "Base model against its trained adapters on held-out test seeds.",
        "tasks": [{"id": t, "options": dict(config.task_options.get(t, {}))} for t in config.tasks],
        "policies": entries,
        "episodes": config.seeds,
        "split": "test",
        "latencies": list(config.latencies),
        "budgets": {
            "multipliers": {f: list(config.budget_multipliers) for f in families},
            "overrun": "late",  # late answers are recorded (and count as not on time)
        },
        "clock": "virtual",
        "concurrency": 16,
    }


def evaluate_policies(
    policies: dict[str, dict[str, Any]], config: EvalStageConfig, out: str | Path, *, speed: str
) -> Path:
    """Run the held-out eval of ``policies`` into ``out`` and write ``out/results.md``.

    Args:
        policies: label -> ``{"spec": "hf:...", **options}`` (e.g. ``adapter=DIR``).
        config: tasks, test seeds per task, budget multipliers, latencies.
        out: the eval stage's directory (the Timely-Eval run goes to ``out/run``).
        speed: the speed profile charging generation on the virtual clock.

    Returns:
        The path of ``results.md``.
    """
    from timely_eval.commands import eval_command

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite_file = out / SUITE_FILE
    suite_file.write_text(yaml.safe_dump(eval_suite(policies, config, speed=speed)))
    eval_command(Console(stderr=True), suite=str(suite_file), overrides=[], out=str(out / RUN))
    return write_results(out)


def _records(run_dir: Path) -> list[Trajectory]:
    return list(EpisodeLog(run_dir / "trajectories.jsonl").records.values())


def write_results(out: str | Path, *, title: str = "Timely-RL on the embedded model") -> Path:
    """``results.md`` and ``figure3.png`` from the eval run under ``out/run``."""
    out = Path(out)
    trajs = _records(out / RUN)
    if not trajs:
        raise FileNotFoundError(f"no eval trajectories under {out / RUN}; run the eval first")
    rows = aggregate(trajs, ("policy", "family", "budget", "latency"))
    overall = aggregate(trajs, ("policy", "family", "budget"))
    figure = out / "figure3.png"
    plot_figure3(trajs, figure)
    lines = [
        f"# {title}",
        "",
        f"{len(trajs)} test-split episodes on a virtual clock. On-time score: the task score "
        "of an answer given within the budget, else 0, with its 95% interval. Budgets are "
        "multiples of each policy's own calibrated time on the same instance.",
        "",
        "## By policy, family and budget (all latencies)",
        "",
        *_table(overall, ("policy", "family", "budget")),
        "",
        "## Generated tokens and tool calls against the budget (Figure 3)",
        "",
        f"![figure 3]({figure.name})",
        "",
        "## Every cell",
        "",
        *_table(rows, ("policy", "family", "budget", "latency")),
        "",
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def _table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    head = [*keys, "n", "on-time score [95% CI]", "on-time rate", "elapsed s", "budget s"]
    head += ["tool calls", "gen tokens"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[k]) for k in keys] + [
            str(r["n"]),
            f"{r['score']:.2f} [{r['score_lo']:.2f}, {r['score_hi']:.2f}]",
            f"{r['compliance']:.0%}",
            f"{r['mean_elapsed_s']:.1f}",
            f"{r['mean_budget_s']:.1f}",
            f"{r['tool_calls']:.1f}",
            f"{r['gen_tokens']:.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _multiplier(traj: Trajectory) -> float | None:
    label = str(traj.metadata.get("budget_label", ""))
    try:
        return float(label.lstrip("x").rstrip("x"))
    except ValueError:
        return None


def plot_figure3(trajs: list[Trajectory], path: Path) -> None:
    """Generated tokens and tool calls per episode against the budget multiplier, by policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, dict[float, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        m = _multiplier(t)
        if m is not None:
            by[str(t.metadata.get("label", t.policy))][m].append(t)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    metrics = (
        ("generated tokens", lambda t: sum(s.completion_tokens for s in t.steps)),
        ("tool calls", lambda t: t.n_tool_calls),
        ("on-time score", on_time_score),
    )
    for ax, (name, fn) in zip(axes, metrics, strict=True):
        for label, cells in sorted(by.items()):
            xs = sorted(cells)
            stats = [mean_ci([float(fn(t)) for t in cells[x]]) for x in xs]
            ys = [s[0] for s in stats]
            ax.plot(xs, ys, marker="o", label=label)
            if name == "on-time score":
                ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], alpha=0.15)
        ax.set_xlabel("budget multiplier")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_policy_means(trajs: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Mean on-time score and rate per policy (for quick checks and tests)."""
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[str(t.metadata.get("label", t.policy))].append(t)
    for label, ts in groups.items():
        out[label] = {
            "score": float(np.mean([on_time_score(t) for t in ts])),
            "on_time": float(np.mean([t.compliant for t in ts])),
        }
    return out
