"""Benchmark: one GRPO optimizer step of Timely-RL's objective against TRL's GRPOTrainer.

Timely-RL trains with its own loop (see :mod:`timely.train.grpo` for why not TRL), so its
optimizer step has to be at least as cheap as the one it replaces. This runs TRL 1.16's
``GRPOTrainer`` on a single-turn math setup with the embedded SmolLM2-135M (one train-split
``math/arithmetic-v1`` prompt per step, G completions of it, a cheap deterministic reward) and
then :func:`timely.train.objective.policy_step` on **the same batches**: the prompt and completion
ids TRL generated and the advantages it computed, with the same LoRA settings (or full
fine-tuning), loss aggregation (``grpo``), clip epsilon, learning rate, grad clip and one forward
pass over the G rows.

What is timed, per optimizer step (median over ``--steps``, after one warm-up step):

* TRL: from ``on_step_begin`` to ``on_step_end`` (forward with its fused log-prob head, backward,
  grad clip, AdamW, scheduler, zero_grad), minus ``_generate_and_score_completions`` (generation,
  reward, advantages), which is printed apart. With ``num_iterations=1`` and no gradient
  accumulation TRL takes the old log-probs as ``per_token_logps.detach()`` (ratio 1 by
  construction) and so computes none.
* ours: one ``policy_step`` (micro-batch = G rows, entropy measured as TRL does). Its old
  log-probs are the rollout's recorded sampling log-probs, so they are computed before the step,
  untimed, by a no-grad :func:`sample_logprobs` pass (printed apart, for reference).

Each side runs in its own process (this script re-invoked with ``--side``), so the peak RSS
(``VmHWM``) of one is not the other's; the batches go from the TRL process to ours through a
temporary JSON file. Ours builds its model the way ``run_rl`` does (``load_trainable``: a private
copy of the shared base, so with LoRA it holds two copies of the weights, ~0.5 GB each); TRL
wraps the loaded model in place, and so does ours with ``--full``. RSS is printed after setup
(model, adapter, trainer; before TRL's ``train()`` makes its optimizer) and at the peak.

TRL runs with ``bf16=False`` and ``gradient_checkpointing=False`` (its defaults are True for
both) so that both sides compute in fp32 without recomputation; ``generation_kwargs``
``min_new_tokens`` forces every completion to ``--tokens`` tokens so both sides train on the same
lengths. Its optimizer is its default ``adamw_torch_fused``; ours is ``torch.optim.AdamW``.

Prints seconds per optimizer step and sampled tokens/s of both, their RSS, and the ratio
TRL / ours (goal >= 1.0x, aim 1.5x). ``--unshared`` adds ours with the shared-prompt-prefix pass
of :func:`sample_logprobs` off (every row runs its whole prompt, as TRL's do), to show how much
of the ratio that pass is. The default is one torch thread (the project's machine has two cores
and a training job may hold one); at ``--threads 2`` on a quiet machine the figures may differ.

Usage: python bench/grpo_step.py [--group 8] [--tokens 48] [--steps 3] [--full] [--unshared]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from timely.policies.hf_models import load_model
from timely.task import make_task
from timely.train import objective
from timely.train.adapters import load_trainable
from timely.train.config import LoraSettings, RLConfig
from timely.train.objective import build_batch, policy_step, sample_logprobs

MODEL = "smollm2-135m"
LR = 5e-5  # RLConfig's default
CLIP = 0.2  # RLConfig.clip_low, TRL's epsilon
SEED = 0


# --- memory -------------------------------------------------------------------------------------
def rss_mb(field: str = "VmRSS") -> float:
    """A line of /proc/self/status in MB (VmRSS: now, VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mb() -> float:
    """The process's peak RSS: VmHWM, which (unlike ru_maxrss) exec does not inherit."""
    return rss_mb("VmHWM")


# --- the setup both sides share -----------------------------------------------------------------
def prompts(n: int) -> list[list[dict[str, str]]]:
    """One conversational train-split arithmetic prompt per optimizer step."""
    tasks = [make_task("math/arithmetic-v1", seed=i, split="train") for i in range(n)]
    return [[{"role": "user", "content": task.spec.prompt}] for task in tasks]


def reward(
    prompts: list, completions: list, completion_ids: list[list[int]], **_: Any
) -> list[float]:
    """Deterministic and cheap, and different within a group so advantages are non-zero: the share
    of distinct tokens, plus one if the completion writes a digit."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [
        len(set(ids)) / max(len(ids), 1) + float(any(ch.isdigit() for ch in text))
        for ids, text in zip(completion_ids, texts, strict=True)
    ]


# --- TRL ----------------------------------------------------------------------------------------
def trl_side(args: argparse.Namespace, batches_path: Path) -> dict[str, Any]:
    """Train ``warmup + steps`` TRL GRPO steps; time them; write the batches to ``batches_path``."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_model(MODEL)
    lora = LoraSettings()
    peft_config = None
    if not args.full:
        peft_config = lora.peft_config()
    total = args.steps + 1
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            seed=SEED,
            max_steps=total,
            per_device_train_batch_size=args.group,
            num_generations=args.group,
            gradient_accumulation_steps=1,
            max_completion_length=args.tokens,
            generation_kwargs={"min_new_tokens": args.tokens},
            temperature=1.0,
            loss_type="grpo",
            scale_rewards="group",
            beta=0.0,
            epsilon=CLIP,
            learning_rate=LR,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=False,
            shuffle_dataset=False,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.started = 0.0
                self.steps: list[float] = []

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.started = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.steps.append(time.perf_counter() - self.started)

        timer = StepTimer()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts(total)}),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict
        generate = trainer._generate_and_score_completions
        rollout_s: list[float] = []  # generation, reward, advantages
        wrapped_s: list[float] = []  # the same plus copying the batch out
        batches: list[dict[str, Any]] = []

        def timed_generate(inputs: Any) -> dict[str, Any]:
            t0 = time.perf_counter()
            out = generate(inputs)
            t1 = time.perf_counter()
            batches.append(
                {
                    "prompt_ids": _unpad(out["prompt_ids"], out["prompt_mask"]),
                    "completion_ids": _unpad(out["completion_ids"], out["completion_mask"]),
                    "advantages": out["advantages"].tolist(),
                }
            )
            rollout_s.append(t1 - t0)
            wrapped_s.append(time.perf_counter() - t0)
            return out

        trainer._generate_and_score_completions = timed_generate
        setup_mb, setup_peak = rss_mb(), peak_mb()
        trainer.train()
    if len(timer.steps) != total or len(rollout_s) != total:
        raise RuntimeError(f"TRL ran {len(timer.steps)} steps, generated {len(rollout_s)} times")
    batches_path.write_text(json.dumps(batches))
    step_s = [s - w for s, w in zip(timer.steps, wrapped_s, strict=True)]
    return {
        "step_s": step_s[1:],
        "other_s": rollout_s[1:],
        "tokens": [sum(len(c) for c in b["completion_ids"]) for b in batches[1:]],
        "prompt_tokens": [len(b["prompt_ids"][0]) for b in batches[1:]],
        "setup_mb": setup_mb,
        "peak_mb": max(setup_peak, peak_mb()),
    }


