"""The held-out evaluation of a training run, and the results page it produces.

``timely-rl`` ends with :func:`evaluate_policies`: the base model, every trained adapter (SFT,
SFT+RL, SFT+RL without the time reward; ``EvalStageConfig.adapters`` points rows at other
adapter directories) and the budget-tracker prompt around base and SFT (``tracker:<spec>``, the
training-free baseline) are played by Timely-Eval's runner on the tasks' **test split** - issue
20's protocol: budgets at 0.5 / 0.75 / 1 / 2 x one shared reference (the scripted oracle's time
on the same instance and latency, with the eval prompt) and x each policy's own time beside it,
two tool latencies, partial-credit math and treasure. The suite it ran is written next to the
results (``suite.yaml``), so ``timely eval --suite RUN/suite.yaml`` replays it.
:func:`write_results` turns the run into ``results.md`` (:mod:`timely_eval.training_report`:
points, anytime AUC, Figure-3 rank correlations, paired differences, the Targets table) and
``figure3.png``, regenerated from the trajectories alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from timely.errors import ConfigError
from timely.runrecord import TRAJECTORIES, read_run
from timely.train.config import EvalStageConfig
from timely.types import Trajectory
from timely_eval import training_report as report
from timely_eval.metrics import on_time_score
from timely_eval.suite import family_of

RUN = "run"
TRACKER = "tracker:"
SUITE_FILE = "suite.yaml"


def eval_policies(
    policies: dict[str, dict[str, Any]], config: EvalStageConfig
) -> dict[str, dict[str, Any]]:
    """The rows to play: ``policies`` with ``config.adapters`` applied and the tracker rows.

    Args:
        policies: label -> ``{"spec": ..., **options}`` (the base and the adapters found).
        config: ``adapters`` (label -> adapter directory, None drops the row; a new label is
            the base row's spec with that adapter) and ``tracker_rows``.
    """
    rows = {label: dict(p) for label, p in policies.items()}
    base = rows.get("base")
    for label, adapter in config.adapters.items():
        if adapter is None:
            rows.pop(label, None)
        elif label in rows:
            rows[label]["adapter"] = adapter
        elif base is not None:
            rows[label] = {**base, "adapter": adapter}
        else:
            raise ConfigError(f"eval.adapters names {label!r} but there is no base row to adapt")
    for label in config.tracker_rows:
        if label in rows and not rows[label]["spec"].startswith(TRACKER):
            rows[f"{label}+tracker"] = {**rows[label], "spec": TRACKER + rows[label]["spec"]}
    return rows


def eval_suite(
    policies: dict[str, dict[str, Any]], config: EvalStageConfig, *, speed: str
) -> dict[str, Any]:
    """The suite (as YAML data) that evaluates ``policies`` (label -> spec and options, as
    :func:`eval_policies` returns them) under ``config``'s protocol."""
    families = sorted({family_of(t) for t in config.tasks})
    entries = []
    for label, p in policies.items():
        options = {k: v for k, v in p.items() if k != "spec"}
        entries.append({"spec": p["spec"], "label": label, "options": options, "speed": speed})
    return {
        "name": "timely-rl-eval",
        "description": "Base model, trained adapters and the budget-tracker prompt on held-out "
        "test seeds (issue 20's protocol).",
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
            "reference": config.reference,
            # The shared reference is charged like the rows it budgets.
            "reference_policy": f"scripted:oracle@{speed}",
        },
        # The reference (and each policy's own calibration) is timed with the eval prompt.
        "calibration": {"time": "default"},
        "clock": "virtual",
        "episode": {"max_turns": config.max_turns, "speed": speed, "time": config.time},
        "concurrency": config.concurrency,
        **(
            {
                "backend": "ray",
                "ray": {"num_cpus": config.workers, "workers": config.workers},
            }
            if config.workers > 1
            else {}
        ),
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
        policies: label -> ``{"spec": "hf:...", **options}`` (e.g. ``adapter=DIR``); the
            adapters and tracker rows of ``config`` are added (:func:`eval_policies`).
        config: tasks, test seeds per task, budget multipliers and protocol, latencies.
        out: the eval stage's directory (the Timely-Eval run goes to ``out/run``).
        speed: the speed profile charging generation on the virtual clock.

    Returns:
        The path of ``results.md``.
    """
    from timely_eval.commands import eval_command

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suite_file = out / SUITE_FILE
    rows = eval_policies(policies, config)
    suite_file.write_text(yaml.safe_dump(eval_suite(rows, config, speed=speed)))
    eval_command(Console(stderr=True), suite=str(suite_file), overrides=[], out=str(out / RUN))
    return write_results(out, min_points=config.min_points)


def write_results(
    out: str | Path,
    *,
    title: str = "Timely-RL on the embedded model",
    min_points: int = EvalStageConfig().min_points,
) -> Path:
    """``results.md`` and ``figure3.png`` from the eval run under ``out/run``.

    Args:
        out: the eval stage's directory.
        title: the page's heading.
        min_points: episodes wanted per (policy, family, budget) point; thinner points are
            listed on the page.
    """
    out = Path(out)
    trajs = read_run(out / RUN) if (out / RUN / TRAJECTORIES).is_file() else []
    if not trajs:
        raise FileNotFoundError(f"no eval trajectories under {out / RUN}; run the eval first")
    figure = out / "figure3.png"
    report.plot_figure3(trajs, figure)
    thin = report.thin_points(trajs, min_points)
    rows = sorted({report.label_of(t) for t in trajs}, key=report._row_key)
    lines = [
        f"# {title}",
        "",
        f"{len(trajs)} test-split episodes on a virtual clock; rows: {', '.join(rows)}. "
        "On-time score: the task score of an answer given within the budget, else 0, with "
        "its 95% interval. On-time (slack) counts answers up to the family's slack x T (1.1 "
        "for math, as the reference release), on-time (strict) only those within T. Anytime "
        "AUC: the mean height of the on-time score against the budget multiplier; rho: "
        "Spearman's rank correlation of the mean tool calls (tokens) with the multiplier "
        "(docs/timely-eval.md). Paired differences pair the same task, seed, latency and "
        "budget (the same instance for the AUC).",
        "",
        *(
            [f"Points with fewer than {min_points} episodes: {'; '.join(thin)}.", ""]
            if thin
            else []
        ),
        "## Targets",
        "",
        *report.targets_table(trajs),
        "",
        *report.protocol_sections(trajs),
        *_training_section(out.parent),
        "## Generated tokens, tool calls and on-time score against the budget (Figure 3)",
        "",
        f"![figure 3]({figure.name})",
        "",
        "## Every cell",
        "",
        *report.points_table(
            report.point_rows(trajs, ("policy", "family", "budget", "latency")),
            ("policy", "family", "budget", "latency"),
        ),
        "",
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


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
