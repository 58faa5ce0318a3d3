"""The local transformers policy: batched, deterministic generation with exact token records.

``HFPolicy`` runs any causal LM from transformers, by default the embedded SmolLM2-135M. It is the
policy the trainer samples from, so besides text and parsed tool calls it returns what RL needs:
the exact prompt and sampled token ids and the sampled tokens' log-probabilities under the
temperature-scaled distribution they were drawn from, before top-p truncation (the convention is
in :mod:`timely.policies.logprobs`; :func:`~timely.policies.logprobs.recompute_logprobs`
reproduces the values from the ids). Concurrent ``generate`` calls (episodes of an eval run, a
GRPO group) are merged by a :class:`~timely.policies.batching.MicroBatcher` into one left-padded
batch, decoded by :func:`~timely.policies.hf_generate.generate_rows` in a worker thread. Each row
of a batch keeps its own limits: a token cap (the policy's ``max_new_tokens`` and the deadline's
budget-derived cap) and, on a wall clock, a real-time end, so one late episode never stretches or
cuts another.

Reuse (``kv_reuse=True``, the default): the policy keeps a
:class:`~timely.policies.kv_cache.KVStore` of recent sequences' keys and values, so an
episode's next turn prefills only what is new, a group's identical prompts are prefilled once,
and finished rows leave the decode batch (:mod:`timely.policies.hf_cached`); what the model did
is counted in :attr:`HFPolicy.stats`. ``kv_reuse=False`` runs the plain loop (a full prefill per
call, finished rows decoding padding), kept as the anchor a benchmark compares against.

Determinism: greedy decoding (``temperature == 0``) gives the same tokens whatever the batch
composition and with or without reuse (up to float rounding of padded batches). Sampling is
seeded per batch from the policy seed and a batch counter (with reuse, each row of a batch draws
from its own generator seeded from the batch seed and its row index), so sampled results depend
on which requests shared a batch and in what order the batches ran; use ``max_batch_size=1``
where sampled results must not depend on concurrency.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from timely.clock import wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.parsing import parse_tool_calls
from timely.policies.base import Deadline, check_options, register_backend, register_check
from timely.policies.batching import ContinuousBatcher, Feed, MicroBatcher, Pending
from timely.policies.hf_cached import DecodeSession, Row, run_feed
from timely.policies.hf_generate import GeneratedRow, generate_rows
from timely.policies.hf_models import EMBEDDED_MODEL, load_model, resolve_model
from timely.policies.kv_cache import (
    DEFAULT_CACHE_TOKENS,
    GenerationStats,
    KVStore,
    supports_reuse,
)
from timely.prompting import ToolFormat, prompt_token_ids, resolve_tool_format, stop_token_ids
from timely.rng import derive_seed
from timely.types import Completion, Message

# One generate at a time per model: two threads sharing two cores only thrash.
_model_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@dataclass
class _Request:
    prompt_ids: list[int]
    cap: int  # most new tokens for this row
    cap_is_budget: bool  # the cap came from the deadline, so hitting it means "deadline"
    wall_end: float | None  # wall_seconds() after which the row stops (wall clocks only)
    started: float  # wall_seconds() when generate() was called
    turn: int  # messages so far: makes tool-call ids unique and deterministic per episode


class HFPolicy:
    """A transformers causal LM as a :class:`~timely.policies.base.Policy`.

    Args:
        model: a causal LM (eval mode is set here).
        tokenizer: its tokenizer, with a chat template.
        max_new_tokens: cap on new tokens per call (the deadline may lower it).
        temperature: 0 for greedy decoding; otherwise sampling temperature. Recorded log-probs
            are ``log_softmax(logits / temperature)`` of the sampled tokens.
        top_p: nucleus sampling threshold (sampling only; it restricts which tokens may be
            drawn but is not part of the recorded log-probs). Top-k is always off.
        seed: seeds sampling (per batch, with a batch counter).
        max_batch_size: most concurrent calls decoded as one batch.
        batch_window_s: real seconds the batcher waits for a batch to fill.
        tool_format: how tools reach the prompt, see :func:`timely.prompting.render_prompt`.
        name: the policy name in run records.
        precision: ``bf16`` decodes with a private bf16 copy of the weights (the caller's model
            is left as it is): a decode step reads half the bytes, 1.5-1.7x faster at 8-32 rows
            on a 2-core CPU with native bf16 (autocast over fp32 weights measured slower than
            fp32, since it casts every weight on every step). Logits differ slightly, so
            recorded log-probs no longer match an fp32 recompute; the trainer recomputes them
            (``rl.rollout_precision``).
        kv_reuse: reuse keys and values across calls and rows and drop finished rows (see
            the module docstring); ``False`` runs the plain full-prefill loop, as does a model
            that is not a transformers model (:func:`~timely.policies.kv_cache.supports_reuse`).
        kv_cache_tokens: most tokens whose keys and values the policy keeps between calls
            (about 46 KB each in fp32 for the embedded model).
        continuous_batching: concurrent ``generate`` calls join the running decode batch
            between steps and get their result as soon as their row ends, instead of waiting
            for the batch (a :class:`~timely.policies.batching.ContinuousBatcher`; wall-clock
            eval and serving). Needs reuse; ``generate_batch`` is unaffected.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_batch_size: int = 8,
        batch_window_s: float = 0.01,
        tool_format: ToolFormat = "auto",
        name: str | None = None,
        precision: Literal["fp32", "bf16"] = "fp32",
        kv_reuse: bool = True,
        kv_cache_tokens: int = DEFAULT_CACHE_TOKENS,
        continuous_batching: bool = False,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(
                f"bad sampling settings (max_new_tokens={max_new_tokens}, temperature="
                f"{temperature}, top_p={top_p}): need max_new_tokens >= 1, temperature >= 0, "
                "0 < top_p <= 1"
            )
        if kv_cache_tokens < 0:
            raise ConfigError(
                f"kv_cache_tokens must be >= 0 (0: keep nothing), got {kv_cache_tokens}"
            )
        self.model = (_bf16_copy(model) if precision == "bf16" else model).eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.precision = precision
        self.tool_format = resolve_tool_format(tokenizer, tool_format)
        self.name = name or f"hf:{getattr(model, 'name_or_path', '') or type(model).__name__}"
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids)
        self._batch_counter = 0
        self.kv_reuse = kv_reuse
        self.kv_store = KVStore(kv_cache_tokens)
        self.stats = GenerationStats()
        with _locks_guard:
            self._lock = _model_locks.setdefault(model, threading.Lock())
        self._request_counter = 0
        self._batcher: (
            MicroBatcher[_Request, GeneratedRow] | ContinuousBatcher[_Request, GeneratedRow]
        )
        if continuous_batching and kv_reuse and supports_reuse(model):
            self._batcher = ContinuousBatcher(
                self._run_continuous, max_batch_size=max_batch_size, window_s=batch_window_s
            )
        else:
            self._batcher = MicroBatcher(
                self._run_batch, max_batch_size=max_batch_size, window_s=batch_window_s
            )

    @property
    def batcher(
        self,
    ) -> MicroBatcher[_Request, GeneratedRow] | ContinuousBatcher[_Request, GeneratedRow]:
        """The micro-batcher (its ``batches_run`` / ``batch_sizes`` are handy in tests)."""
        return self._batcher

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[int]:
        """The exact prompt token ids this policy feeds the model."""
        return prompt_token_ids(self.tokenizer, messages, tools, tool_format=self.tool_format)

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> int:
        """Prompt length in this model's tokens (the loop caps generation by the budget left)."""
        return len(self.prompt_ids(messages, tools))

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        """One turn; concurrent calls are batched. See the module docstring for determinism.

        ``gen_seconds`` is the real time from this call to its result, queueing included: what
        the caller waited.
        """
        started = wall_seconds()
        request, early = self._prepare(messages, tools, deadline, started)
        if early is not None:
            return early
        return self._completion(request, await self._batcher.submit(request))

    async def generate_batch(
        self, requests: Sequence[tuple[list[Message], list[dict[str, Any]], Deadline]]
    ) -> list[Completion]:
        """Generate for several conversations at once, bypassing the queue.

        Runs ``ceil(n / max_batch_size)`` model calls, in order. Returns one
        :class:`Completion` per request, in request order.
        """
        started = wall_seconds()
        results: list[Completion | None] = []
        todo: list[tuple[int, _Request]] = []
        for messages, tools, deadline in requests:
            request, early = self._prepare(messages, tools, deadline, started)
            if request is not None:
                todo.append((len(results), request))
            results.append(early)
        size = self._batcher.max_batch_size
        for i in range(0, len(todo), size):
            chunk = todo[i : i + size]
            rows = await asyncio.to_thread(
                self._run_batch, [r for _, r in chunk], lambda _row: False
            )
            for (index, request), row in zip(chunk, rows, strict=True):
                results[index] = self._completion(request, row)
        return [c for c in results if c is not None]

    def _prepare(
        self,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]],
        deadline: Deadline,
        started: float,
    ) -> tuple[_Request | None, Completion | None]:
        prompt = self.prompt_ids(messages, tools)
        budget_cap = deadline.max_new_tokens
        if (budget_cap is not None and budget_cap <= 0) or deadline.remaining() <= 0:
            return None, Completion(
                finish_reason="deadline",
                prompt_tokens=len(prompt),
                prompt_token_ids=prompt,
                token_ids=[],
                logprobs=[],
            )
        cap = self.max_new_tokens if budget_cap is None else min(self.max_new_tokens, budget_cap)
        wall_end = started + deadline.timeout_s() if deadline.clock.kind == "wall" else None
        request = _Request(
            prompt_ids=prompt,
            cap=cap,
            cap_is_budget=cap < self.max_new_tokens,
            wall_end=wall_end,
            started=started,
            turn=len(messages),
        )
        return request, None

    def _run_batch(
        self, requests: Sequence[_Request], abandoned: Callable[[int], bool]
    ) -> list[GeneratedRow]:
        """Blocking: one batched decode for all rows (runs in a worker thread).

        Decoding and parsing happen back on the event loop, in :meth:`_completion`: a fast
        tokenizer must not be used from two threads at once.
        """
        with self._lock:
            self._batch_counter += 1
            seed = derive_seed(self.seed, "hf-batch", self._batch_counter)
            rows = self._generate(requests, abandoned, seed)
        ended = wall_seconds()
        for row in rows:
            row.ended = ended
        return rows

    def _generate(
        self, requests: Sequence[_Request], abandoned: Callable[[int], bool], seed: int
    ) -> list[GeneratedRow]:
        rows: list[GeneratedRow | None] = [None] * len(requests)
        reusing = self.kv_reuse and supports_reuse(self.model)
        reuse = {"store": self.kv_store, "stats": self.stats} if reusing else {}
        # With reuse the prefill is bounded inside the session (new tokens only); what remains
        # to bound is the decode batch's keys and values, which take far less than the plain
        # loop's full prefill at the same width.
        budget = MAX_BATCH_TOKENS * (REUSE_BATCH_FACTOR if reusing else 1)
        lengths = [len(r.prompt_ids) for r in requests]
        for k, chunk in enumerate(padded_chunks(lengths, budget)):
            part = generate_rows(
                self.model,
                [requests[i].prompt_ids for i in chunk],
                caps=[requests[i].cap for i in chunk],
                wall_ends=[requests[i].wall_end for i in chunk],
                abandoned=lambda j, chunk=chunk: abandoned(chunk[j]),
                pad_id=self.pad_id,
                stop_ids=self.stop_ids,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=seed if k == 0 else derive_seed(seed, "chunk", k),
                **reuse,
            )
            if not reusing:
                self._count_plain([requests[i].prompt_ids for i in chunk], part)
            for i, row in zip(chunk, part, strict=True):
                rows[i] = row
        return [r for r in rows if r is not None]

    def _run_continuous(self, feed: Feed[_Request, GeneratedRow]) -> None:
        """Blocking: decode while requests keep arriving (a continuous batcher's run), within
        ``max_batch_size`` rows and ``REUSE_BATCH_FACTOR x MAX_BATCH_TOKENS`` padded tokens."""

        def row_of(item: Pending[_Request, GeneratedRow]) -> Row:
            self._request_counter += 1
            request = item.request
            return Row(
                request.prompt_ids,
                cap=request.cap,
                wall_end=request.wall_end,
                abandoned=lambda: item.abandoned,
                seed=derive_seed(self.seed, "hf-request", self._request_counter),
            )

        with self._lock:
            session = DecodeSession(
                self.model,
                pad_id=self.pad_id,
                stop_ids=self.stop_ids,
                temperature=self.temperature,
                top_p=self.top_p,
                store=self.kv_store,
                stats=self.stats,
            )
            run_feed(
                session,
                feed,
                row_of,
                lambda request: len(request.prompt_ids),
                max_rows=self._batcher.max_batch_size,
                max_tokens=MAX_BATCH_TOKENS * REUSE_BATCH_FACTOR,
            )

    def _count_plain(self, prompts: list[list[int]], rows: list[GeneratedRow]) -> None:
        """Count a plain call's work: every row prefilled at the batch's width, then one
        token per row for every decode step until the longest row ended."""
        n, width = len(prompts), max(len(p) for p in prompts)
        steps = max((len(r.token_ids) for r in rows), default=0)
        stats = self.stats
        stats.requests += n
        stats.full_prefills += n
        stats.prefill_tokens += sum(len(p) for p in prompts)
        stats.decode_tokens += sum(len(r.token_ids) for r in rows)
        stats.processed_tokens += n * width + n * max(steps - 1, 0)

    def clear_cache(self) -> None:
        """Forget every stored key and value (the store also does so itself when the model's
        weights change in place)."""
        with self._lock:
            self.kv_store.clear()

    def _completion(self, request: _Request, row: GeneratedRow) -> Completion:
        reason = row.reason
        if reason == "length" and request.cap_is_budget:
            reason = "deadline"
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        content, calls, malformed = parse_tool_calls(text, id_prefix=f"call_{request.turn}_")
        return Completion(
            text=content,
            tool_calls=calls,
            malformed=malformed,
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(row.token_ids),
            gen_seconds=row.ended - request.started,
            finish_reason=reason,
            token_ids=row.token_ids,
            prompt_token_ids=request.prompt_ids,
            logprobs=row.logprobs,
        )