def _unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The unpadded rows of a padded id tensor."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


# --- ours ---------------------------------------------------------------------------------------
def ours_side(args: argparse.Namespace, batches_path: Path) -> dict[str, Any]:
    """``policy_step`` on TRL's batches: one warm-up step, then one timed step per batch.

    ``--side unshared``: the same, with the shared-prefix pass of :func:`sample_logprobs` off
    (every row runs its whole prompt), to show how much of the gap that pass is.
    """
    if args.side == "unshared":
        objective.MIN_SHARED_PREFIX = sys.maxsize
    batches = json.loads(batches_path.read_text())
    if args.full:
        net, tokenizer = load_model(MODEL)  # this process's copy; nothing else uses it
    else:
        model, tokenizer = load_trainable(MODEL, None, LoraSettings(), seed=SEED)
        net = model.get_base_model()  # as run_rl: LoRA lives in its layers
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=LR, weight_decay=0.0
    )
    config = RLConfig(
        loss="grpo",
        group_size=args.group,
        micro_batch_size=args.group,
        max_new_tokens=args.tokens,
        temperature=1.0,
        lr=LR,
        clip_low=CLIP,
        beta=0.0,
        grad_clip=1.0,
        seed=SEED,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    setup_mb, setup_peak = rss_mb(), peak_mb()
    step_s, old_s, tokens = [], [], []
    for batch in batches:
        seqs = [p + c for p, c in zip(batch["prompt_ids"], batch["completion_ids"], strict=True)]
        masks = [
            [0] * len(p) + [1] * len(c)
            for p, c in zip(batch["prompt_ids"], batch["completion_ids"], strict=True)
        ]
        samples = build_batch(
            seqs,
            masks,
            [[0.0] * len(s) for s in seqs],
            batch["advantages"],
            loss="grpo",
            max_tokens=args.tokens,
        )
        # What the rollout would have recorded: the sampling log-probs under the current weights.
        t0 = time.perf_counter()
        net.eval()
        with torch.no_grad():
            flat, _ = sample_logprobs(net, samples, config.temperature, pad_id=pad_id)
        per_row = iter(flat.split([s.n_tokens for s in samples]))
        samples = [
            dataclasses.replace(s, old_logprobs=_spread(next(per_row).tolist(), s.mask))
            for s in samples
        ]
        t1 = time.perf_counter()
        stats = policy_step(net, optimizer, samples, config, pad_id=pad_id, measure_entropy=True)
        t2 = time.perf_counter()
        if not stats.stepped:
            raise RuntimeError("policy_step did not step")
        old_s.append(t1 - t0)
        step_s.append(t2 - t1)
        tokens.append(stats.tokens)
    return {
        "step_s": step_s[1:],
        "other_s": old_s[1:],
        "tokens": tokens[1:],
        "setup_mb": setup_mb,
        "peak_mb": max(setup_peak, peak_mb()),
    }


def _spread(values: list[float], mask: list[int]) -> list[float]:
    """Values of the sampled positions, laid out over the row (0.0 elsewhere)."""
    it = iter(values)
    return [next(it) if m else 0.0 for m in mask]


# --- driver -------------------------------------------------------------------------------------
def run_side(side: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """This script in a fresh process for one side; its result as JSON."""
    result = work / f"{side}.json"
    cmd = [sys.executable, __file__, "--side", side, "--work", str(work)]
    cmd += ["--group", str(args.group), "--tokens", str(args.tokens), "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] + (["--full"] if args.full else [])
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=8, help="G: completions per prompt and step")
    ap.add_argument("--tokens", type=int, default=48, help="tokens per completion")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--unshared",
        action="store_true",
        help="also run ours with the shared-prompt-prefix pass off (one more process, ~1.5 min)",
    )
    ap.add_argument("--side", choices=["trl", "ours", "unshared"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side is not None:
        torch.set_num_threads(args.threads)
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames
        side = trl_side if args.side == "trl" else ours_side
        result = side(args, args.work / "batches.json")
        (args.work / f"{args.side}.json").write_text(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="grpo-step-") as tmp:
        trl = run_side("trl", args, Path(tmp))
        ours = run_side("ours", args, Path(tmp))
        unshared = run_side("unshared", args, Path(tmp)) if args.unshared else None
    mode = "full fine-tuning" if args.full else f"LoRA r={LoraSettings().r}"
    print(
        f"\nSmolLM2-135M GRPO, 1 prompt x G={args.group} completions x {args.tokens} tokens "
        f"(prompts of {min(trl['prompt_tokens'])}-{max(trl['prompt_tokens'])} tokens), {mode}, "
        f"loss=grpo, beta=0, threads={args.threads}, {args.steps} timed steps (+1 warm-up), "
        "the same batches on both sides"
    )
    rows = [
        ("TRL GRPOTrainer (anchor)", trl, "generate+score"),
        ("ours policy_step", ours, "old logprobs"),
    ]
    if unshared is not None:
        rows.append(("ours, prefix not shared", unshared, "old logprobs"))
    print(f"{'':26} {'s/step':>8} {'tok/s':>8} {'setup RSS':>10} {'peak RSS':>9}  untimed part")
    for name, r, other in rows:
        s = statistics.median(r["step_s"])
        rate = statistics.median(r["tokens"]) / s
        extra = statistics.median(r["other_s"])
        print(
            f"{name:26} {s:8.2f} {rate:8.1f} {r['setup_mb']:8.0f}MB {r['peak_mb']:7.0f}MB"
            f"  {other} {extra:.2f} s"
        )
    ratio = statistics.median(trl["step_s"]) / statistics.median(ours["step_s"])
    print(f"ratio TRL / ours (s per optimizer step): {ratio:.2f}x (goal >= 1.0x, aim 1.5x)")
    if unshared is not None:
        ratio = statistics.median(trl["step_s"]) / statistics.median(unshared["step_s"])
        print(f"ratio TRL / ours with the prefix not shared: {ratio:.2f}x")


if __name__ == "__main__":
    main()
