"""Benchmark: the llamacpp: policy against raw llama.cpp and the hf: policy, on the same prompts.

One sequence at a time, greedy, the embedded SmolLM2-135M (its Q4_1 GGUF for llama.cpp, the
de-quantised float32 model for transformers), on two workloads that both engines get the same
prompt token ids for:

- chat: short plain questions; decoding dominates.
- agent: episodes of test-split math tasks with the calculator tool, played as the loop plays
  them: turn k's prompt is turn k-1's plus a (fixed, scripted) tool call, its result and the time
  status. Prompts are 300-500 tokens. llama.cpp keeps the previous call's KV cache and prefills
  only what is new; hf: prefills every turn's whole prompt, as HFPolicy does in the loop.

Engines:
- raw llama.cpp (the anchor): ``llama_cpp.Llama.generate`` over the prompt ids, stopping at the
  stop ids; no tokenizer, no parsing, no thread hop.
- ``llamacpp:``: ``LlamaCppPolicy.generate`` end to end (chat template, tokenisation, the worker
  thread, decoding and tool-call parsing), on its own ``Llama`` with the same settings.
- ``hf:``: ``HFPolicy.generate`` (``max_batch_size=1``), float32, run last (after torch has
  computed, llama.cpp's next decodes are slower for a while: two OpenMP pools on two cores).

The two llama.cpp engines run alternately, ``--rounds`` times, so load from other processes hits
both alike. Tokens/s = tokens generated / wall seconds of the calls (prefill included).

Prints tokens/s per workload and overall, the ratios llamacpp:/raw (goal >= 0.8x) and
llamacpp:/hf: (goal >= 4x), and how often llamacpp: and hf: agree on the first 8 greedy tokens.

Usage: python bench/inference.py [--tokens 64] [--rounds 2] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from timely.budget import TimeAwareness, TimeStatus
from timely.clock import VirtualClock
from timely.policies.base import Deadline, make_policy
from timely.policies.llamacpp_models import _model_params, require_llama_cpp, resolve_model
from timely.task import make_task
from timely.types import Message, ToolCall

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
PLAIN = [
    "Write a haiku about time.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers and say why they are prime.",
]
Conversation = tuple[list[Message], list[dict]]


def chat(quick: bool) -> list[Conversation]:
    return [([Message(role="user", content=p)], []) for p in PLAIN[: 1 if quick else 3]]


def agent(quick: bool, turns: int = 3) -> list[Conversation]:
    """Each episode's turns in order: every prompt extends the previous one."""
    time_status = TimeAwareness()
    out: list[Conversation] = []
    families = ("math/arithmetic-v1", "math/word-problems-v1", "math/multistep-v1")
    for family in families[: 1 if quick else 3]:
        task = make_task(family, seed=0, split="test")
        line = time_status.budget_line(30)
        messages = [Message(role="user", content=f"{task.spec.prompt}\n\n{line}")]
        out.append((list(messages), [CALCULATOR]))
        for turn in range(1, turns):
            call = ToolCall(id=f"call_{turn}", name="calculator", arguments={"expression": "17*3"})
            status = TimeStatus(budget=30.0, elapsed=2.5 * turn)
            messages += [
                Message(role="assistant", content="", tool_calls=[call]),
                Message(role="tool", content="51", tool_call_id=call.id, name="calculator"),
                Message(role="user", content=time_status.status_line(status)),
            ]
            out.append((list(messages), [CALCULATOR]))
    return out


def deadline() -> Deadline:
    return Deadline(at=1e9, clock=VirtualClock())


def run_policy(policy, convs: list[Conversation]) -> tuple[float, int, list[list[int]]]:
    async def go() -> tuple[float, int, list[list[int]]]:
        seconds, tokens, ids = 0.0, 0, []
        for messages, tools in convs:
            t0 = time.perf_counter()
            out = await policy.generate(messages, tools, deadline=deadline())
            seconds += time.perf_counter() - t0
            tokens += out.completion_tokens
            ids.append(out.token_ids)
        return seconds, tokens, ids

    return asyncio.run(go())