def _bf16_copy(model: Any) -> Any:
    """A bf16 copy of ``model`` for decoding: the caller's model (shared by every policy of
    the process, or the one being trained) keeps its dtype."""
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16)


# Most padded prompt tokens (rows x longest prompt) prefilled as one batch. The prefill's attention
# holds rows x heads x width^2 scores: one 5k-token prompt padded 16 rows wide asked for ~14 GB
# and was OOM-killed in an RL rollout; at this bound a 2k-token game batch still runs 8 wide.
MAX_BATCH_TOKENS = 16384
# With reuse a batch may hold this many times more padded tokens: its prefill is split by
# attention size (kv_prefill.MAX_PREFILL_SCORES) and its decode holds only keys and values
# (SmolLM2-135M: 4 x 16384 tokens is about 3 GB in fp32).
REUSE_BATCH_FACTOR = 4


def padded_chunks(lengths: Sequence[int], budget: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Row indices split into batches whose padded size (rows x longest) stays within
    ``budget``, in the original order when everything fits (then nothing changes); otherwise
    similar lengths go together, longest first. A row longer than ``budget`` runs alone."""
    if len(lengths) * max(lengths, default=0) <= budget:
        return [list(range(len(lengths)))]
    chunks: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= budget:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


_HF_OPTIONS = (
    "precision",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "max_batch_size",
    "batch_window_s",
    "tool_format",
    "name",
    "cache_dir",
    "adapter",
    "kv_reuse",
    "kv_cache_tokens",
    "continuous_batching",
)


@register_backend(
    "hf", help="Local transformers model: hf:smollm2-135m (embedded) or hf:/model/dir"
)
def hf_backend(spec: str = EMBEDDED_MODEL, **options: Any) -> HFPolicy:
    """Build an :class:`HFPolicy` from a spec (the part after ``hf:``) and options.

    Args:
        spec: ``"smollm2-135m"`` (the default) or an HF model directory / hub id.
        **options: any of ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``,
            ``max_batch_size``, ``batch_window_s``, ``tool_format``, ``name``, ``cache_dir``,
            ``adapter`` (a peft LoRA directory merged into a copy of the model), ``precision``
            (``fp32`` or ``bf16``), ``kv_reuse`` (False: the plain full-prefill loop),
            ``kv_cache_tokens`` (the prefix cache's token budget), ``continuous_batching``.
    """
    check_options(f"hf:{spec}", options, _HF_OPTIONS)
    spec = spec or EMBEDDED_MODEL
    cache_dir = options.pop("cache_dir", None)
    adapter = options.pop("adapter", None)
    model, tokenizer = load_model(spec, cache_dir=cache_dir, adapter=adapter)
    options.setdefault("name", f"hf:{spec}" + (f"+{_adapter_tag(adapter)}" if adapter else ""))
    return HFPolicy(model, tokenizer, **options)


@register_check("hf")
def check_hf(spec: str = EMBEDDED_MODEL, **options: Any) -> None:
    """What :func:`hf_backend` would refuse, found without loading: options, model, adapter.

    Raises:
        ConfigError: an unknown option.
        PolicyError: the model cannot be found (one hub lookup at most) or the adapter
            directory is not a peft adapter.
    """
    check_options(f"hf:{spec}", options, _HF_OPTIONS)
    resolve_model(spec or EMBEDDED_MODEL)
    adapter = options.get("adapter")
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise PolicyError(
            f"adapter {adapter} is not a peft adapter directory (no adapter_config.json); pass "
            "the `adapter` directory a timely-rl stage wrote"
        )


def _adapter_tag(adapter: str | Path) -> str:
    """A readable name for an adapter directory (``runs/train/rl/adapter`` -> ``rl``)."""
    path = Path(adapter)
    return path.parent.name if path.name == "adapter" else path.name
