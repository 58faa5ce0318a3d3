"""The run record of Timely-RL: metrics and episode lines, resume bookkeeping, the progress bar.

A run directory holds ``rl-run.json`` (what the run was started with; a resume must match it),
``metrics.jsonl`` (one line per batch), ``rollouts/batch-<n>.jsonl`` (the batch's trajectories),
``curves.png``, ``checkpoints/`` and, at the end, ``adapter/``. A killed run may have written
past its last checkpoint; a resume drops those lines and files and plays the batches again.
"""

from __future__ import annotations

import json
import os
import resource
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from timely.errors import ConfigError
from timely.train.config import RLConfig
from timely.train.view import ViewForm
from timely.types import EndReason, Trajectory

if TYPE_CHECKING:  # torch-free at import: the curves (matplotlib only) read its constants
    from timely.progress import ProgressDisplay
    from timely.train.grpo import Group
    from timely.train.objective import Sample, UpdateStats

RATIO_TOLERANCE = 1e-3  # mean |ratio - 1| allowed on the first update (weights that sampled)
METRICS_FILE, CURVES_FILE, ROLLOUTS_DIR = "metrics.jsonl", "curves.png", "rollouts"
RUN_FILE = "rl-run.json"
# Budget buckets of the per-batch log, by the setting's multiplier (budget / expert time):
# (name, lower bound inclusive, upper bound exclusive); no limit is its own bucket.
BUDGET_BUCKETS = (("short", 0.0, 0.75), ("mid", 0.75, 1.5), ("long", 1.5, float("inf")))
NO_LIMIT_BUCKET = "nolimit"
# Metrics that measure the machine, not the training: they differ between identical runs.
TIMING_FIELDS = frozenset(
    {"rollout_s", "update_s", "batch_s", "episodes_per_s", "gen_tokens_per_s", "peak_rss_mb"}
    | {"rollout_processed_tokens_per_s"}
)


