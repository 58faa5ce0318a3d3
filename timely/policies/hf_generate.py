"""Batched generation for the local transformers policy: left padding, per-row limits, records.

:func:`generate_rows` is a small cached decode loop over a transformers causal LM rather than a
call to ``model.generate``. The reason is the log-probability record: ``model.generate`` builds
its logits-processor chain itself (in transformers 5.23, ``_get_logits_processor`` puts custom
processors after the model's configured ones, such as a repetition penalty from its
``generation_config``, and *before* the temperature and top-p warpers), so what a recording
processor sees depends on the installed version and on the model's generation config. Here the
logits of each step go straight from the model to :func:`~timely.policies.logprobs.sample_next`,
which picks the token and records its log-probability from the same tensor; nothing else touches
them. Memory stays at one ``[batch, vocab]`` float32 tensor per step (the prompt pass keeps only
the last position's logits).

Rows are left-padded to one width; position ids count real tokens only (pads get position 0
and are masked out), so a row's positions are those of the same prompt run alone, and a
teacher-forced recomputation over the unpadded ids sees the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from timely.clock import wall_seconds
from timely.policies.kv_cache import GenerationStats, KVStore
from timely.policies.logprobs import accepts_logits_to_keep, sample_next


@dataclass
class GeneratedRow:
    """One row of a batched generation: the sampled ids (stop token included) and why it ended.

    ``logprobs[i]`` is ``token_ids[i]``'s log-probability under the sampling distribution with
    temperature applied, before top-p truncation (see :mod:`timely.policies.logprobs`).
    """

    token_ids: list[int]
    logprobs: list[float]
    reason: str  # "stop" | "length" | "deadline"
    ended: float = 0.0  # wall_seconds() when the batch holding this row finished


def generate_rows(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    caps: Sequence[int],
    wall_ends: Sequence[float | None],
    abandoned: Callable[[int], bool],
    pad_id: int,
    stop_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    store: KVStore | None = None,
    stats: GenerationStats | None = None,
) -> list[GeneratedRow]:
    """Generate for all ``prompts`` at once (left-padded) with per-row limits.

    Each row's generated ids stop at (and include) its first stop token, or at its cap, or when
    its wall end passes or its caller gives up. Greedy decoding (``temperature == 0``) takes the
    argmax; sampling draws from the top-p nucleus of ``softmax(logits / temperature)`` with a
    generator seeded by ``seed`` (the global torch RNG is left alone).

    Args:
        model: a transformers causal LM.
        prompts: token ids per row (each non-empty).
        caps: most new tokens per row.
        wall_ends: per row, the ``wall_seconds()`` after which it stops, or None.
        abandoned: ``abandoned(i)`` is true once row ``i``'s caller stopped waiting.
        pad_id: the id that fills left padding and finished rows.
        stop_ids: ids that end a row (kept in its ids).
        temperature: 0 for greedy decoding.
        top_p: nucleus threshold (sampling only).
        seed: seeds the sampling generator.
        store: a prefix cache: when given, generation reuses stored keys and values and drops
            finished rows (:func:`~timely.policies.hf_cached.generate_cached`, which seeds
            each sampled row on its own); without it, the plain full-prefill loop below runs.
        stats: work counts for the cached path (required with ``store``).

    Returns:
        One :class:`GeneratedRow` per prompt, in order.
    """
    if store is not None:
        from timely.policies.hf_cached import generate_cached  # it imports this module

        return generate_cached(
            model,
            prompts,
            caps=caps,
            wall_ends=wall_ends,
            abandoned=abandoned,
            pad_id=pad_id,
            stop_ids=stop_ids,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            store=store,
            stats=stats if stats is not None else GenerationStats(),
        )
    device = model.device
    n_rows = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n_rows, width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[i, width - len(prompt) :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    input_ids, attention, positions = (t.to(device) for t in (input_ids, attention, positions))

    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    limits = _RowLimits(caps, wall_ends, abandoned, stop_ids)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    pad = torch.tensor(pad_id, dtype=torch.long, device=device)
    tokens: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    with torch.inference_mode():
        out = model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **keep,
        )
        next_position = positions[:, -1:] + 1
        finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        for _ in range(max(caps)):
            chosen, logp = sample_next(
                out.logits[:, -1, :], temperature=temperature, top_p=top_p, generator=generator
            )
            chosen = torch.where(finished, pad, chosen)  # finished rows only carry padding
            tokens.append(chosen)
            logprobs.append(logp)
            finished = limits.update(len(tokens), chosen.tolist(), device)
            if bool(finished.all()):
                break
            attention = torch.cat([attention, attention.new_ones((n_rows, 1))], dim=1)
            out = model(
                input_ids=chosen[:, None],
                attention_mask=attention,
                position_ids=next_position,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            next_position = next_position + 1
    generated = torch.stack(tokens, dim=1).cpu()
    recorded = torch.stack(logprobs, dim=1).cpu()
    rows = []
    for i in range(n_rows):
        n = limits.length[i] if limits.length[i] is not None else generated.shape[1]
        rows.append(
            GeneratedRow(
                token_ids=generated[i, :n].tolist(),
                logprobs=recorded[i, :n].tolist(),
                reason=limits.reason[i] or "length",
            )
        )
    return rows


class _RowLimits:
    """Per-row stop conditions: stop token, token cap, wall end, abandoned caller."""

    def __init__(
        self,
        caps: Sequence[int],
        wall_ends: Sequence[float | None],
        abandoned: Callable[[int], bool],
        stop_ids: Sequence[int],
    ) -> None:
        self.caps = list(caps)
        self.wall_ends = list(wall_ends)
        self.abandoned = abandoned
        self.stop_ids = set(stop_ids)
        self.length: list[int | None] = [None] * len(self.caps)
        self.reason: list[str | None] = [None] * len(self.caps)

    def update(self, n: int, last: list[int], device: Any) -> torch.Tensor:
        """Record which rows ended with their ``n``-th token ``last[i]``; returns the done mask."""
        now = wall_seconds()
        for i, token in enumerate(last):
            if self.reason[i] is not None:
                continue
            if token in self.stop_ids:
                self.reason[i] = "stop"
            elif n >= self.caps[i]:
                self.reason[i] = "length"
            elif ((end := self.wall_ends[i]) is not None and now >= end) or self.abandoned(i):
                self.reason[i] = "deadline"
            if self.reason[i] is not None:
                self.length[i] = n
        done = [r is not None for r in self.reason]
        return torch.tensor(done, dtype=torch.bool, device=device)
