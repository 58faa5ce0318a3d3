"""Prefill with reuse: a batch's new tokens computed on top of stored keys and values.

The layout (see :mod:`timely.policies.hf_cached`): each row's reused keys and values are
left-padded into a cache segment of the batch's longest reuse, the new tokens left-padded into a
new segment, a 2D attention mask zero at every pad and explicit position ids that count a row's
real tokens only. Prefixes that several prompts of a batch share are prefilled once and stored
first, so every row's lookup finds them; a large prefill runs in parts bounded by attention size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from timely.policies.kv_cache import (
    GenerationStats,
    Hit,
    KVStore,
    cache_from_layers,
    cache_layers,
    common_prefix,
    row_layers,
    select_rows,
)

# Most attention scores (rows x new tokens x batch width) of one prefill forward: the old bound
# (MAX_BATCH_TOKENS padded prompt tokens, 8 rows of a 2k-token game) at full prefill. With reuse
# the new tokens are few, so far longer conversations fit one decode batch; a long first prompt
# is still prefilled a few rows at a time.
MAX_PREFILL_SCORES = 8 * 2048 * 2048

# A prefix shared by several prompts of a batch is prefilled on its own only when it saves at
# least this many tokens per prompt: below that the extra forward call costs more than it saves.
MIN_SHARED_PREFIX = 16


class Batch:
    """The live decode batch: its cache, 2D mask, each row's next position and last logits."""

    def __init__(
        self, cache: Any, mask: torch.Tensor, next_position: torch.Tensor, logits: torch.Tensor
    ) -> None:
        self.cache, self.mask, self.next_position, self.logits = cache, mask, next_position, logits

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows``, and drop leading columns that are padding in every kept row."""
        self.mask = self.mask[rows]
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if real.numel() else 0
        self.mask = self.mask[:, start:]
        select_rows(self.cache, rows, start)
        self.next_position = self.next_position[rows]
        self.logits = self.logits[rows]

    def extend(self, other: Batch) -> None:
        """Append ``other``'s rows below these, both right-aligned to the wider of the two."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        layers = []
        for (k1, v1), (k2, v2) in zip(
            cache_layers(self.cache), cache_layers(other.cache), strict=True
        ):
            layers.append((_cat_right(k1, k2, width), _cat_right(v1, v2, width)))
        self.cache = cache_from_layers(layers, len(layers))
        self.mask = _cat_right(self.mask, other.mask, width, dim=1)
        self.next_position = torch.cat([self.next_position, other.next_position])
        self.logits = torch.cat([self.logits, other.logits])


