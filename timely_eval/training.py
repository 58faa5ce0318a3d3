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

from timely.runrecord import TRAJECTORIES, read_run
from timely.train.config import EvalStageConfig
from timely.types import Trajectory
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
        "tasks": [
            _task_entry(t, config.task_options.get(t, {}), config.task_seeds.get(t))
            for t in config.tasks
        ],
        "policies": entries,
        "episodes": config.seeds,
        "split": "test",
        "latencies": list(config.latencies),
        "budgets": {
            "multipliers": {f: list(config.budget_multipliers) for f in families},
            "overrun": "late",  # late answers are recorded (and count as not on time)
        },
        "clock": "virtual",
        "episode": {"max_turns": config.max_turns},
        "concurrency": 16,
    }


def _task_entry(task_id: str, options: dict[str, Any], seeds: int | None) -> dict[str, Any]:
    """A suite task entry: ``difficulty`` is the entry's own field, the rest its options."""
    rest = {k: v for k, v in options.items() if k != "difficulty"}
    entry: dict[str, Any] = {"id": task_id, "options": rest}
    if "difficulty" in options:
        entry["difficulty"] = options["difficulty"]
    if seeds is not None:
        entry["episodes"] = seeds
    return entry


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


def write_results(out: str | Path, *, title: str = "Timely-RL on the embedded model") -> Path:
    """``results.md`` and ``figure3.png`` from the eval run under ``out/run``."""
    out = Path(out)
    trajs = read_run(out / RUN) if (out / RUN / TRAJECTORIES).is_file() else []
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
        "## Targets",
        "",
        *_targets_table(trajs),
        "",
        *_training_section(out.parent),
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


def _by_label_and_multiplier(trajs: list[Trajectory]) -> dict[str, dict[float, list[Trajectory]]]:
    by: dict[str, dict[float, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        m = _multiplier(t)
        if m is not None:
            by[str(t.metadata.get("label", t.policy))][m].append(t)
    return by


def target_checks(trajs: list[Trajectory]) -> list[tuple[str, str, bool]]:
    """The issue's targets, measured: ``(target, what was measured, met)``; a target whose
    policies were not evaluated is left out."""
    by = _by_label_and_multiplier(trajs)

    def rate(label: str, keep: Any) -> float:
        ts = [t for m, cell in by.get(label, {}).items() if keep(m) for t in cell]
        return float(np.mean([t.compliant for t in ts])) if ts else float("nan")

    def score(label: str) -> float:
        ts = [t for cell in by.get(label, {}).values() for t in cell]
        return float(np.mean([on_time_score(t) for t in ts])) if ts else float("nan")

    checks: list[tuple[str, str, bool]] = []
    if "rl" in by:
        high, low = rate("rl", lambda m: m >= 1.0), rate("rl", lambda m: m == 0.75)
        checks.append(("RL on-time rate >= 95% at budgets >= 1x", f"{high:.0%}", high >= 0.95))
        checks.append(("RL on-time rate >= 75% at 0.75x", f"{low:.0%}", low >= 0.75))
    if {"rl", "sft", "base"} <= by.keys():
        rl, sft, base = score("rl"), score("sft"), score("base")
        checks.append(
            (
                "on-time score RL > SFT > base",
                f"{rl:.3f} / {sft:.3f} / {base:.3f}",
                rl > sft > base,
            )
        )
    if {"rl", "rl-notime"} <= by.keys():
        a, b = rate("rl", lambda m: m == 0.75), rate("rl-notime", lambda m: m == 0.75)
        checks.append(
            (
                "RL beats RL without the time reward on on-time rate at 0.75x",
                f"{a:.0%} vs {b:.0%}",
                a > b,
            )
        )
    if "rl" in by and len(by["rl"]) > 1:
        cells = by["rl"]
        lo, hi = min(cells), max(cells)

        def mean(m: float, fn: Any) -> float:
            return float(np.mean([fn(t) for t in cells[m]]))

        tokens = [mean(m, lambda t: sum(s.completion_tokens for s in t.steps)) for m in (lo, hi)]
        calls = [mean(m, lambda t: t.n_tool_calls) for m in (lo, hi)]
        grows = tokens[1] > tokens[0] or calls[1] > calls[0]
        checks.append(
            (
                f"RL spends more with more time ({lo:g}x -> {hi:g}x)",
                f"tokens {tokens[0]:.0f} -> {tokens[1]:.0f}, tool calls {calls[0]:.2f} -> "
                f"{calls[1]:.2f}",
                grows,
            )
        )
    return checks


def _targets_table(trajs: list[Trajectory]) -> list[str]:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for target, measured, met in target_checks(trajs):
        rows.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    return float("nan") if value is None else float(value)


def _training_section(root: Path) -> list[str]:
    """What the training stages did, from their ``metrics.jsonl`` (empty without them)."""
    lines: list[str] = []
    sft = _read_jsonl(root / "sft" / "metrics.jsonl")
    if sft:
        seconds = sum(float(m.get("seconds", 0.0)) for m in sft)
        tokens = sum(int(m.get("tokens", 0)) for m in sft)
        lines.append(
            f"- **SFT**: {len(sft)} steps, {tokens:,} tokens in {seconds / 60:.1f} min "
            f"({1000 * seconds / max(tokens, 1):.1f} ms a token), loss {sft[0]['loss']:.3f} -> "
            f"{sft[-1]['loss']:.3f}, peak RSS {max(m.get('rss_mb', 0) for m in sft) / 1024:.1f} GB."
        )
    for stage in ("rl", "rl-notime"):
        rl = _read_jsonl(root / stage / "metrics.jsonl")
        if not rl:
            continue
        rollout = sum(float(m.get("rollout_s", 0.0)) for m in rl)
        update = sum(float(m.get("update_s", 0.0)) for m in rl)
        rewards = " ".join(f"{_num(m, 'reward_mean'):.2f}" for m in rl)
        on_time = " ".join(f"{_num(m, 'on_time_rate'):.2f}" for m in rl)
        episodes = sum(int(m.get("episodes", 0)) for m in rl)
        gen_tokens = sum(float(m.get("completion_tokens", 0.0)) * m.get("episodes", 0) for m in rl)
        ratio = max(float(m.get("ratio_dev") or 0.0) for m in rl)
        share = rollout / max(rollout + update, 1e-9)
        lines.append(
            f"- **{stage}**: {len(rl)} batches in {(rollout + update) / 60:.1f} min "
            f"({share:.0%} rollouts, {1 - share:.0%} updates; rollouts "
            f"{episodes / max(rollout, 1e-9):.3f} episodes/s, "
            f"{gen_tokens / max(rollout, 1e-9):.1f} generated tokens/s); "
            f"reward by batch {rewards}; "
            f"on-time rate by batch {on_time}; max |ratio - 1| at the first update {ratio:.1e}."
        )
    if not lines:
        return []
    return ["## Training", "", *lines, ""]


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
