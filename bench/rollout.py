"""Benchmark: multi-turn rollouts with the KV-reusing engine against today's engine (issue 19).

Everything below runs in one process, on the embedded SmolLM2-135M, ``--threads`` torch threads,
and every ratio is against an anchor measured in the same run:

- **GRPO groups**: one group of G = 8 rollouts of a train-split instance, played by the trainer's
  own path (:func:`timely.train.grpo.rollout_batch`, virtual clock, lockstep batching), once
  with ``kv_reuse=False`` (exactly today's engine, the anchor) and once with the new engine.
  Arithmetic (``math/arithmetic-v1``, a budget of 3x the expert's time) and treasure
  (``games/treasure-v1``, difficulty 1 as the trainer plays it, no time limit, up to 8 turns:
  the CPU RL config's ``max_turns``; the policy decides how many it plays). The model is the
  embedded one with its shipped budget-aware adapter (``smollm2-135m-timely``): the bare model
  answers in prose at its first turn, so only a tool-using policy plays multi-turn episodes.
  Both engines sample (T=1), so their episodes differ; generated tokens/s is the fairer speed
  figure, episodes/s the one a trainer feels.
- **Work**: tokens the model processed (``HFPolicy.stats.processed_tokens``: rows x width of
  every forward call, padding included, cross-checked by a forward hook on the model) over the
  episodes' unique tokens (:func:`timely.train.throughput.unique_tokens`).
- **Compute**: processed tokens/s of the new engine's rollouts against the machine's ceiling,
  a square matmul's FLOP/s in the rollouts' precision over 2 FLOPs per parameter per token.
- **Decode batch**: aggregate tokens/s of 16 sampled rows of one chat prompt (new engine) next to
  raw llama.cpp on one greedy sequence (``bench/inference.py``'s anchor, measured first, before
  torch runs): reported, no goal.
- **Group first turn** (what ``bench/group_generation.py`` measured before this bench replaced
  it): the first turn of the 8 rollouts batched against the same 8 requests one by one: reported.
- **Timely-Eval**: ``hf:`` rows of the smoke suite (``configs/eval/smoke.yaml``), held-out test
  split, run by ``run_suite`` with ``kv_reuse`` true and false: wall time, new / old. By default
  the shipped adapter's row on the math and game tasks (16 of the 48 episodes, see
  :func:`eval_wall`), ``--eval-rows all`` for every hf: row and task (far over 20 minutes with
  today's engine), ``--eval-only`` for this part alone.

Ends with one line per goal, ``GOAL <name>: measured <x> goal <y> met|missed``, and
``REPORT <name>: <x>`` for figures without a goal. ``--json PATH`` also writes them as JSON.
Defaults aim at under 20 minutes on 2 quiet cores (today's engine on treasure is most of it);
``--quick`` (arithmetic capped at 4 turns, treasure at 2, no group-first-turn or eval comparison;
about 3 minutes quiet, several under load) is for a look, not for the record.

Usage: python bench/rollout.py [--threads 2] [--precision fp32] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timely.clock import wall_seconds
from timely.policies.hf import HFPolicy
from timely.policies.hf_models import load_model
from timely.rollout import Runtime
from timely.train.config import RLConfig
from timely.train.grpo import rollout_batch, rollout_policy
from timely.train.throughput import engine_stats, unique_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benches' helpers
from inference import raw_llama, run_raw  # noqa: E402

MODEL = "smollm2-135m-timely"  # the embedded model with its shipped adapter: it calls tools
ENGINES = {"today": False, "new": True}


def say(line: str) -> None:
    print(line, flush=True)


# --- the machine's ceiling ----------------------------------------------------------------------
def matmul_flops(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``precision`` (bf16 operands, as rollouts run)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    torch.mm(a, b)
    for _ in range(repeats):
        start = wall_seconds()
        torch.mm(a, b)
        best = min(best, wall_seconds() - start)
    return 2 * n**3 / best


def cpu_seconds() -> float:
    """CPU seconds this process has used, all threads: on a machine shared with other jobs, work
    per CPU second is steadier than work per wall second, so both are printed."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- work counting ------------------------------------------------------------------------------
