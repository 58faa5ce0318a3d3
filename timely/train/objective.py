"""The Timely-RL objective on tensors: advantages, loss weights, the clipped loss, one step.

Nothing here knows about episodes or clocks; :mod:`timely.train.grpo` turns trajectories into
:class:`Sample` rows and calls :func:`policy_step`. Kept apart so one optimizer step on a given
batch of (sequences, masks, old log-probs, advantages) can be timed on its own (against TRL's
GRPO step, for instance): build the rows with :func:`build_batch`, then call
:func:`policy_step`.

Conventions (TRL 1.16 and verl agree on them, see the GRPO notes of the RL-frameworks
reference):

* advantages per group, ``(r - mean) / (max(std, std_floor) + eps)`` with the unbiased std and
  ``eps = 1e-4`` (grpo, dapo; TRL has no floor) or ``r - mean`` (dr_grpo); an all-equal group
  gets exactly 0;
* the ratio is ``exp(new - old)`` against the **recorded** sampling log-probs (bf16 rollouts:
  against the trainer's own recompute, :func:`with_trainer_logprobs`), the loss
  ``-min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A)`` per sampled token, log-ratios
  clamped to +-20, plus ``beta`` times the k3 KL ``exp(ref - new) - (ref - new) - 1``;
* log-probs are ``log_softmax(logits / temperature)`` at the sampled id, the sampler's own
  definition (:func:`timely.policies.logprobs.token_logprobs`);
* aggregation by per-token weights (:func:`build_batch`): grpo averages each episode's tokens
  and then the episodes, dr_grpo divides the token sum by ``n_episodes x max_tokens``, dapo
  averages every token of the batch. A weighted sum is independent of how rows are split into
  micro-batches, and of whether an episode is one row or one row per turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from timely.errors import ConfigError
from timely.policies.logprobs import accepts_logits_to_keep, token_logprobs
from timely.train.config import RLConfig

ADV_EPS = 1e-4  # TRL's epsilon in (r - mean) / (std + eps)
MIN_SHARED_PREFIX = 16  # shorter common prefixes are not worth a separate pass
# The rollout-vs-trainer log-prob gap :func:`with_trainer_logprobs` measures (bf16 rollouts).
ROLLOUT_MISMATCH_FIELDS = ("rollout_logprob_diff_mean", "rollout_logprob_diff_max")


def group_advantages(
    rewards: np.ndarray, loss: str, eps: float = ADV_EPS, *, std_floor: float = 0.0
) -> np.ndarray:
    """Group-normalised advantages of a ``[prompts, group_size]`` reward array.

    ``grpo`` and ``dapo``: ``(r - mean) / (max(std, std_floor) + eps)`` with the unbiased std
    of the group; ``dr_grpo``: ``r - mean``. A group whose rewards are all equal gets exactly 0.
    The floor keeps a group of near-equal rewards (bonus noise of ~0.01) near 0 instead of
    scaling it up to +-1; above the floor the advantages are the plain std-normalised ones.

    Args:
        rewards: the rewards, one row per group.
        loss: grpo, dr_grpo or dapo.
        eps: added to the divisor (TRL's epsilon).
        std_floor: the least std a group is divided by (``RLConfig.adv_std_floor``).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if loss != "dr_grpo":
        std = rewards.std(axis=1, ddof=1, keepdims=True)
        centred = centred / (np.maximum(std, std_floor) + eps)
    flat = np.ptp(rewards, axis=1, keepdims=True) == 0
    return np.where(flat, 0.0, centred)


@dataclass(frozen=True)
class Sample:
    """One row of an update: a token sequence, its loss mask and the recorded log-probs.

    Attributes:
        token_ids: the sequence the model saw (and sampled, where ``mask`` is 1).
        mask: 1 on policy-sampled ids, 0 elsewhere.
        old_logprobs: the recorded sampling log-prob on sampled ids (0.0 elsewhere).
        advantage: the episode's advantage, on every sampled token.
        episode: which episode of the batch the row belongs to (several rows in turns form).
        weight: the loss weight of each of its sampled tokens (the aggregation).
        ref_logprobs: the reference policy's log-probs of the sampled ids (``beta > 0``).
    """

    token_ids: list[int]
    mask: list[int]
    old_logprobs: list[float]
    advantage: float
    episode: int
    weight: float = 0.0
    ref_logprobs: list[float] | None = None

    @property
    def n_tokens(self) -> int:
        return sum(self.mask)


def build_batch(
    sequences: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    old_logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    *,
    loss: str,
    max_tokens: int,
    episodes: Sequence[int] | None = None,
    n_episodes: int | None = None,
) -> list[Sample]:
    """Rows with the loss weights of aggregation ``loss`` (grpo, dr_grpo or dapo).

    With these weights the batch loss is ``sum(weight * token_loss)`` over sampled tokens,
    whatever the micro-batching: grpo ``1 / (n_episodes * episode_tokens)``, dr_grpo
    ``1 / (n_episodes * max_tokens)``, dapo ``1 / batch_tokens``.

    Args:
        sequences: token ids per row.
        masks: 1 on sampled ids per row.
        old_logprobs: recorded sampling log-probs per row, aligned with the ids.
        advantages: one per row (its episode's).
        loss: the aggregation.
        max_tokens: dr_grpo's constant per episode (``max_new_tokens * max_turns``).
        episodes: the episode of each row (default: every row its own episode).
        n_episodes: episodes in the batch, those without rows included (default: the distinct
            ``episodes``).
    """
    episodes = list(range(len(sequences))) if episodes is None else list(episodes)
    per_episode: Counter[int] = Counter()
    for episode, mask in zip(episodes, masks, strict=True):
        per_episode[episode] += sum(mask)
    n = n_episodes if n_episodes is not None else len(per_episode)
    total = sum(per_episode.values())
    samples = []
    for ids, mask, old, adv, episode in zip(
        sequences, masks, old_logprobs, advantages, episodes, strict=True
    ):
        if loss == "grpo":
            weight = 1.0 / (n * max(per_episode[episode], 1))
        elif loss == "dr_grpo":
            weight = 1.0 / (n * max_tokens)
        elif loss == "dapo":
            weight = 1.0 / max(total, 1)
        else:
            raise ConfigError(f"unknown loss {loss!r}; use grpo, dr_grpo or dapo")
        samples.append(Sample(list(ids), list(mask), list(old), float(adv), episode, weight))
    return samples


@dataclass
class UpdateStats:
    """What one optimizer pass over a batch measured (token means over sampled tokens)."""

    loss: float = 0.0
    tokens: int = 0
    rows: int = 0
    ratio_dev: float | None = None  # mean |ratio - 1|
    ratio_dev_max: float | None = None
    clip_frac: float | None = None
    kl_ref: float | None = None  # k3 to the reference (beta > 0)
    kl_old: float | None = None  # k3 between the sampling policy and the current one
    entropy: float | None = None  # of the sampling distribution (measure_entropy)
    grad_norm: float | None = None
    stepped: bool = False


def token_loss(
    new: torch.Tensor,
    old: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    beta: float = 0.0,
    ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token PPO-clipped loss (plus ``beta`` x k3 KL to ``ref``), flat over sampled tokens.

    ``ratio = exp(new - old)``; loss ``-min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A)
    + beta (exp(ref - new) - (ref - new) - 1)``. Log-ratios are clamped to +-20 (as verl does).

    Returns:
        ``(loss, ratio, k3)``; ``k3`` is None without a reference.
    """
    ratio = torch.exp((new - old).clamp(-20.0, 20.0))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    k3 = None
    if ref is not None:
        delta = (ref - new).clamp(-20.0, 20.0)
        k3 = torch.exp(delta) - delta - 1.0
        if beta > 0:
            loss = loss + beta * k3
    return loss, ratio, k3


def policy_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    samples: Sequence[Sample],
    config: RLConfig,
    *,
    scheduler: Any = None,
    pad_id: int = 0,
    measure_entropy: bool = False,
) -> UpdateStats:
    """One optimizer step on a batch: micro-batched forwards, accumulated gradients, clip, step.

    The loss is ``sum(weight * token_loss)`` over the sampled tokens (see :func:`build_batch`
    for the weights and :func:`token_loss` for the per-token term), so it does not depend on
    ``config.micro_batch_size``. An empty batch does nothing (no optimizer or scheduler step:
    stale Adam momentum must not move the weights on a batch without signal).

    Args:
        model: the causal LM being trained (its trainable parameters are the optimizer's).
        optimizer: its optimizer.
        samples: the rows, with weights (and ``ref_logprobs`` when ``config.beta > 0``).
        config: temperature, clip epsilons, beta, micro-batch size, grad clip, loss.
        scheduler: stepped after the optimizer, if given.
        pad_id: fills right padding (masked out).
        measure_entropy: also measure the entropy of the sampling distribution (no gradient).
    """
    stats = UpdateStats()
    if not samples:
        return stats
    clip_high = config.clip_high if config.loss == "dapo" else config.clip_low
    sums = Counter[str]()
    dev_max = 0.0
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for chunk in _micro_batches(samples, config.micro_batch_size, config.micro_batch_tokens):
        new, entropy = sample_logprobs(
            model, chunk, config.temperature, pad_id=pad_id, entropy=measure_entropy
        )
        old = torch.tensor(
            [lp for s in chunk for lp, m in zip(s.old_logprobs, s.mask, strict=True) if m]
        )
        adv = torch.tensor([s.advantage for s in chunk for _ in range(s.n_tokens)])
        weight = torch.tensor([s.weight for s in chunk for _ in range(s.n_tokens)])
        ref = None
        if config.beta > 0:
            ref = torch.tensor([lp for s in chunk for lp in (s.ref_logprobs or [])])
        loss, ratio, k3 = token_loss(
            new, old, adv, clip_low=config.clip_low, clip_high=clip_high, beta=config.beta, ref=ref
        )
        total = (weight * loss).sum()
        total.backward()
        with torch.no_grad():
            dev = (ratio - 1.0).abs()
            clipped = ((ratio > 1 + clip_high) & (adv > 0)) | (
                (ratio < 1 - config.clip_low) & (adv < 0)
            )
            delta = (old - new).clamp(-20.0, 20.0)
            sums["loss"] += float(total)
            sums["dev"] += float(dev.sum())
            sums["clipped"] += int(clipped.sum())
            sums["kl_old"] += float((torch.exp(delta) - delta - 1.0).sum())
            sums["kl_ref"] += float(k3.sum()) if k3 is not None else 0.0
            sums["entropy"] += float(entropy.sum()) if entropy is not None else 0.0
            sums["tokens"] += new.numel()
            dev_max = max(dev_max, float(dev.max()))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    n = max(sums["tokens"], 1)
    return UpdateStats(
        loss=sums["loss"],
        tokens=sums["tokens"],
        rows=len(samples),
        ratio_dev=sums["dev"] / n,
        ratio_dev_max=dev_max,
        clip_frac=sums["clipped"] / n,
        kl_ref=sums["kl_ref"] / n if config.beta > 0 else None,
        kl_old=sums["kl_old"] / n,
        entropy=sums["entropy"] / n if measure_entropy else None,
        grad_norm=float(grad_norm),
        stepped=True,
    )


@contextlib.contextmanager
def trainer_autocast(model: Any, enabled: bool) -> Iterator[None]:
    """bf16 autocast for the transformer body, with the output projection kept in fp32.

    Under plain autocast the logits come out of a bf16 matmul: at logit magnitudes of 16-32
    bf16 resolves steps of 0.125, coarser than most of the log-prob differences the loss, the
    reference KL and the ratio are made of. The head alone in fp32 costs one [tokens x hidden]
    x [hidden x vocab] matmul at the kept positions. What it cannot fix: the body's bf16
    activations (~0.4% resolution) also hide an optimizer step much smaller than that, so at
    the CPU recipe's learning rates the second update of a batch sees the same forward as the
    first (ratio exactly 1, no clipping) while the fp32 weights still accumulate every step;
    ``precision="fp32"`` resolves it at about twice the update time.

    Args:
        model: a causal LM (or a peft model over one); its ``get_output_embeddings`` linear
            layer is the head kept in fp32.
        enabled: False runs everything in fp32 and leaves the model untouched.
    """
    if not enabled:
        yield
        return
    find = getattr(model, "get_output_embeddings", None)
    head = find() if callable(find) else None
    if not isinstance(head, torch.nn.Linear):  # a model without a linear head: autocast only
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
        return

    def fp32_head(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = fp32_head
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        del head.forward  # the module's own forward again


def sample_logprobs(
    model: Any,
    chunk: Sequence[Sample],
    temperature: float,
    *,
    pad_id: int = 0,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the sampled ids of ``chunk`` by one teacher-forced forward pass.

    The prefix every row shares (a group's prompt: the rollouts of one instance start alike,
    and instances of one task share their system prompt) runs once, and its KV cache is
    repeated for the rows; gradients flow through it as through a full pass. The rest is
    right-padded, so positions and attention are those of each row alone without a mask.
    Logits are kept only from the first sampled position on (``logits_to_keep``) and the
    full-vocabulary work is done only at sampled positions. Values follow the sampler's
    definition, ``log_softmax(logits / temperature)`` at the sampled id.

    Returns:
        ``(logprobs, entropy)``: flat over the sampled tokens in row order; ``entropy`` of the
        temperature-scaled distribution at each (no gradient), or None.
    """
    width = max(len(s.token_ids) for s in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.bool)
    for r, s in enumerate(chunk):
        ids[r, : len(s.token_ids)] = torch.tensor(s.token_ids)
        mask[r, : len(s.mask)] = torch.tensor(s.mask, dtype=torch.bool)
    first = min(s.mask.index(1) for s in chunk)  # every row has a sampled token
    device = getattr(model, "device", torch.device("cpu"))
    keep = width - first + 1  # positions first-1 .. width-1; the last one predicts nothing
    # The shared prefix stops before position first-1, whose logits the suffix pass computes.
    shared = _shared_prefix(chunk, first - 1) if len(chunk) > 1 else 0
    cache = None
    if shared >= MIN_SHARED_PREFIX and accepts_logits_to_keep(model):
        prefix = ids[:1, :shared].to(device)
        cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(len(chunk))
    else:
        shared = 0
    kwargs: dict[str, Any] = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    if cache is not None:
        positions = torch.arange(shared, width, device=device).expand(len(chunk), -1)
        kwargs.update(past_key_values=cache, position_ids=positions, use_cache=True)
    else:
        kwargs["use_cache"] = False
    # No attention mask: with right padding causality alone keeps every real token from the
    # pads, and the unmasked causal path is several times faster than a padded mask.
    out = model(input_ids=ids[:, shared:].to(device), **kwargs)
    logits = (
        out.logits[:, -keep:-1] if "logits_to_keep" in kwargs else out.logits[:, first - 1 : -1]
    )
    picked = mask[:, first:].to(device)
    selected = logits[picked]  # [sampled tokens, vocab]
    targets = ids[:, first:].to(device)[picked]
    logprobs = token_logprobs(selected, targets, temperature)
    ent = None
    if entropy:
        with torch.no_grad():
            scaled = selected.float() / temperature if temperature > 0 else selected.float()
            logp = torch.log_softmax(scaled, dim=-1)
            ent = -(logp.exp() * logp).sum(-1)
    return logprobs.cpu(), ent.cpu() if ent is not None else None


def _shared_prefix(chunk: Sequence[Sample], limit: int) -> int:
    """How many leading ids (at most ``limit``) every row of ``chunk`` has in common."""
    head = chunk[0].token_ids[:limit]
    n = len(head)
    for s in chunk[1:]:
        other = s.token_ids[:n]
        n = next((i for i, (a, b) in enumerate(zip(head, other, strict=False)) if a != b), n)
        n = min(n, len(other))
    return n


def _micro_batches(
    samples: Sequence[Sample], size: int, max_tokens: int | None = None
) -> Iterator[list[Sample]]:
    """Rows in chunks of at most ``size`` rows and ``max_tokens`` padded tokens (rows x longest;
    a longer row goes alone), sorted by their prompt (the first sampled id's prefix) and then by
    length, so a chunk tends to share a long prefix and little padding; deterministic.
    """

    def key(i: int) -> tuple[list[int], int, int]:
        s = samples[i]
        return s.token_ids[: s.mask.index(1)], len(s.token_ids), i

    chunk: list[Sample] = []
    for j in sorted(range(len(samples)), key=key):
        row = samples[j]
        width = max([len(s.token_ids) for s in chunk] + [len(row.token_ids)])
        if chunk and (len(chunk) == size or (max_tokens and (len(chunk) + 1) * width > max_tokens)):
            yield chunk
            chunk = []
        chunk.append(row)
    if chunk:
        yield chunk


def with_reference_logprobs(
    model: Any, samples: Sequence[Sample], config: RLConfig, pad_id: int = 0
) -> list[Sample]:
    """The samples with ``ref_logprobs`` from the current model (call inside
    :func:`reference_policy`), computed once per batch."""
    out: dict[int, Sample] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    with torch.no_grad():
        for chunk in _micro_batches(samples, config.micro_batch_size, config.micro_batch_tokens):
            flat, _ = sample_logprobs(model, chunk, config.temperature, pad_id=pad_id)
            for s, values in zip(chunk, flat.split([s.n_tokens for s in chunk]), strict=True):
                out[index[id(s)]] = dataclasses.replace(s, ref_logprobs=values.tolist())
    return [out[i] for i in range(len(samples))]


def with_trainer_logprobs(
    model: Any, samples: Sequence[Sample], config: RLConfig, pad_id: int = 0
) -> tuple[list[Sample], dict[str, float | None]]:
    """The samples with ``old_logprobs`` recomputed by the trainer, and how far the rollout's were.

    bf16 rollouts sample from a bf16 copy of the weights, so their recorded log-probs differ
    from what the fp32 trainer computes for the same weights; taking them as the "old" policy
    would make the importance ratio of the first update wander from 1 for reasons that are not
    learning. As verl does, the old log-probs are then recomputed before the update, without
    gradients, in the trainer's precision and with the same micro-batches and forward as
    :func:`policy_step`, so the first update's ratio is exactly 1. The gap between the two
    records is the rollout mismatch, worth watching (a large one means the sampler's
    distribution is not the one being trained). fp32 rollouts skip this: their recorded log-
    probs are already the trainer's.

    Returns:
        ``(samples, metrics)``: ``metrics`` has ``rollout_logprob_diff_mean`` and
        ``rollout_logprob_diff_max``, mean and max ``|recorded - recomputed|`` over the sampled
        tokens (None for an empty batch).
    """
    out: dict[int, Sample] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    total, count, worst = 0.0, 0, 0.0
    model.train()  # the mode policy_step computes the new log-probs in
    with torch.no_grad():
        for chunk in _micro_batches(samples, config.micro_batch_size, config.micro_batch_tokens):
            flat, _ = sample_logprobs(model, chunk, config.temperature, pad_id=pad_id)
            for s, values in zip(chunk, flat.split([s.n_tokens for s in chunk]), strict=True):
                recorded = torch.tensor(
                    [lp for lp, m in zip(s.old_logprobs, s.mask, strict=True) if m]
                )
                gap = (recorded - values).abs()
                total, count = total + float(gap.sum()), count + gap.numel()
                worst = max(worst, float(gap.max())) if gap.numel() else worst
                it = iter(values.tolist())
                old = [next(it) if m else 0.0 for m in s.mask]
                out[index[id(s)]] = dataclasses.replace(s, old_logprobs=old)
    mean, most = (total / count, worst) if count else (None, None)
    metrics = dict(zip(ROLLOUT_MISMATCH_FIELDS, (mean, most), strict=True))
    return [out[i] for i in range(len(samples))], metrics
