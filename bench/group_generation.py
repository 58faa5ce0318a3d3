"""Benchmark: batched generation of a GRPO group against one-by-one generation.

Timely-RL samples G rollouts of one prompt at once. ``HFPolicy`` merges concurrent ``generate``
calls into one left-padded batch (the micro-batcher), so a group costs one model call per turn
instead of G. This plays the first turn of G = 8 rollouts of a train-split math prompt with the
embedded SmolLM2-135M at temperature 1.0, the way the trainer does (concurrent ``generate``
calls), and the same 8 requests one after another as the anchor, in the same run.

Prints tokens/s of both and the ratio batched / one-by-one (goal >= 3x).

Usage: python bench/group_generation.py [--group 8] [--tokens 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from timely.budget import TimeAwareness
from timely.clock import VirtualClock
from timely.loop import EpisodeOptions
from timely.policies.base import Deadline
from timely.policies.hf import HFPolicy
from timely.policies.hf_models import load_model
from timely.task import make_task
from timely.types import Message


def prompt() -> list[Message]:
    task = make_task("math/arithmetic-v1", seed=0, split="train")
    line = EpisodeOptions(time=TimeAwareness()).time.budget_line(30)
    return [Message(role="user", content=f"{task.spec.prompt}\n\n{line}")]


async def batched(policy: HFPolicy, group: int) -> tuple[float, int]:
    messages, clock = prompt(), VirtualClock()
    t0 = time.perf_counter()
    deadline = Deadline(at=1e9, clock=clock)
    outs = await asyncio.gather(
        *(policy.generate(messages, [], deadline=deadline) for _ in range(group))
    )
    return time.perf_counter() - t0, sum(o.completion_tokens for o in outs)


async def one_by_one(policy: HFPolicy, group: int) -> tuple[float, int]:
    messages, clock = prompt(), VirtualClock()
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(group):
        out = await policy.generate(messages, [], deadline=Deadline(at=1e9, clock=clock))
        tokens += out.completion_tokens
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m")

    def policy(batch: int) -> HFPolicy:
        return HFPolicy(
            model,
            tokenizer,
            max_new_tokens=args.tokens,
            temperature=1.0,
            max_batch_size=batch,
            batch_window_s=0.05,
            seed=0,
        )

    asyncio.run(batched(policy(args.group), 2))  # warm up
    b_s, b_tok = asyncio.run(batched(policy(args.group), args.group))
    s_s, s_tok = asyncio.run(one_by_one(policy(1), args.group))
    b_rate, s_rate = b_tok / b_s, s_tok / s_s
    print(f"group={args.group} max_new_tokens={args.tokens} threads={args.threads}")
    print(f"one by one (anchor): {s_tok} tokens in {s_s:6.2f} s = {s_rate:7.1f} tok/s")
    print(f"batched group:       {b_tok} tokens in {b_s:6.2f} s = {b_rate:7.1f} tok/s")
    print(f"ratio batched / one-by-one: {b_rate / s_rate:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
