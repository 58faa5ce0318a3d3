"""Timely-RL: GRPO-family RL on the budget-aware reward, with rollouts through the one agent loop.

One batch, top to bottom (:func:`run_rl`):

1. **Rollouts.** ``prompts_per_step`` train-split instances (seeds from a seeded numpy
   Generator), each with a setting from :func:`~timely.train.episodes.draw_setting` (latency,
   time mode, a budget relative to the expert's time or no limit; with ``stratify_budgets``
   each prompt draws from its own slice of the budget range), then ``group_size`` rollouts
   per instance, all played concurrently by :func:`~timely.loop.run_episode` with an
   :class:`~timely.policies.hf.HFPolicy` over the model being trained. The generation speed
   factor is drawn **per rollout** (the config's "per-sample"): the rollouts of a group see the
   same prompt and budget but a different clock, so within a group the ones that read the clock
   and adapt beat the ones that count turns, which is the contrast GRPO learns from. Tool
   latency already varies per rollout the same way (each rollout has its own session stream).
2. **Reward.** The trajectory's reward under ``config.reward`` (the paper's shape, sin bonus).
   ``time_reward=False`` is the paper's ablation, plain correctness. A hard budget would still
   reward time implicitly (the loop turns a late answer into a cut-off, reward 0), so the
   ablation plays its rollouts with ``overrun="late"`` and a stop far beyond any budget: the
   budget is still shown, but time decides neither the reward (``trajectory.score`` of an
   answered episode) nor when an episode stops (only ``max_turns`` and ``max_new_tokens`` do,
   as for the no-limit settings). Its on-time rate is still measured.
3. **Advantages**, per group: ``(r - mean) / (std + eps)`` (unbiased std, TRL's eps) for grpo
   and dapo, ``r - mean`` for dr_grpo; a group whose rewards are all equal gets exactly 0.
4. **Samples** from :func:`~timely.train.view.training_view`: one masked sequence per episode
   under the prefix property, else one sample per turn. The loss weights make both forms give
   the same loss: ``grpo`` averages each *episode's* sampled tokens, then the episodes;
   ``dr_grpo`` sums tokens over ``n_episodes x max_new_tokens x max_turns``; ``dapo`` averages
   all sampled tokens of the batch. Episodes and tokens with zero advantage count in those
   denominators, but with ``beta == 0`` their rows (zero gradient) are not computed.
5. **Updates** (:func:`~timely.train.objective.policy_step`, ``updates_per_batch`` times):
   one teacher-forced forward per micro-batch, log-probs of the sampled ids under
   ``log_softmax(logits / temperature)`` (the sampler's own definition,
   :func:`timely.policies.logprobs.token_logprobs`), the PPO clipped ratio against the
   *recorded* sampling log-probs, optional k3 KL to the initial policy, gradient accumulation,
   grad clipping, one optimizer step. The first pass runs on the weights that sampled, so its
   mean ``|ratio - 1|`` must be ~0; above :data:`~timely.train.rl_record.RATIO_TOLERANCE` a
   loud warning says rollout and training disagree.

Determinism and resume: the micro-batcher of ``HFPolicy`` seeds each model call from a batch
counter, so sampled results depend on which requests shared a call. On the virtual clock the
rollouts of a batch therefore go through a lockstep batcher (:class:`_Lockstep`): a model call
runs once every live episode waits on one, with the requests in episode order, through
``HFPolicy.generate_batch`` of a policy seeded per RL step. A batch's rollouts are then a pure
function of (weights, step, data RNG), and a resumed run repeats an uninterrupted one
exactly. On a wall clock episodes must not wait for each other (waiting is charged time), so
they use the policy's own micro-batcher and are not reproducible.

Why not TRL's ``GRPOTrainer(rollout_func=...)`` (read in trl 1.16.0, ``grpo_trainer.py``): the
hook returns ``prompt_ids``, ``completion_ids``, ``logprobs`` and an optional ``env_mask`` per
rollout, so a multi-turn episode fits only as one completion under the prefix property; the
per-turn fallback has no place (completions are grouped by position, ``num_generations`` per
prompt). Without vLLM the returned ``logprobs`` are not used by the loss at all: "old"
log-probs are either recomputed by the trainer or taken as ``per_token_logps.detach()`` (ratio
1 by construction), so the clipped ratio against the recorded sampling log-probs, and the
``|ratio - 1|`` check, cannot be had. Prompts come from a dataset through TRL's RepeatSampler,
not from our seeded settings (budget, latency, per-rollout speed); the hook is synchronous while
our loop is async; and resume regenerates the buffered batch. So the trainer is ours, and
:func:`~timely.train.objective.policy_step` (one optimizer step on given sequences, masks, old
log-probs and advantages, built by :func:`~timely.train.objective.build_batch`) is kept
separate so it can be timed against TRL's step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timely.clock import wall_seconds
from timely.errors import TrainingDataError
from timely.policies.hf import HFPolicy
from timely.rng import derive_seed
from timely.rollout import Runtime, draw_speed_factor, scaled_speed
from timely.task import Task, make_task
from timely.train.adapters import (
    check_adapter_dir,
    load_trainable,
    reference_policy,
    save_adapter,
)
from timely.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from timely.train.config import RLConfig
from timely.train.curves import plot_curves
from timely.train.episodes import Setting, draw_setting, episode_budget, episode_reward
from timely.train.experts import tokenized_calibrator
from timely.train.objective import (
    ROLLOUT_MISMATCH_FIELDS,
    Sample,
    build_batch,
    group_advantages,
    policy_step,
    trainer_autocast,
    with_reference_logprobs,
    with_trainer_logprobs,
)
from timely.train.rl_record import (
    CURVES_FILE,
    METRICS_FILE,
    Progress,
    append_jsonl,
    batch_metrics,
    check_ratio,
    drop_rollouts_after,
    record_run,
    truncate_jsonl,
    write_rollouts,
)
from timely.train.sft import use_bf16
from timely.train.throughput import engine_stats, rollout_throughput
from timely.train.view import ViewForm, training_view
from timely.types import Completion, Message, Trajectory


# --- the entry point ----------------------------------------------------------------------------
def run_rl(
    config: RLConfig,
    run_dir: str | Path,
    *,
    init: str | None,
    base_model: str = "smollm2-135m",
    threads: int = 2,
) -> Path:
    """Train a LoRA adapter with Timely-RL and return its directory, ``<run_dir>/adapter``.

    Calling it again on the same ``run_dir`` resumes from the latest checkpoint (same step,
    optimizer, scheduler, RNG and data order); a larger ``config.steps`` continues a finished
    run. Everything else but ``save_every`` must match what the run was started with.

    Args:
        config: the RL stage config.
        run_dir: where metrics, episodes, curves, checkpoints and the adapter go.
        init: a peft adapter directory to start from (the SFT stage's output), or None for a
            fresh LoRA adapter (``config.lora``) on ``base_model``. The KL reference (``beta >
            0``) is the initial policy: a frozen copy of ``init``, or the base model.
        base_model: the embedded model's name or a transformers model directory (a fully
            fine-tuned SFT model goes here, with ``init=None``).
        threads: torch CPU threads.

    Raises:
        ConfigError: ``init`` is not an adapter directory, or ``run_dir`` holds a run started
            with other settings.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_adapter_dir(init)
    record_run(run_dir, config, init, base_model)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, tokenizer = load_trainable(base_model, init, config.lora, seed=config.seed)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: min(1.0, (t + 1) / (config.warmup_steps + 1))
        )
        data_rng = np.random.default_rng(config.seed)  # instances, settings, speed factors
        done = 0
        if (ckpt := latest_checkpoint(run_dir)) is not None:
            done = load_checkpoint(
                ckpt, model=model, optimizer=optimizer, scheduler=scheduler, rngs={"data": data_rng}
            ).step
        truncate_jsonl(run_dir / METRICS_FILE, keep_through=done)  # a killed run wrote past it
        drop_rollouts_after(run_dir, done)
        asyncio.run(_train(model, tokenizer, optimizer, scheduler, data_rng, done, config, run_dir))
        return save_adapter(model, run_dir / "adapter", base_model)
    finally:
        torch.set_num_threads(previous_threads)


