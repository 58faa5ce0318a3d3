"""Batched generation that reuses keys and values: across turns, within a group, never for padding.

:func:`generate_cached` does what :func:`~timely.policies.hf_generate.generate_rows` does (same
rows, limits and records) with three kinds of redundant work removed:

- **Prefix reuse.** Each prompt starts from the stored sequence (previous turns of the same
  episode, usually) that shares its longest prefix, held in a
  :class:`~timely.policies.kv_cache.KVStore`; only the rest is prefilled.
- **Shared prompts once.** Identical prompts in a batch (a GRPO group's G rollouts) are
  prefilled once and their keys and values copied to each row; a prefix that several distinct
  prompts share (a common system prompt, a group's first turn) is prefilled once, stored, and
  then found by every row's lookup.
- **Finished rows leave.** A row that stops (stop token, cap, deadline, abandoned caller)
  leaves the decode batch at once (its keys and values go to the store for its next turn)
  instead of decoding padding until the longest row ends.

Batch layout: each row's reused keys and values are left-padded into a cache segment of the
batch's longest reuse, the new tokens left-padded into a new segment; a 2D attention mask is
zero at every pad (pads in the middle are fine for a 2D mask) and explicit position ids count a
row's real tokens only, so every row sees the positions it would see alone.

Sampling draws each row from its own generator, seeded from the call's seed and the row index,
so a row's tokens do not depend on which other rows are still decoding beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from timely.clock import wall_seconds
from timely.errors import PolicyError
from timely.policies.batching import Feed, Pending
from timely.policies.hf_generate import GeneratedRow
from timely.policies.kv_cache import GenerationStats, KVStore, row_layers
from timely.policies.kv_prefill import Batch, prefill_bounded, share_prefixes
from timely.policies.logprobs import accepts_logits_to_keep, sample_next
from timely.rng import derive_seed

R = TypeVar("R")  # a queued request


class Row:
    """One request in a decode session: its limits, its sampler and what it produced."""

    def __init__(
        self,
        prompt: list[int],
        *,
        cap: int,
        wall_end: float | None,
        abandoned: Callable[[], bool],
        seed: int,
    ) -> None:
        self.prompt, self.cap, self.wall_end, self.abandoned = prompt, cap, wall_end, abandoned
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.reason: str | None = None

    def result(self) -> GeneratedRow:
        return GeneratedRow(
            token_ids=self.tokens, logprobs=self.logprobs, reason=self.reason or "length"
        )


class DecodeSession:
    """A decode batch that rows join (:meth:`admit`) and leave (as they end, in :meth:`step`).

    Joining prefills only what the store does not hold; identical prompts and shared prefixes
    among the joining rows are prefilled once. Continuous batching admits rows between steps;
    :func:`generate_cached` admits all rows once and steps until they end.

    Args:
        model: a transformers causal LM (see :func:`~timely.policies.kv_cache.supports_reuse`).
        pad_id: fills padding.
        stop_ids: ids that end a row (kept in its ids).
        temperature: 0 for greedy decoding.
        top_p: nucleus threshold (sampling only).
        store: reusable keys and values; each ending row's go there for its next turn.
        stats: work counts, updated in place.
    """

    def __init__(
        self,
        model: Any,
        *,
        pad_id: int,
        stop_ids: Sequence[int],
        temperature: float,
        top_p: float,
        store: KVStore,
        stats: GenerationStats,
    ) -> None:
        self.model, self.pad_id, self.stop_ids = model, pad_id, set(stop_ids)
        self.temperature, self.top_p = temperature, top_p
        self.store, self.stats = store, stats
        self.device = model.device
        self.keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.rows: list[Row] = []  # live rows, in batch order
        self.batch: Batch | None = None
        store.check_model(model)

    @property
    def width(self) -> int:
        """Columns of the live batch (0 when empty)."""
        return 0 if self.batch is None else int(self.batch.mask.shape[1])

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` (reusing what can be reused) and add them to the live batch."""
        if not rows:
            return
        stats = self.stats
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(r.prompt), len(distinct)) for r in rows]
        unique = [list(p) for p in distinct]
        computed = [0]  # real prompt tokens prefilled here (all passes)
        with torch.inference_mode():
            if self.store.max_tokens > 0:
                share_prefixes(
                    self.model, unique, self.store, self.pad_id, self.keep, stats, computed
                )
            hits = [self.store.lookup(p) for p in unique]
            batch = prefill_bounded(
                self.model, unique, hits, self.pad_id, self.keep, stats, computed
            )
            if source != list(range(len(rows))):  # copy each distinct prompt's prefill
                batch.select(torch.tensor(source, device=self.device))
            if self.batch is None:
                self.batch = batch
            else:
                self.batch.extend(batch)
        for row in rows:
            if self.temperature > 0:
                row.generator = torch.Generator(device=self.device)
                row.generator.manual_seed(row.seed)
        self.rows.extend(rows)
        # A distinct prompt without any reused prefix is one full prefill; its copies reuse it.
        stats.full_prefills += sum(1 for h in hits if h.length == 0)
        stats.requests += len(rows)
        stats.prefill_tokens += computed[0]
        stats.reused_tokens += sum(len(r.prompt) for r in rows) - computed[0]

    def step(self) -> list[Row]:
        """Sample one token for every live row; returns the rows that ended with it (their
        keys and values stored, out of the batch). Runs the next decode forward if any row
        remains."""
        batch = self.batch
        assert batch is not None, "step() on an empty session"
        with torch.inference_mode():
            chosen, logp = _sample(
                batch.logits, self.temperature, self.top_p, [r.generator for r in self.rows]
            )
            now = wall_seconds()
            ended: list[int] = []
            for j, (row, token, lp) in enumerate(
                zip(self.rows, chosen.tolist(), logp.tolist(), strict=True)
            ):
                row.tokens.append(token)
                row.logprobs.append(lp)
                if token in self.stop_ids:
                    row.reason = "stop"
                elif len(row.tokens) >= row.cap:
                    row.reason = "length"
                elif (row.wall_end is not None and now >= row.wall_end) or row.abandoned():
                    row.reason = "deadline"
                if row.reason is not None:
                    ended.append(j)
            self.stats.decode_tokens += len(self.rows)
            done = [self.rows[j] for j in ended]
            if ended:
                for j in ended:
                    row = self.rows[j]
                    columns = batch.mask[j].nonzero().squeeze(1)
                    ids = row.prompt + row.tokens[:-1]  # the last token was never fed
                    if columns.numel() != len(ids):  # never store keys under the wrong ids
                        raise PolicyError(
                            f"internal error: a row holds {columns.numel()} cached positions "
                            f"for {len(ids)} tokens; run with kv_reuse=False and report it"
                        )
                    self.store.put(ids, row_layers(batch.cache, j, columns))
                stay = [j for j in range(len(self.rows)) if j not in set(ended)]
                self.rows = [self.rows[j] for j in stay]
                if not stay:
                    self.batch = None
                    return done
                keep = torch.tensor(stay, device=self.device)
                batch.select(keep)
                chosen = chosen[keep]
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(self.rows), 1))], dim=1)
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=batch.mask,
                position_ids=batch.next_position,
                past_key_values=batch.cache,
                use_cache=True,
            )
            self.stats.processed_tokens += len(self.rows)
            batch.cache = out.past_key_values
            batch.logits = out.logits[:, -1, :]
            batch.next_position = batch.next_position + 1
        return done