@contextmanager
def forward_counter(model: Any) -> Iterator[list[int]]:
    """Counts rows x width of every forward call of ``model``: a check of the engine's own
    ``processed_tokens`` that does not trust the engine."""
    total = [0]

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            total[0] += int(ids.shape[0] * ids.shape[1])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield total
    finally:
        handle.remove()


def engine(kv_reuse: bool) -> dict[str, Any]:
    """HFPolicy options selecting an engine."""
    return {"kv_reuse": kv_reuse}


# --- GRPO groups --------------------------------------------------------------------------------
def group_config(task: str, precision: str, quick: bool) -> RLConfig:
    """One group of 8 on one instance, the trainer's sampling settings, a generous budget."""
    common: dict[str, Any] = dict(
        tasks=(task,),
        prompts_per_step=1,
        group_size=8,
        speed_factor=(1.0, 1.0),
        latencies=("constant:0.2",),
        time_modes=("push",),
        max_new_tokens=96,
        temperature=1.0,
        rollout_precision=precision,
        seed=3,
    )
    if task.startswith("games/"):
        return RLConfig(**common, no_limit_share=1.0, max_turns=2 if quick else 8)
    return RLConfig(
        **common, budget_multipliers=(3.0, 3.0), no_limit_share=0.0, max_turns=4 if quick else 8
    )


async def play_group(model: Any, tokenizer: Any, config: RLConfig, kv_reuse: bool) -> dict:
    """One group through the trainer's rollout path; its speed, work and unique tokens."""
    policy = rollout_policy(model, tokenizer, 1, config, **engine(kv_reuse))
    async with Runtime(clock="virtual", seed=config.seed) as runtime:
        with forward_counter(model) as counted:
            start, cpu = wall_seconds(), cpu_seconds()
            groups = await rollout_batch(
                1,
                model,
                tokenizer,
                runtime,
                np.random.default_rng(config.seed),
                config,
                policy=policy,
            )
            seconds, cpu = wall_seconds() - start, cpu_seconds() - cpu
    trajectories = [t for g in groups for t in g.trajectories]
    stats = engine_stats(policy)
    processed = stats["processed_tokens"] if stats else counted[0]
    generated = sum(s.completion_tokens for t in trajectories for s in t.steps)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "episodes": len(trajectories),
        "turns": float(np.mean([len(t.steps) for t in trajectories])),
        "generated": generated,
        "unique": sum(unique_tokens(g.trajectories) for g in groups),
        "processed": processed,
        "processed_hook": counted[0],
        "stats": stats,
        "episodes_per_s": len(trajectories) / seconds,
        "gen_tokens_per_s": generated / seconds,
    }


def warm_up(model: Any, tokenizer: Any, precision: str) -> None:
    """One short turn with each engine first, so neither pays the process's first-call costs
    (kernels, allocator, imports) inside its timing."""
    config = group_config("math/arithmetic-v1", precision, quick=True)
    config = config.model_copy(update={"max_turns": 1, "max_new_tokens": 4, "group_size": 2})
    for kv_reuse in ENGINES.values():
        asyncio.run(play_group(model, tokenizer, config, kv_reuse))


def compare_groups(
    model: Any, tokenizer: Any, task: str, precisions: dict[str, str], quick: bool
) -> dict[str, dict]:
    """Today's engine and the new one on the same group, each in its own precision."""
    out = {}
    for name, kv_reuse in ENGINES.items():
        config = group_config(task, precisions[name], quick)
        r = asyncio.run(play_group(model, tokenizer, config, kv_reuse))
        say(
            f"  {task} {name:5s}: {r['episodes']} episodes, {r['turns']:.1f} turns, "
            f"{r['generated']} generated tokens in {r['seconds']:6.1f} s "
            f"({r['cpu_seconds']:.0f} CPU s, {r['generated'] / r['cpu_seconds']:.1f} tok/CPU s) = "
            f"{r['episodes_per_s']:.3f} episodes/s, {r['gen_tokens_per_s']:6.1f} tok/s; "
            f"processed {r['processed']} (hook {r['processed_hook']}) / unique {r['unique']} "
            f"= {r['processed'] / r['unique']:.2f}"
        )
        out[name] = r
    return out


