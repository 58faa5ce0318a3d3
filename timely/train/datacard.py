"""The dataset card (``README.md``) of a cold-start data directory: what is in it, how it was made.

Everything on the card is computed from the directory itself (its shards, trajectories and
``config.yaml``), so it is rewritten whenever rows are added (rejection samples).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from timely.runrecord import TRAJECTORIES, outcome, read_run
from timely.types import EndReason

BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0.5-0.75x", 0.0, 0.75),
    ("0.75-1x", 0.75, 1.0),
    ("1-1.5x", 1.0, 1.5),
    ("1.5-3x", 1.5, float("inf")),
)


def budget_bucket(multiplier: float | None) -> str:
    """The card's budget bucket of a row (``no limit`` for None)."""
    if multiplier is None:
        return "no limit"
    return next(name for name, lo, hi in BUCKETS if lo <= multiplier < hi)


def write_card(dataset_dir: str | Path, build: dict[str, Any]) -> Path:
    """Write ``README.md`` for the dataset in ``dataset_dir`` (``build``: what build.json says)."""
    from timely.train.data import load_sft_dataset

    out = Path(dataset_dir)
    rows = load_sft_dataset(out).remove_columns(["messages", "tools", "input_ids", "loss_mask"])
    table = rows.to_list()
    played = read_run(out, calibration=True) if (out / TRAJECTORIES).is_file() else []
    config = (out / "config.yaml").read_text() if (out / "config.yaml").is_file() else ""
    path = out / "README.md"
    path.write_text(_card(table, played, config, build), encoding="utf-8")
    return path


def _card(rows: list[dict[str, Any]], played: list[Any], config: str, build: dict) -> str:
    experts = [t for t in played if t.policy.startswith("scripted")]
    answered = [t for t in experts if t.end_reason == EndReason.ANSWERED and t.compliant]
    short = [r for r in rows if r["multiplier"] is not None and r["multiplier"] < 1.0]
    early = [r for r in short if r["early"]]
    tokens = [r["n_tokens"] for r in rows]
    lines = [
        "---",
        "license: apache-2.0",
        "task_categories: [text-generation]",
        "tags: [tool-calling, time-budget, timely-machine, sft]",
        "---",
        "# Timely Machine cold-start SFT data",
        "",
        "Tool-calling episodes under wall-clock time budgets, for the cold-start SFT that teaches "
        "a small model the `<tool_call>` format and the habit of reading the clock before "
        "Timely-RL. "
        f"Splits in it: **{', '.join(sorted({r['split'] for r in rows})) or 'none'}** - every row "
        "comes from the train split of its task; the eval's test split is never played.",
        "",
        "## How it was made",
        "",
        "The scripted budget-aware expert replays each instance's reference solution through the "
        "project's one agent loop on a virtual clock, under a setting drawn per episode: a tool "
        "latency, a time-status mode (`push`: a status line after each tool result; `pull`: a "
        "`get_duration` tool, which the expert calls every few steps and before it stops early; "
        "`both`), and a budget of `budget_multipliers` x the expert's unconstrained time on "
        "that instance (log-uniform), or no limit at all (no budget shown). When the next step "
        "would not fit, the expert answers at once with its best partial result. `keep` (in "
        "the config below) says which episodes became rows: `on_time` those answered on time, "
        "`scored` those of them that score (not a guess made with no time for a step), `all` "
        "every one.",
        "",
        "Ids are exactly what the local transformers policy would have seen: per turn, the prompt "
        "rendered by the project's renderer (tools listed Hermes-style in the system prompt) and "
        "the assistant text plus `<|im_end|>`; `loss_mask` is 1 on assistant contents, tool-call "
        "blocks and their `<|im_end|>`, 0 on system, user and tool turns and on role headers. "
        "`messages` (OpenAI chat shape, tool-call arguments as JSON strings) and `tools` (the "
        "OpenAI tools array as a JSON string) allow re-tokenising for any other model. "
        "Rows with `source: rejection` are the model's own rollouts after a first SFT round, "
        "filtered by reward, with the ids it sampled.",
        "",
        f"- seed: {_seed(config)}; tokenizer / prompt rendering: `{build.get('model', '?')}` "
        f"(tool format `{build.get('tool_format', '?')}`)",
        f"- built in {build.get('seconds', '?')} s; versions: {build.get('versions', {})}",
        "",
        "## Contents",
        "",
        f"- rows: **{len(rows)}** ({_counts(rows, 'source')}); tokens: {sum(tokens)} in all, "
        f"{sum(r['n_loss_tokens'] for r in rows)} with loss; per row mean "
        f"{sum(tokens) / max(len(rows), 1):.0f}, max {max(tokens, default=0)}; "
        f"rows over 1024 / 2048 tokens: {sum(n > 1024 for n in tokens)} / "
        f"{sum(n > 2048 for n in tokens)}",
        f"- expert episodes played: {len(experts)}, answered on time: {len(answered)} "
        f"({len(answered) / max(len(experts), 1):.0%}); end reasons: "
        f"{dict(collections.Counter(t.end_reason.value for t in experts))}; outcomes: "
        f"{dict(collections.Counter(outcome(t).value for t in experts))}",
        f"- short budgets (< 1x): {len(short)} rows, {len(early)} of them answered early with a "
        f"partial result ({len(early) / max(len(short), 1):.0%}); rows that read the clock "
        f"tool: {sum(r['n_clock_reads'] > 0 for r in rows)}",
        "",
        _table(rows, "family", "budget", lambda r: budget_bucket(r["multiplier"])),
        "",
        _table(rows, "task_id", "time_mode", lambda r: r["time_mode"] or "?"),
        "",
        "## Columns",
        "",
        "`messages`, `tools`, `input_ids`, `loss_mask`, `task_id`, `family`, `seed`, `split`, "
        "`source` (expert | rejection), `policy`, `sample`, `budget_s` and `multiplier` (null: "
        "no limit), `latency`, `time_mode` (push | pull | both | none), `end_reason`, `score`, "
        "`reward` (the paper shape), `elapsed_s` (virtual seconds), `n_tool_calls`, "
        "`n_clock_reads`, `early` (answered before the reference solution's last call), "
        "`n_tokens`, `n_loss_tokens`, `turn` (null: the whole episode; else a per-turn row).",
        "",
        "## Config",
        "",
        "```yaml",
        config.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]], row_key: str, col_name: str, col: Any) -> str:
    cols = sorted({col(r) for r in rows}, key=_bucket_order)
    groups = sorted({r[row_key] for r in rows})
    head = f"| {row_key} | " + " | ".join(cols) + " | all |"
    out = [head, "|" + "---|" * (len(cols) + 2)]
    for g in groups:
        mine = [r for r in rows if r[row_key] == g]
        counts = collections.Counter(col(r) for r in mine)
        out.append(f"| {g} | " + " | ".join(str(counts[c]) for c in cols) + f" | {len(mine)} |")
    return f"Rows by {row_key} and {col_name}:\n\n" + "\n".join(out)


def _bucket_order(name: str) -> tuple[int, str]:
    names = [b[0] for b in BUCKETS] + ["no limit"]
    return (names.index(name), name) if name in names else (len(names), name)


def _counts(rows: list[dict[str, Any]], key: str) -> str:
    return ", ".join(
        f"{k}: {v}" for k, v in sorted(collections.Counter(r[key] for r in rows).items())
    )


def _seed(config: str) -> str:
    for line in config.splitlines():
        if line.startswith("seed:"):
            return line.split(":", 1)[1].strip()
    return "?"