async def _train(
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_rng: np.random.Generator,
    done: int,
    config: RLConfig,
    run_dir: Path,
) -> None:
    """Batches ``done + 1 .. config.steps``: rollouts, advantages, updates, record, checkpoint."""
    net = model.get_base_model()  # LoRA lives in its layers; its forward takes logits_to_keep
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bf16 = use_bf16(config.precision)

    def trainer_precision() -> contextlib.AbstractContextManager:
        return trainer_autocast(net, bf16)  # bf16 body, fp32 logits

    # Sampled log-probs serve as the old policy only when both sides computed them in fp32.
    recompute_old = bf16 or config.rollout_precision != "fp32"
    async with contextlib.AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(Runtime(clock=config.clock, seed=config.seed))
        progress = stack.enter_context(Progress(done, config.steps))
        for step in range(done + 1, config.steps + 1):
            started = wall_seconds()
            progress.phase(f"batch {step}: rollouts")
            policy = rollout_policy(net, tokenizer, step, config)
            groups = await rollout_batch(
                step, net, tokenizer, runtime, data_rng, config, policy=policy
            )
            rolled = wall_seconds()
            played = [g.trajectories for g in groups]
            episodes = sum(len(p) for p in played)
            seconds = rolled - started
            progress.phase(f"batch {step}: updates ({episodes} episodes in {seconds:.0f} s)")
            throughput = rollout_throughput(played, seconds, engine_stats(policy))
            policy.clear_cache()  # the rollouts' keys and values: GBs the update needs

            rewards = np.array(
                [[episode_reward(t, config) for t in g.trajectories] for g in groups]
            )
            advantages = group_advantages(rewards, config.loss, std_floor=config.adv_std_floor)
            samples, forms = batch_samples(groups, advantages, config)
            mismatch: dict[str, float | None] = dict.fromkeys(ROLLOUT_MISMATCH_FIELDS)
            with trainer_precision():
                if recompute_old and samples:  # old log-probs in the trainer's precision
                    samples, mismatch = with_trainer_logprobs(net, samples, config, pad_id)
                if config.beta > 0 and samples:
                    with reference_policy(model):
                        samples = with_reference_logprobs(net, samples, config, pad_id)
                lr = scheduler.get_last_lr()[0]
                updates = [
                    policy_step(
                        net, optimizer, samples, config,
                        scheduler=scheduler, pad_id=pad_id, measure_entropy=k == 0,
                    )
                    for k in range(config.updates_per_batch)
                ]  # fmt: skip
            net.eval()
            timing = {"rollout_s": seconds, "update_s": wall_seconds() - rolled}

            row = batch_metrics(step, groups, rewards, forms, samples, updates, timing)
            row["lr"] = lr
            row.update(mismatch)
            row.update({f"rollout_{k}": v for k, v in throughput.items() if k not in row})
            check_ratio(row, progress)
            append_jsonl(run_dir / METRICS_FILE, [row])
            write_rollouts(run_dir, step, groups, rewards, advantages)
            progress.advance(row)
            if step % config.save_every == 0 or step == config.steps:
                rngs = {"data": data_rng}
                save_checkpoint(
                    run_dir, step, model=model, optimizer=optimizer, scheduler=scheduler, rngs=rngs
                )
                plot_curves(run_dir / METRICS_FILE, run_dir / CURVES_FILE)
    if done >= config.steps:  # nothing left to run: still leave the curves
        plot_curves(run_dir / METRICS_FILE, run_dir / CURVES_FILE)