# --- decode batch and group first turn ----------------------------------------------------------
def chat_messages() -> list:
    from timely.types import Message

    return [Message(role="user", content="Write a short story about a clock that runs late.")]


def first_turn_messages() -> list:
    """The first prompt of an arithmetic episode (what ``group_generation.py`` used)."""
    from timely.budget import TimeAwareness
    from timely.task import make_task
    from timely.types import Message

    task = make_task("math/arithmetic-v1", seed=0, split="train")
    line = TimeAwareness().budget_line(30)
    return [Message(role="user", content=f"{task.spec.prompt}\n\n{line}")]


def timed_batch(policy: HFPolicy, messages: list, rows: int) -> tuple[float, int]:
    """Seconds and generated tokens of ``rows`` copies of one request in one batch call."""
    from timely.clock import VirtualClock
    from timely.policies.base import Deadline

    deadline = Deadline(at=1e9, clock=VirtualClock())
    start = wall_seconds()
    outs = asyncio.run(policy.generate_batch([(messages, [], deadline)] * rows))
    return wall_seconds() - start, sum(o.completion_tokens for o in outs)


def llamacpp_one_sequence(threads: int) -> float:
    """Raw llama.cpp's tokens/s on one greedy sequence of the chat prompt (64 tokens), measured
    before torch computes anything: two OpenMP pools on two cores slow llama.cpp down for a
    while after torch ran (``bench/inference.py`` runs it first for the same reason)."""
    from timely.policies.base import make_policy

    llama, _ = raw_llama(threads, 2048)
    fast = make_policy("llamacpp:smollm2-135m", n_threads=threads, n_ctx=2048)
    prompt, stop = fast.prompt_ids(chat_messages(), []), set(fast.stop_ids)
    run_raw(llama, [prompt], 4, stop)  # warm up
    seconds, tokens = run_raw(llama, [prompt, prompt], 64, stop)
    return tokens / seconds


def decode_batch(model: Any, tokenizer: Any, precision: str) -> float:
    """Aggregate tokens/s of 16 sampled rows of the chat prompt in one call (new engine)."""

    def policy(rows: int) -> HFPolicy:
        return HFPolicy(
            model,
            tokenizer,
            max_new_tokens=64,
            temperature=1.0,
            seed=0,
            max_batch_size=rows,
            precision=precision,
            **engine(True),
        )

    messages = chat_messages()
    timed_batch(policy(2), messages, 2)  # warm up
    seconds, tokens = timed_batch(policy(16), messages, 16)
    return tokens / seconds


def group_first_turn(model: Any, tokenizer: Any, precision: str) -> dict[str, float]:
    """The first turn of G = 8 rollouts in one batch against the same 8 one after another."""

    def policy(rows: int) -> HFPolicy:
        return HFPolicy(
            model,
            tokenizer,
            max_new_tokens=48,
            temperature=1.0,
            seed=0,
            max_batch_size=rows,
            precision=precision,
            **engine(True),
        )

    messages = first_turn_messages()
    b_s, b_tok = timed_batch(policy(8), messages, 8)
    one = policy(1)
    s_s = s_tok = 0
    for _ in range(8):
        seconds, tokens = timed_batch(one, messages, 1)
        s_s, s_tok = s_s + seconds, s_tok + tokens
    return {"batched_tok_s": b_tok / b_s, "one_by_one_tok_s": s_tok / s_s}


