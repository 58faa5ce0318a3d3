"""A prefix KV cache for the local transformers policy, and the counts that show what it saves.

A multi-turn episode sends the model its whole conversation every turn, and the rollouts of a
GRPO group send the same first prompt G times. Without a cache each of those prompts is
prefilled from scratch: on an arithmetic group of 8 about 7x the tokens the episodes actually
contain (issue 19). :class:`KVStore` keeps the keys and values of recently generated sequences
(prompt + sampled ids) per policy, bounded by a token budget with least-recently-used eviction;
a new prompt reuses the stored sequence with the longest common prefix, cropped to it. Nothing
relies on the next prompt extending the previous one exactly (a chat template may re-render the
end of a turn): only the common prefix is reused, and at least one prompt token is always left
to compute, since the next token's logits come from it.

The cache is valid only for the weights that computed it: the store fingerprints the model's
parameters (their in-place version counters, bumped by every optimizer step or
``load_state_dict``) and empties itself when they change.

Tensors are per row and unpadded, ``[kv_heads, tokens, head_dim]`` per layer, so any row can be
placed into any batch; :func:`cache_from_layers` and :func:`row_layers` convert between them and
transformers' :class:`~transformers.DynamicCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

# (keys, values) per layer, each [kv_heads, tokens, head_dim].
Layers = list[tuple[torch.Tensor, torch.Tensor]]

# SmolLM2-135M holds about 46 KB of fp32 keys and values per token (30 layers x 3 KV heads x
# 64 dims x 2 x 4 bytes): this default is about 3 GB, room for a GRPO batch of 8 game episodes
# of 3k tokens each plus the previous batch's rows.
DEFAULT_CACHE_TOKENS = 65536


@dataclass
class GenerationStats:
    """What a policy's model did, so a benchmark can compare work against unique tokens.

    Attributes:
        requests: rows that reached the model (calls refused before it, such as a zero token
            budget, are not counted).
        full_prefills: rows whose prompt was computed from scratch for them alone: no stored
            prefix, no identical or prefix-sharing row in the batch.
        reused_tokens: prompt tokens whose keys and values were not computed for this request
            (taken from the store or from another row of the batch).
        prefill_tokens: real prompt tokens fed to the model (padding excluded).
        decode_tokens: tokens sampled for the callers (stop tokens included).
        processed_tokens: rows x width of every forward call, padding included: the work done.
    """

    requests: int = 0
    full_prefills: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    processed_tokens: int = 0

    def reset(self) -> None:
        """Zero every count (e.g. between the two halves of a benchmark)."""
        for f in fields(self):
            setattr(self, f.name, 0)


@dataclass
class _Entry:
    ids: np.ndarray  # int64 token ids whose keys and values are held
    layers: Layers

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass
class Hit:
    """A lookup's result: the stored layers and how many leading tokens of them to reuse."""

    layers: Layers | None
    length: int


class KVStore:
    """Keys and values of recent sequences, bounded by ``max_tokens`` (least recently used go).

    Args:
        max_tokens: most tokens held over all entries; 0 disables storing.
    """

    def __init__(self, max_tokens: int = DEFAULT_CACHE_TOKENS) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self._fingerprint: tuple[int, int] | None = None
        self.tokens = 0  # tokens held now

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self.tokens = 0

    def check_model(self, model: Any) -> None:
        """Empty the store if ``model``'s weights changed (or it is another model) since the
        entries were computed: stale keys and values would silently change the outputs."""
        params = list(model.parameters())
        fingerprint = (id(model), sum(p._version for p in params))
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint

    def lookup(self, ids: Sequence[int], limit: int | None = None) -> Hit:
        """The stored sequence sharing the longest prefix with ``ids``, capped at ``limit``
        tokens (``len(ids) - 1`` by default: the last prompt token must be computed for its
        logits). A hit becomes the most recently used entry."""
        limit = len(ids) - 1 if limit is None else min(limit, len(ids))
        query = np.asarray(ids, dtype=np.int64)
        best_key, best = None, 0
        for key, entry in self._entries.items():
            n = min(common_prefix(entry.ids, query), limit)
            if n > best:
                best_key, best = key, n
        if best_key is None:
            return Hit(None, 0)
        self._entries.move_to_end(best_key)
        return Hit(self._entries[best_key].layers, best)

    def put(self, ids: Sequence[int], layers: Layers) -> None:
        """Keep ``layers`` (the keys and values of ``ids``, one row, unpadded).

        An entry that is a prefix of ``ids`` is dropped (the new one answers every lookup it
        would), and ``ids`` is not stored when an entry already extends it. Least recently used
        entries go until the new one fits; one longer than the whole budget is not stored.
        """
        n = len(ids)
        if n == 0 or n > self.max_tokens:
            return
        query = np.asarray(ids, dtype=np.int64)
        for key, entry in list(self._entries.items()):
            shared = common_prefix(entry.ids, query)
            if shared == n:  # an entry already holds all of ids
                self._entries.move_to_end(key)
                return
            if shared == entry.tokens:
                self._drop(key)
        while self._entries and self.tokens + n > self.max_tokens:
            self._drop(next(iter(self._entries)))
        self._entries[self._next_key] = _Entry(query, layers)
        self._next_key += 1
        self.tokens += n

    def _drop(self, key: int) -> None:
        self.tokens -= self._entries.pop(key).tokens


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def supports_reuse(model: Any) -> bool:
    """Whether generation may hand ``model`` caches it assembled itself.

    Transformers models (and peft wrappers of them) take any ``DynamicCache``; another module
    may keep state of its own on the cache object (the scripted test models do), which a cache
    built from stored tensors would lack, so it gets the plain loop.
    """
    from transformers import PreTrainedModel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        return False
    # Sliding-window layers keep only their window: columns would no longer line up with the
    # attention mask this module keeps.
    layer_types = getattr(base.config, "layer_types", None) or []
    return all(t == "full_attention" for t in layer_types)