# --- rollouts -----------------------------------------------------------------------------------
@dataclass
class Group:
    """One task instance, its setting and its ``group_size`` rollouts."""

    task_id: str
    seed: int
    setting: Setting
    speed_factors: list[float]
    trajectories: list[Trajectory] = field(default_factory=list)


async def rollout_batch(
    step: int,
    model: Any,
    tokenizer: Any,
    runtime: Runtime,
    rng: np.random.Generator,
    config: RLConfig,
    *,
    policy: HFPolicy | None = None,
) -> list[Group]:
    """Draw ``prompts_per_step`` instances and settings, play ``group_size`` rollouts of each.

    Tasks take turns (``config.tasks`` round-robin over the run's prompts); seeds, settings and
    per-rollout speed factors come from ``rng``. Every rollout is its own episode (``sample=i``,
    its own tool session) and all of them run concurrently.

    Args:
        step: the 1-based batch number (seeds the rollout sampling).
        model: the causal LM to sample from (a peft model's base model, adapter active).
        tokenizer: its tokenizer.
        runtime: tool servers by latency, the calibrator, the clock kind.
        rng: the run's data Generator (advanced here).
        config: the RL config.
        policy: the rollout policy (default :func:`rollout_policy`); pass one to read its
            engine counters afterwards.
    """
    n_prompts, size = config.prompts_per_step, config.group_size
    groups = []
    # Which budget slice each prompt gets: shuffled, so a task is not tied to a slice by the
    # round-robin (always drawn, so the data stream does not depend on the flag).
    slices = [int(k) for k in rng.permutation(n_prompts)]
    for p in range(n_prompts):
        task_id = config.tasks[((step - 1) * n_prompts + p) % len(config.tasks)]
        seed = int(rng.integers(2**31))
        setting = await draw_setting(
            rng,
            runtime,
            instance(task_id, seed, config),
            latencies=config.latencies,
            time_modes=config.time_modes,
            multipliers=config.budget_multipliers,
            no_limit_share=config.no_limit_share,
            speed=config.speed,
            # The same clock the rollouts are charged on: the tokenizer's counts, as in the data.
            unconstrained=tokenized_calibrator(
                runtime, config.speed, tokenizer, config.calibration
            ),
            stratum=(slices[p], n_prompts) if config.stratify_budgets else None,
        )
        factors = [draw_speed_factor(rng, config.speed_factor) for _ in range(size)]
        groups.append(Group(task_id, seed, setting, factors))

    if policy is None:
        policy = rollout_policy(model, tokenizer, step, config)
    lockstep = _Lockstep(policy, n_prompts * size) if config.clock == "virtual" else None

    async def play(index: int, group: Group, sample: int) -> Trajectory:
        task = instance(group.task_id, group.seed, config)
        spec = group.setting.episode(
            task,
            task_options=config.task_options.get(group.task_id, {}),
            budget=episode_budget(group.setting, config),
            speed=scaled_speed(config.speed, group.speed_factors[sample]),
            sample=sample,
        )
        try:
            return await runtime.play(
                spec,
                lockstep.member(index) if lockstep is not None else policy,
                task=task,
                reward=config.reward,
                max_turns=config.max_turns,
                tools=await runtime.tools(spec.latency),
            )
        finally:
            if lockstep is not None:
                lockstep.finished(index)

    plays = [play(g * size + i, group, i) for g, group in enumerate(groups) for i in range(size)]
    try:
        trajectories = await asyncio.gather(*plays)
    finally:
        await policy.batcher.aclose()  # the wall clock's micro-batcher worker, if it started
    for g, group in enumerate(groups):
        group.trajectories = list(trajectories[g * size : (g + 1) * size])
    return groups