def _cat_right(a: torch.Tensor, b: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``a`` and ``b`` stacked on dim 0, each left-padded with zeros to ``width`` on ``dim``."""
    parts = []
    for t in (a, b):
        if t.shape[dim] < width:
            shape = list(t.shape)
            shape[dim] = width - t.shape[dim]
            t = torch.cat([t.new_zeros(shape), t], dim=dim)
        parts.append(t)
    return torch.cat(parts)


def share_prefixes(
    model: Any,
    prompts: list[list[int]],
    store: KVStore,
    pad_id: int,
    keep: dict[str, int],
    stats: GenerationStats,
    computed: list[int],
    *,
    whole: bool = False,
) -> None:
    """Prefill once, and store, every prefix that several distinct ``prompts`` share beyond
    what the store already holds for them (recursively: shared prefixes of those prefixes
    first).

    A prompt's own last token is left out of what it shares (it is prefilled with the prompt,
    for the logits); the recursive calls pass prefixes that are stored ``whole``. Capping
    those too made a prompt that is a strict prefix of another (one episode's turn, another's
    next turn) recurse once per token, past Python's recursion limit on game prompts; stored
    whole, every level merges at least two of its prefixes, so the depth is at most the
    number of prompts.
    """
    ordered = sorted({tuple(p) for p in prompts})
    if len(ordered) < 2:
        return
    arrays = [np.asarray(p, dtype=np.int64) for p in ordered]
    shared = [0] * len(ordered)
    for j in range(len(ordered) - 1):
        n = common_prefix(arrays[j], arrays[j + 1])
        shared[j], shared[j + 1] = max(shared[j], n), max(shared[j + 1], n)
    prefixes: set[tuple[int, ...]] = set()
    for prompt, n in zip(ordered, shared, strict=True):
        n = min(n, len(prompt) if whole else len(prompt) - 1)
        if n >= MIN_SHARED_PREFIX and n - store.lookup(prompt, limit=n).length >= MIN_SHARED_PREFIX:
            prefixes.add(prompt[:n])
    if not prefixes:
        return
    todo = [list(p) for p in sorted(prefixes)]
    share_prefixes(model, todo, store, pad_id, keep, stats, computed, whole=True)
    # Each prefix is stored whole, so its last token is computed too (limit = its length).
    hits = [store.lookup(p, limit=len(p)) for p in todo]
    todo_hits = [(p, h) for p, h in zip(todo, hits, strict=True) if h.length < len(p)]
    if not todo_hits:
        return
    batch = prefill_bounded(
        model, [p for p, _ in todo_hits], [h for _, h in todo_hits], pad_id, keep, stats, computed
    )
    for row, (prefix, _) in enumerate(todo_hits):
        columns = batch.mask[row].nonzero().squeeze(1)
        store.put(prefix, row_layers(batch.cache, row, columns))


def prefill_bounded(
    model: Any,
    prompts: list[list[int]],
    hits: list[Hit],
    pad_id: int,
    keep: dict[str, int],
    stats: GenerationStats,
    computed: list[int],
) -> Batch:
    """:func:`_prefill` in consecutive groups whose attention scores (rows x new tokens x
    width) stay within :data:`MAX_PREFILL_SCORES`, joined into one batch in prompt order."""
    groups: list[list[int]] = []
    new_max = width_max = 0
    for i, (prompt, hit) in enumerate(zip(prompts, hits, strict=True)):
        new = max(new_max, len(prompt) - hit.length)
        width = max(width_max, hit.length) + new
        if groups and (len(groups[-1]) + 1) * new * width <= MAX_PREFILL_SCORES:
            groups[-1].append(i)
            new_max, width_max = new, max(width_max, hit.length)
        else:
            groups.append([i])
            new_max, width_max = len(prompt) - hit.length, hit.length
    batch: Batch | None = None
    for group in groups:
        part = _prefill(
            model,
            [prompts[i] for i in group],
            [hits[i] for i in group],
            pad_id,
            keep,
            stats,
            computed,
        )
        if batch is None:
            batch = part
        else:
            batch.extend(part)
    assert batch is not None
    return batch


def _prefill(
    model: Any,
    prompts: list[list[int]],
    hits: list[Hit],
    pad_id: int,
    keep: dict[str, int],
    stats: GenerationStats,
    computed: list[int],
) -> Batch:
    """One forward over every prompt's tokens after its hit, on top of the hits' keys/values."""
    device = model.device
    n_rows = len(prompts)
    reused = [h.length for h in hits]
    new = [p[r:] for p, r in zip(prompts, reused, strict=True)]
    cmax, nmax = max(reused), max(len(x) for x in new)
    input_ids = torch.full((n_rows, nmax), pad_id, dtype=torch.long)
    mask = torch.zeros((n_rows, cmax + nmax), dtype=torch.long)
    positions = torch.zeros((n_rows, nmax), dtype=torch.long)
    for i, (r, tokens) in enumerate(zip(reused, new, strict=True)):
        input_ids[i, nmax - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[i, cmax - r : cmax] = 1
        mask[i, cmax + nmax - len(tokens) :] = 1
        positions[i, nmax - len(tokens) :] = torch.arange(r, r + len(tokens))
    if cmax:
        cache = _cache_segment(hits, cmax, device)
    else:
        cache = cache_from_layers([], model.config.num_hidden_layers)
    input_ids, mask, positions = (t.to(device) for t in (input_ids, mask, positions))
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **keep,
    )
    stats.processed_tokens += n_rows * nmax
    computed[0] += sum(len(x) for x in new)
    return Batch(out.past_key_values, mask, positions[:, -1:] + 1, out.logits[:, -1, :])


def _cache_segment(hits: list[Hit], width: int, device: Any) -> Any:
    """A ``DynamicCache`` of ``width`` columns holding each hit's reused prefix, left-padded."""
    reference = next(h.layers for h in hits if h.layers is not None and h.length)
    layers = []
    for layer, (k0, v0) in enumerate(reference):
        keys = k0.new_zeros((len(hits), k0.shape[0], width, k0.shape[2]), device=device)
        values = v0.new_zeros((len(hits), v0.shape[0], width, v0.shape[2]), device=device)
        for i, hit in enumerate(hits):
            if hit.layers is not None and hit.length:
                k, v = hit.layers[layer]
                keys[i, :, width - hit.length :] = k[:, : hit.length]
                values[i, :, width - hit.length :] = v[:, : hit.length]
        layers.append((keys, values))
    return cache_from_layers(layers, len(layers))