def cache_from_layers(layers: Layers, n_layers: int) -> Any:
    """A ``DynamicCache`` of growing layers holding ``[batch, kv_heads, width, head_dim]`` tensors
    (``layers`` may be empty: the prefill fills them)."""
    from transformers.cache_utils import Cache, DynamicCache

    cache = DynamicCache.__new__(DynamicCache)  # its __init__ would make plain layers
    Cache.__init__(cache, layers=[growing_layer() for _ in range(n_layers)])
    for layer, (keys, values) in zip(cache.layers, layers, strict=False):
        layer.update(keys, values)
    return cache


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in a buffer with spare columns.

        ``DynamicLayer`` concatenates on every update, copying the whole cache once per decode
        step: at 8 rows x 3k tokens about 4 ms per layer, as much as the attention itself. Here
        a step writes its column in place; the buffer grows by a quarter when full. Whoever
        replaces ``keys``/``values`` (dropping rows) gets a fresh buffer at the next update.
        """

        def __init__(self) -> None:
            super().__init__()
            self._buffer: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length, n = self.get_seq_length(), key_states.shape[-2]
            buffer = self._buffer
            if (
                buffer is None
                or self.keys.data_ptr() != buffer[0].data_ptr()
                or buffer[0].shape[0] != key_states.shape[0]
                or buffer[0].dtype != key_states.dtype
                or length + n > buffer[0].shape[-2]
            ):
                capacity = length + n + max(64, (length + n) // 4)
                buffer = (
                    _grown(self.keys, key_states, length, capacity),
                    _grown(self.values, value_states, length, capacity),
                )
                self._buffer = buffer
            keys, values = buffer
            keys[:, :, length : length + n] = key_states
            values[:, :, length : length + n] = value_states
            self.keys, self.values = keys[:, :, : length + n], values[:, :, : length + n]
            return self.keys, self.values

    return _GrowingLayer


def _grown(old: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    """A ``capacity``-column buffer shaped like ``new`` holding ``old``'s first ``length``."""
    shape = list(new.shape)
    shape[-2] = capacity
    buffer = new.new_empty(shape)
    if length:
        buffer[:, :, :length] = old[:, :, :length]
    return buffer


def growing_layer() -> Any:
    """A new growing cache layer (its class is made on first use: transformers loads lazily)."""
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        _GROWING_LAYER = _growing_layer_class()
    return _GROWING_LAYER()


_GROWING_LAYER: type | None = None


def cache_layers(cache: Any) -> Layers:
    """The ``(keys, values)`` of every layer of a ``DynamicCache``, batch-first."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def select_rows(cache: Any, rows: torch.Tensor, start: int = 0) -> None:
    """Keep only batch ``rows`` (and columns from ``start`` on) of every layer, in place."""
    for layer in cache.layers:
        layer.keys = layer.keys[rows, :, start:].contiguous()
        layer.values = layer.values[rows, :, start:].contiguous()


def row_layers(cache: Any, row: int, columns: torch.Tensor) -> Layers:
    """One row's keys and values at ``columns`` (its real tokens), copied out of the batch
    (indexing with a tensor copies, so the batch's tensors can be freed)."""
    return [(layer.keys[row][:, columns], layer.values[row][:, columns]) for layer in cache.layers]