def run_feed(
    session: DecodeSession,
    feed: Feed[R, GeneratedRow],
    row_of: Callable[[Pending[R, GeneratedRow]], Row],
    prompt_length: Callable[[R], int],
    *,
    max_rows: int,
    max_tokens: int,
) -> None:
    """Continuous batching: decode while requests keep arriving, answering each as it ends.

    Between steps, queued requests join while the batch stays within ``max_rows`` rows and
    ``max_tokens`` padded tokens (rows x widest; a request alone always runs).

    Args:
        session: the (empty) decode session.
        feed: the continuous batcher's queue.
        row_of: makes a queued request's :class:`Row` (limits, seed, abandoned flag).
        prompt_length: a queued request's prompt length (to check that it fits).
        max_rows: most rows decoding at once.
        max_tokens: most padded tokens in the batch.
    """
    owners: dict[int, Pending[R, GeneratedRow]] = {}
    while True:
        widest = [session.width]

        def fits(request: R, taken: int, widest: list[int] = widest) -> bool:
            rows = len(session.rows) + taken + 1
            width = max(widest[0], prompt_length(request))
            if rows > 1 and (rows > max_rows or rows * width > max_tokens):
                return False
            widest[0] = width
            return True

        rows = []
        for item in feed.take(fits):
            row = row_of(item)
            owners[id(row)] = item
            rows.append(row)
        session.admit(rows)
        if not session.rows:
            return
        for row in session.step():
            result = row.result()
            result.ended = wall_seconds()
            feed.answer(owners.pop(id(row)), result)


def generate_cached(
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
    store: KVStore,
    stats: GenerationStats,
) -> list[GeneratedRow]:
    """Generate for all ``prompts`` reusing stored prefixes; rows leave as they finish.

    Arguments as :func:`~timely.policies.hf_generate.generate_rows`, plus:

    Args:
        store: where reusable keys and values are found, and where each finished row's go.
        stats: counts of the work done, updated in place.

    Returns:
        One :class:`~timely.policies.hf_generate.GeneratedRow` per prompt, in order.
    """
    session = DecodeSession(
        model,
        pad_id=pad_id,
        stop_ids=stop_ids,
        temperature=temperature,
        top_p=top_p,
        store=store,
        stats=stats,
    )
    rows = [
        Row(
            list(p),
            cap=caps[i],
            wall_end=wall_ends[i],
            abandoned=lambda i=i: abandoned(i),
            seed=derive_seed(seed, "row", i),
        )
        for i, p in enumerate(prompts)
    ]
    session.admit(rows)
    while session.rows:
        session.step()
    return [r.result() for r in rows]


def _sample(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy picks for the whole batch at once; sampled ones row by row, each row with its own
    generator (the same draws whichever rows share the step)."""
    if temperature == 0:
        return sample_next(logits, temperature=0.0)
    picks = [
        sample_next(logits[j : j + 1], temperature=temperature, top_p=top_p, generator=g)
        for j, g in enumerate(generators)
    ]
    return torch.cat([p[0] for p in picks]), torch.cat([p[1] for p in picks])