def rollout_policy(
    model: Any, tokenizer: Any, step: int, config: RLConfig, **engine: Any
) -> HFPolicy:
    """The policy batch ``step`` samples from: seeded per step, the whole batch in one call,
    in ``config.rollout_precision``. ``engine`` passes further HFPolicy options (the rollout
    benchmark sets ``kv_reuse``)."""
    return HFPolicy(
        model,
        tokenizer,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=derive_seed(config.seed, "rollout", step),
        max_batch_size=config.prompts_per_step * config.group_size,
        name="timely-rl",
        precision=config.rollout_precision,
        **engine,
    )


def instance(task_id: str, seed: int, config: RLConfig) -> Task:
    """A train-split instance with the config's options for its task (training never sees the
    test split)."""
    return make_task(task_id, seed=seed, split="train", **config.task_options.get(task_id, {}))


class _Lockstep:
    """Deterministic batching: a model call runs once every live episode is waiting on one.

    The requests go to ``HFPolicy.generate_batch`` in episode order, so which requests share a
    call, their rows and the call's seed are a function of the episodes alone, never of the
    event loop's timing. Virtual clocks only: on a wall clock the wait would be charged.
    """

    def __init__(self, policy: HFPolicy, n_episodes: int) -> None:
        self.policy, self.live = policy, n_episodes
        self.waiting: dict[int, tuple[tuple[Any, ...], asyncio.Future[Completion]]] = {}
        self.running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def member(self, index: int) -> _Member:
        return _Member(self, index, self.policy.name)

    async def generate(self, index: int, request: tuple[Any, ...]) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self.waiting[index] = (request, future)
        self._maybe_run()
        try:
            return await future
        except asyncio.CancelledError:
            self.waiting.pop(index, None)
            raise

    def finished(self, index: int) -> None:
        self.live -= 1
        self._maybe_run()

    def _maybe_run(self) -> None:
        if self.waiting and len(self.waiting) >= self.live:
            batch, self.waiting = sorted(self.waiting.items()), {}
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, batch: list[tuple[int, tuple[tuple[Any, ...], Any]]]) -> None:
        futures = [future for _, (_, future) in batch]
        try:
            results = await self.policy.generate_batch([request for _, (request, _) in batch])
        except Exception as exc:  # the episodes record it as a policy error
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)