# --- Timely-Eval --------------------------------------------------------------------------------
def eval_wall(rows: str, precisions: dict[str, str]) -> dict[str, float]:
    """Wall seconds of the smoke suite's hf: rows with each engine (fresh run directories).

    Args:
        rows: ``adapter``: the row of the shipped adapter on the math and game tasks (16
            episodes; the bare model answers every task at its first turn, where reuse has
            little to save, and on the ML tasks the adapter writes malformed calls for 15 turns
            of prompts growing to 4k tokens, which took today's engine over 10 minutes),
            ``all``: every hf: row on every task.
    """
    from timely_eval.runner import run_suite
    from timely_eval.suite import load_suite, select

    suite = load_suite("smoke")
    specs = ("hf:smollm2-135m-timely",) if rows == "adapter" else None
    labels = [
        p.name
        for p in suite.policies
        if p.spec.startswith("hf:") and (specs is None or p.spec in specs)
    ]
    suite = select(suite, policies=labels)
    if rows == "adapter":
        suite = select(suite, tasks=[t.id for t in suite.tasks if not t.id.startswith("ml/")])
    walls = {}
    for name, kv_reuse in ENGINES.items():
        policies = [
            p.model_copy(
                update={"options": {**p.options, **engine(kv_reuse), "precision": precisions[name]}}
            )
            for p in suite.policies
        ]
        run = suite.model_copy(update={"policies": policies})
        with tempfile.TemporaryDirectory() as tmp:
            start = wall_seconds()
            report = asyncio.run(run_suite(run, Path(tmp) / name))
            walls[name] = wall_seconds() - start
        say(f"  eval {name:5s}: {report.counts['eval'].done} episodes in {walls[name]:6.1f} s")
    return walls