def run_raw(llama, prompts: list[list[int]], cap: int, stop_ids: set[int]) -> tuple[float, int]:
    seconds, tokens = 0.0, 0
    for prompt in prompts:
        t0 = time.perf_counter()
        n = 0
        stream = llama.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0)
        for token in stream:
            n += 1
            if token in stop_ids or n >= cap:
                break
        stream.close()
        seconds += time.perf_counter() - t0
        tokens += n
    return seconds, tokens


def raw_llama(threads: int, n_ctx: int):
    """The anchor: its own Llama with the policy's settings, and its AMX workaround (without it
    this llama.cpp build segfaults on AMX hosts, see timely/policies/llamacpp_models.py)."""
    llama_cpp = require_llama_cpp()
    extra = b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info()
    with _model_params(llama_cpp, use_extra_bufts=extra):
        llama = llama_cpp.Llama(
            model_path=str(resolve_model("smollm2-135m").gguf),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    return llama, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 prompts and 1 episode, 1 round")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    workloads = {"chat": chat(args.quick), "agent": agent(args.quick)}
    n_ctx = 4096
    fast = make_policy(
        "llamacpp:smollm2-135m", max_new_tokens=args.tokens, n_threads=args.threads, n_ctx=n_ctx
    )
    raw, extra = raw_llama(args.threads, n_ctx)
    stop_ids = set(fast.stop_ids)
    prompts = {k: [fast.prompt_ids(m, t) for m, t in c] for k, c in workloads.items()}
    run_raw(raw, prompts["chat"][:1], 4, stop_ids)  # warm up both
    run_policy(fast, workloads["chat"][:1])

    totals = {(engine, k): [0.0, 0] for engine in ("raw", "fast", "hf") for k in workloads}
    fast_ids: dict[str, list[list[int]]] = {}
    for _ in range(rounds):
        for k, convs in workloads.items():
            s, n = run_raw(raw, prompts[k], args.tokens, stop_ids)
            totals["raw", k][0] += s
            totals["raw", k][1] += n
            s, n, fast_ids[k] = run_policy(fast, convs)
            totals["fast", k][0] += s
            totals["fast", k][1] += n

    hf = make_policy("hf:smollm2-135m", max_new_tokens=args.tokens, max_batch_size=1)
    run_policy(hf, workloads["chat"][:1])
    agree = same = count = 0
    for k, convs in workloads.items():
        s, n, hf_ids = run_policy(hf, convs)
        totals["hf", k] = [s, n]
        for a, b in zip(fast_ids[k], hf_ids, strict=True):
            agree, same, count = agree + (a[:8] == b[:8]), same + (a == b), count + 1

    def rate(engine: str, k: str | None = None) -> float:
        keys = [k] if k else list(workloads)
        seconds = sum(totals[engine, key][0] for key in keys)
        return sum(totals[engine, key][1] for key in keys) / seconds

    print(
        f"max_new_tokens={args.tokens} threads={args.threads} rounds={rounds} "
        f"chat={len(workloads['chat'])} prompts agent={len(workloads['agent'])} turns "
        f"(llama.cpp extra buffers {'on' if extra else 'off: AMX host'})"
    )
    names = {"raw": "raw llama.cpp (anchor)", "fast": "llamacpp: policy", "hf": "hf: policy (fp32)"}
    print(f"{'tok/s':24s}{'chat':>8s}{'agent':>8s}{'all':>8s}")
    for engine, label in names.items():
        cells = [rate(engine, "chat"), rate(engine, "agent"), rate(engine)]
        print(f"{label:24s}" + "".join(f"{c:8.1f}" for c in cells))
    for k in (*workloads, None):
        tag = k or "all"
        print(
            f"{tag:5s} llamacpp:/raw {rate('fast', k) / rate('raw', k):5.2f}x (goal >= 0.8x)   "
            f"llamacpp:/hf: {rate('fast', k) / rate('hf', k):5.2f}x (goal >= 4x)"
        )
    print(
        f"greedy llamacpp: (Q4_1) vs hf: (fp32): first 8 tokens agree on {agree}/{count} "
        f"prompts, identical on {same}/{count}"
    )


if __name__ == "__main__":
    main()