@dataclass
class _Member:
    """One episode's view of the lockstep batcher: a Policy whose ``generate`` waits for the
    lockstep call; anything else the loop asks (``count_prompt_tokens``) is the policy's, so
    rollouts see the same token caps as the policy would give an eval."""

    lockstep: _Lockstep
    index: int
    name: str

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Any
    ) -> Completion:
        return await self.lockstep.generate(self.index, (messages, tools, deadline))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "lockstep":  # copies and pickles look these up
            raise AttributeError(name)
        return getattr(self.lockstep.policy, name)


# --- rewards and training rows ------------------------------------------------------------------
def trajectory_rows(trajectory: Trajectory) -> tuple[list[tuple[list, list, list]], str | None]:
    """``(token_ids, mask, old_logprobs)`` rows of an episode and its view form.

    One row under the prefix property, one per turn otherwise; no rows (form None) when the
    episode sampled nothing or has no token records.
    """
    try:
        view = training_view(trajectory)
    except TrainingDataError:
        return [], None
    if view.sequence is not None:
        seq = view.sequence
        return [(seq.token_ids, seq.loss_mask, seq.logprobs)], ViewForm.SEQUENCE.value
    rows = [
        (
            t.prompt_ids + t.completion_ids,
            [0] * len(t.prompt_ids) + [1] * len(t.completion_ids),
            [0.0] * len(t.prompt_ids) + t.logprobs,
        )
        for t in view.turns
        if t.completion_ids
    ]
    return rows, ViewForm.TURNS.value


def batch_samples(
    groups: Sequence[Group], advantages: np.ndarray, config: RLConfig
) -> tuple[list[Sample], list[str | None]]:
    """The batch's rows and each episode's view form (None: nothing to train on).

    Zero-advantage rows are dropped when ``beta == 0`` (they carry no gradient), after the
    weights were computed with them, so the loss is that of the whole batch.
    """
    rows, adv, episodes, forms = [], [], [], []
    for g, group in enumerate(groups):
        for i, trajectory in enumerate(group.trajectories):
            episode_rows, form = trajectory_rows(trajectory)
            forms.append(form)
            for row in episode_rows:
                rows.append(row)
                adv.append(float(advantages[g, i]))
                episodes.append(g * config.group_size + i)
    samples = build_batch(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        adv,
        loss=config.loss,
        max_tokens=config.max_new_tokens * config.max_turns,
        episodes=episodes,
        n_episodes=len(groups) * config.group_size,
    )
    if config.beta == 0:
        samples = [s for s in samples if s.advantage != 0.0]
    return [s for s in samples if s.n_tokens], forms