# --- verdict ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Verdict:
    goals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reports: dict[str, float] = dataclasses.field(default_factory=dict)

    def goal(
        self, name: str, measured: float, goal: float, met: Callable[[float], bool], sign: str
    ) -> None:
        self.goals.append(
            {"name": name, "measured": measured, "goal": f"{sign} {goal:g}", "met": met(measured)}
        )

    def report(self, name: str, value: float) -> None:
        self.reports[name] = value

    def print(self) -> None:
        for name, value in self.reports.items():
            say(f"REPORT {name}: {value:.3g}")
        for g in self.goals:
            verdict = "met" if g["met"] else "missed"
            say(f"GOAL {g['name']}: measured {g['measured']:.3g} goal {g['goal']} {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="Rollout precision of both engines (and of the matmul ceiling).",
    )
    ap.add_argument(
        "--new-precision",
        choices=("fp32", "bf16"),
        default=None,
        help="The new engine's rollout precision (default: --precision). bf16 decodes a bf16 "
        "copy of the weights (the engine's option; today's engine stays at --precision), and "
        "the compute ceiling is then the bf16 matmul's.",
    )
    ap.add_argument("--quick", action="store_true", help="About 3 minutes; not for the record.")
    ap.add_argument(
        "--eval-rows",
        choices=("adapter", "all"),
        default="adapter",
        help="Which of the smoke suite's hf: rows the eval comparison plays.",
    )
    ap.add_argument("--eval-only", action="store_true", help="Only the Timely-Eval comparison.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    began = wall_seconds()
    new_precision = args.new_precision or args.precision
    precisions = {"today": args.precision, "new": new_precision}
    say(
        f"threads={args.threads} precision={args.precision} new engine {new_precision} "
        f"quick={args.quick} model={MODEL}"
    )
    v = Verdict()
    if args.eval_only:
        compare_eval(args.eval_rows, precisions, v)
        finish(v, began, args)
        return
    llamacpp = llamacpp_one_sequence(args.threads)
    say(f"raw llama.cpp, one sequence: {llamacpp:.1f} tok/s")
    flops = matmul_flops(new_precision)
    model, tokenizer = load_model(MODEL)
    params = sum(p.numel() for p in model.parameters())
    ceiling = flops / (2 * params)
    say(
        f"matmul {flops / 1e9:.0f} GFLOP/s ({new_precision}): ceiling {ceiling:.0f} processed "
        f"tok/s for {params / 1e6:.1f}M parameters"
    )

    for precision in sorted(set(precisions.values())):
        warm_up(model, tokenizer, precision)
    say("GRPO group, arithmetic (G=8):")
    arith = compare_groups(model, tokenizer, "math/arithmetic-v1", precisions, args.quick)
    say("GRPO group, treasure (G=8):")
    treasure = compare_groups(model, tokenizer, "games/treasure-v1", precisions, args.quick)
    for tag, res, goal in (("arithmetic", arith, 3.0), ("treasure", treasure, 6.0)):
        for figure in ("episodes_per_s", "gen_tokens_per_s"):
            ratio = res["new"][figure] / res["today"][figure]
            v.goal(f"{tag}_{figure}_new_over_today", ratio, goal, lambda x, g=goal: x >= g, ">=")
        v.report(f"{tag}_turns_new", res["new"]["turns"])
        per_cpu = {n: res[n]["generated"] / res[n]["cpu_seconds"] for n in ENGINES}
        v.report(f"{tag}_gen_tokens_per_cpu_s_new_over_today", per_cpu["new"] / per_cpu["today"])
        for name in ENGINES:
            v.report(f"{tag}_work_ratio_{name}", res[name]["processed"] / res[name]["unique"])
    worst = max(r["new"]["processed"] / r["new"]["unique"] for r in (arith, treasure))
    v.goal("work_ratio_new (worst of arithmetic, treasure)", worst, 1.2, lambda x: x <= 1.2, "<=")
    processed = sum(r["new"]["processed"] for r in (arith, treasure))
    seconds = sum(r["new"]["seconds"] for r in (arith, treasure))
    v.report("processed_tok_s_new", processed / seconds)
    v.report("ceiling_tok_s", ceiling)
    v.goal("compute_efficiency_new", processed / seconds / ceiling, 0.5, lambda x: x >= 0.5, ">=")
    reuse = [r["new"]["stats"] for r in (arith, treasure) if r["new"]["stats"]]
    if reuse:
        reused = sum(s.get("reused_tokens", 0) for s in reuse)
        prompt = reused + sum(s.get("prefill_tokens", 0) for s in reuse)
        v.report("reuse_share_new", reused / prompt if prompt else 0.0)
        v.report("full_prefills_new", sum(s.get("full_prefills", 0) for s in reuse))

    say("decode batch of 16 (new engine):")
    batch16 = decode_batch(model, tokenizer, new_precision)
    say(f"  batch 16 {batch16:.1f} tok/s, raw llama.cpp one sequence {llamacpp:.1f} tok/s")
    v.report("decode_batch16_tok_s", batch16)
    v.report("llamacpp_one_sequence_tok_s", llamacpp)
    v.report("decode_batch16_over_llamacpp", batch16 / llamacpp)

    if not args.quick:
        say("group first turn, batched against one by one:")
        first = group_first_turn(model, tokenizer, new_precision)
        say(
            f"  batched {first['batched_tok_s']:.1f} tok/s, one by one "
            f"{first['one_by_one_tok_s']:.1f} tok/s"
        )
        v.report(
            "group_first_turn_batched_over_one_by_one",
            first["batched_tok_s"] / first["one_by_one_tok_s"],
        )
        compare_eval(args.eval_rows, precisions, v)
    finish(v, began, args)


def compare_eval(rows: str, precisions: dict[str, str], v: Verdict) -> None:
    """The eval comparison's REPORT lines (no goal: the issue asks for the figure only)."""
    say(f"Timely-Eval, the smoke suite's hf: rows ({rows}):")
    walls = eval_wall(rows, precisions)
    v.report("eval_hf_rows_wall_s_today", walls["today"])
    v.report("eval_hf_rows_wall_s_new", walls["new"])
    v.report("eval_hf_rows_wall_new_over_today", walls["new"] / walls["today"])


def finish(v: Verdict, began: float, args: argparse.Namespace) -> None:
    """The verdict lines, and the JSON copy when asked for."""
    say(f"total {wall_seconds() - began:.0f} s")
    v.print()
    if args.json is not None:
        figures = {"goals": v.goals, "reports": v.reports}
        args.json.write_text(
            json.dumps({"args": {k: str(x) for k, x in vars(args).items()}, **figures}, indent=2)
        )


if __name__ == "__main__":
    main()
