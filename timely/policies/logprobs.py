"""Sampling log-probabilities: one definition for the sampler that records them and the trainer.

The recorded log-probability of a sampled token is ``log_softmax(logits / temperature)`` at
that token (``log_softmax(logits)`` for greedy decoding, ``temperature == 0``): the
temperature-scaled distribution *before* top-p truncation. That is exactly what a trainer
computes when it recomputes "old" log-probs from the stored ids with the same weights (verl's
actor and TRL's GRPO both divide the logits by the rollout temperature and take a full-vocabulary
log-softmax), so with unchanged weights the importance ratio is exactly 1 and PPO clipping never
fires on sampler/trainer mismatch. vLLM returns pre-truncation values too (its default
``logprobs_mode="raw_logprobs"`` is even before temperature; ``processed_logprobs`` is after
temperature and top-k/top-p).

Top-p only decides which tokens may be drawn (:func:`sample_next` draws from the nucleus of the
scaled distribution); it is not part of the recorded value. A trainer that wants the truncated
probability reproduces it from the same logits: apply :func:`top_p_mask` to
``logits / temperature`` and take the log-softmax over the kept tokens, i.e. subtract the log of
the nucleus mass from the recorded value.

The sampler (:mod:`timely.policies.hf_generate`) and :func:`recompute_logprobs` both go through
:func:`token_logprobs`, so the two cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float32 logits divided by the temperature (unchanged for greedy, ``temperature == 0``)."""
    logits = logits.float()
    return logits / temperature if temperature > 0 else logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of ``tokens`` under ``log_softmax(logits / temperature)``.

    Args:
        logits: ``[..., vocab]`` raw model logits.
        tokens: ``[...]`` token ids, one per row of ``logits``.
        temperature: the sampling temperature; 0 (greedy) means the unscaled distribution.

    Returns:
        ``[...]`` float32 log-probabilities (pre-truncation; see the module docstring).
    """
    logp = torch.log_softmax(scaled_logits(logits, temperature), dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def top_p_mask(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean ``[batch, vocab]`` mask of the tokens outside the top-p nucleus of ``scaled``.

    The nucleus is the smallest set of most probable tokens whose probability reaches ``top_p``
    (at least one token). ``top_p >= 1`` removes nothing.
    """
    if top_p >= 1.0:
        return torch.zeros_like(scaled, dtype=torch.bool)
    ordered, order = scaled.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more probable tokens
    remove_sorted = before >= top_p
    remove_sorted[..., 0] = False
    return torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per row and return it with its recorded log-probability.

    Greedy (``temperature == 0``) takes the argmax; otherwise the token is drawn from the top-p
    nucleus of ``softmax(logits / temperature)`` with ``generator``.

    Args:
        logits: ``[batch, vocab]`` raw logits of the next position.
        temperature: 0 for greedy decoding.
        top_p: nucleus threshold (sampling only).
        generator: the random source of the draw (sampling only).

    Returns:
        ``(tokens, logprobs)``, each ``[batch]``; ``logprobs`` as in :func:`token_logprobs`.
    """
    scaled = scaled_logits(logits, temperature)
    if temperature > 0:
        kept = scaled.masked_fill(top_p_mask(scaled, top_p), float("-inf"))
        tokens = torch.multinomial(kept.softmax(dim=-1), 1, generator=generator).squeeze(1)
    else:
        tokens = scaled.argmax(dim=-1)
    logp = torch.log_softmax(scaled, dim=-1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def recompute_logprobs(
    model: Any,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    temperature: float,
) -> list[float]:
    """Recompute recorded log-probs with one teacher-forced forward pass over prompt + completion.

    This is the trainer's side of the contract: with the weights that sampled
    ``completion_ids`` after ``prompt_ids`` (at ``temperature``, any top-p), the result equals
    the recorded ``logprobs`` up to float rounding. It runs the model in whatever dtype and on
    whatever device it is; use float32 for an exact check.

    Args:
        model: a causal LM (transformers-style: ``model(input_ids=...)`` returns ``.logits``).
        prompt_ids: the exact prompt ids the model saw (non-empty).
        completion_ids: the sampled ids (stop token included).
        temperature: the sampling temperature (0 for greedy).

    Returns:
        One log-probability per completion token.
    """
    if not prompt_ids:
        raise ValueError("recompute_logprobs needs the prompt ids (at least one token)")
    n = len(completion_ids)
    if n == 0:
        return []
    device = getattr(model, "device", torch.device("cpu"))
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], dtype=torch.long, device=device)
    # Logits are needed only where a completion token is predicted: the last n + 1 positions
    # (the very last one predicts nothing). Keeping only those saves vocab x length floats.
    keep = {"logits_to_keep": n + 1} if accepts_logits_to_keep(model) else {}
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False, **keep).logits[0, -(n + 1) : -1]
    targets = ids[0, -n:]
    return token_logprobs(logits, targets, temperature).cpu().tolist()


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers causal LMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