def batch_metrics(
    step: int,
    groups: Sequence[Group],
    rewards: np.ndarray,
    forms: Sequence[str | None],
    samples: Sequence[Sample],
    updates: Sequence[UpdateStats],
    timing: dict[str, float],
) -> dict[str, Any]:
    """One metrics line: rollout outcomes, the first and last update's statistics, timing.

    ``forms`` is each episode's training-view form (None: nothing to train on).
    """
    trajs = [t for g in groups for t in g.trajectories]
    limited = [t for g in groups for t in g.trajectories if g.setting.limited]
    gen_tokens = sum(s.completion_tokens for t in trajs for s in t.steps)
    first, last = updates[0], updates[-1]
    busy = timing["rollout_s"] + timing["update_s"]
    return {
        "step": step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "score": _mean(t.score for t in trajs),
        "on_time_rate": _mean(t.compliant for t in trajs),
        "answered_rate": _mean(t.end_reason == EndReason.ANSWERED for t in trajs),
        "time_used": _mean(min(t.elapsed_s / t.budget_s, 2.0) for t in limited),
        "zero_std_groups": float(np.mean(np.ptp(rewards, axis=1) == 0)),
        "episodes": len(trajs),
        "untrainable": sum(f is None for f in forms),
        "sequence_form": _mean(f == ViewForm.SEQUENCE.value for f in forms),
        "completion_tokens": gen_tokens / len(trajs),
        "turns": _mean(len(t.steps) for t in trajs),
        "tool_calls": _mean(t.n_tool_calls for t in trajs),
        "elapsed_s": _mean(t.elapsed_s for t in trajs),
        "trained_rows": len(samples),
        "trained_tokens": first.tokens,
        "updates": sum(u.stepped for u in updates),
        "loss": first.loss if first.stepped else None,
        "ratio_dev": first.ratio_dev,
        "ratio_dev_max": first.ratio_dev_max,
        "clip_frac": last.clip_frac,
        "kl_old": last.kl_old,
        "kl_ref": first.kl_ref,
        "entropy": first.entropy,
        "grad_norm": first.grad_norm,
        **budget_bucket_metrics(groups),
        **timing,
        "batch_s": busy,
        "episodes_per_s": len(trajs) / timing["rollout_s"] if timing["rollout_s"] else None,
        "gen_tokens_per_s": gen_tokens / timing["rollout_s"] if timing["rollout_s"] else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def budget_bucket(multiplier: float | None) -> str:
    """The :data:`BUDGET_BUCKETS` name of a setting's multiplier (None: no limit)."""
    if multiplier is None:
        return NO_LIMIT_BUCKET
    return next(name for name, low, high in BUDGET_BUCKETS if low <= multiplier < high)


def budget_bucket_metrics(groups: Sequence[Group]) -> dict[str, float | int | None]:
    """Rollout outcomes by budget bucket: ``<metric>_<bucket>`` for each bucket.

    Whether the policy learns time shows here, not in the batch means: on-time rate and score
    at short budgets, tool calls and generated tokens rising with the budget. A bucket without
    episodes in the batch has ``episodes_<bucket>`` 0 and None elsewhere.
    """
    by_bucket: dict[str, list[Trajectory]] = {name: [] for name, _, _ in BUDGET_BUCKETS}
    by_bucket[NO_LIMIT_BUCKET] = []
    for g in groups:
        by_bucket[budget_bucket(g.setting.multiplier)].extend(g.trajectories)
    row: dict[str, float | int | None] = {}
    for name, trajs in by_bucket.items():
        row[f"episodes_{name}"] = len(trajs)
        row[f"on_time_rate_{name}"] = _mean(t.compliant for t in trajs)
        row[f"score_{name}"] = _mean(t.score for t in trajs)
        row[f"tool_calls_{name}"] = _mean(t.n_tool_calls for t in trajs)
        row[f"completion_tokens_{name}"] = _mean(
            sum(s.completion_tokens for s in t.steps) for t in trajs
        )
    return row


def write_rollouts(
    run_dir: Path,
    step: int,
    groups: Sequence[Group],
    rewards: np.ndarray,
    advantages: np.ndarray,
) -> Path:
    """Write the batch's trajectories to ``rollouts/batch-<step>.jsonl`` (atomically).

    They are the loop's own records, with the RL view in ``metadata["rl"]`` (batch, setting,
    speed factor, training reward, advantage). Prompt ids are dropped (every turn repeats the
    conversation so far, the bulk of a record; ``messages`` holds the same text); sampled ids
    and their log-probs stay.
    """
    folder = run_dir / ROLLOUTS_DIR
    folder.mkdir(exist_ok=True)
    lines = []
    for g, group in enumerate(groups):
        for i, t in enumerate(group.trajectories):
            rl = {
                "step": step,
                "time_mode": group.setting.time_mode,
                "multiplier": group.setting.multiplier,
                "speed_factor": group.speed_factors[i],
                "reward": float(rewards[g, i]),
                "advantage": float(advantages[g, i]),
            }
            steps = [s.model_copy(update={"prompt_token_ids": None}) for s in t.steps]
            slim = t.model_copy(update={"steps": steps, "metadata": {**t.metadata, "rl": rl}})
            lines.append(slim.model_dump_json() + "\n")
    path = folder / f"batch-{step:06d}.jsonl"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def drop_rollouts_after(run_dir: Path, step: int) -> None:
    """Remove the rollout files of batches after ``step`` (a killed run wrote them)."""
    for path in (run_dir / ROLLOUTS_DIR).glob("batch-*.jsonl"):
        if int(path.stem.removeprefix("batch-")) > step:
            path.unlink()


def _mean(values: Any) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def check_ratio(row: dict[str, Any], progress: Progress) -> None:
    dev = row["ratio_dev"]
    if dev is not None and dev > RATIO_TOLERANCE:
        message = (
            f"batch {row['step']}: mean |ratio - 1| at the first update is {dev:.2e} (max "
            f"{row['ratio_dev_max']:.2e}), above {RATIO_TOLERANCE:g}: the training forward "
            "does not reproduce the recorded sampling log-probs (temperature, dropout, model or "
            "token mismatch), so the clipped objective is off-policy noise"
        )
        progress.console.print(f"[bold red]WARNING[/] {message}")
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def record_run(run_dir: Path, config: RLConfig, init: str | None, base_model: str) -> None:
    """Write what the run is, or check a resumed run matches it (only ``steps`` and
    ``save_every`` may change)."""
    record = {"rl": config.model_dump(mode="json"), "init": init, "base_model": base_model}
    path = run_dir / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        free = {"steps": None, "save_every": None}
        now = {**record, "rl": {**record["rl"], **free}}
        was = {**before, "rl": {**before.get("rl", {}), **free}}
        if now != was:
            diff = sorted(
                k for k in {*now["rl"], *was["rl"]} if now["rl"].get(k) != was["rl"].get(k)
            ) + [k for k in ("init", "base_model") if now[k] != was.get(k)]
            raise ConfigError(
                f"{run_dir} holds a run started with other settings ({', '.join(diff)}); resume "
                "with the same config (only rl.steps and rl.save_every may change) or use a new "
                "run directory"
            )
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def truncate_jsonl(path: Path, keep_through: int) -> None:
    """Keep the lines of steps ``<= keep_through`` (a killed run wrote past its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= keep_through:
                kept.append(line + "\n")
        except (ValueError, KeyError):
            continue  # a torn last line
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class Progress:
    """A progress bar over batches, with the latest reward and timing (plain lines where the
    console is not a terminal, see :mod:`timely.progress`)."""

    def __init__(self, done: int, total: int, display: ProgressDisplay | None = None) -> None:
        from rich.console import Console

        from timely.progress import ProgressDisplay

        self.display = display if display is not None else ProgressDisplay(Console())
        self.console = self.display.console
        self.bar = self.display.bar("timely-rl", total, done=done, unit="batches")
        self.total = total

    def __enter__(self) -> Progress:
        self.display.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.__exit__(*exc)

    def phase(self, note: str) -> None:
        """Say what the current batch is doing (a batch can take many minutes on a CPU)."""
        self.bar.update(self.bar.done, note=note)

    def advance(self, row: dict[str, Any]) -> None:
        dev = row["ratio_dev"]
        info = (
            f"reward {row['reward_mean']:.3f}  on-time {row['on_time_rate']:.2f}  "
            f"|ratio-1| {'-' if dev is None else f'{dev:.0e}'}  "
            f"rollout {row['rollout_s']:.0f}s  update {row['update_s']:.0f}s"
        )
        self.bar.advance(note=info)
