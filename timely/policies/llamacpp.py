"""The llama.cpp policy: fast single-sequence CPU generation of GGUF models for eval and serving.

``LlamaCppPolicy`` runs a GGUF file through ``llama-cpp-python``: several times the tokens/s of the
transformers backend on a CPU (see bench/inference.py). It is a drop-in for ``hf:`` where no
log-probabilities are needed: prompts are rendered by the same HF tokenizer and
:func:`timely.prompting.prompt_token_ids`, and llama.cpp receives those token ids (never text), so
both backends feed the model identical prompts by construction. Token caps, deadlines, stop
tokens and tool-call parsing follow :mod:`timely.policies.hf`.

llama.cpp decodes one sequence at a time per model. Calls are queued on one worker thread per
loaded model (a single-thread executor, so waiting calls hold no thread and the event loop stays
free); a call whose caller gave up (cancelled, or its wall deadline passed while queued) is
dropped or stopped at the next token. llama.cpp keeps the previous call's KV cache and re-uses its
longest common prefix with the next prompt, so the turns of one episode prefill only what is new.

Determinism: greedy decoding (``temperature == 0``, the default) is deterministic for a given
prompt, up to float rounding when a cached prefix changes the prefill split. Sampling is seeded per
call from the policy seed and a call counter, so sampled results depend on call order.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timely.clock import wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.parsing import parse_tool_calls
from timely.policies.base import Deadline, check_options, register_backend
from timely.policies.hf_models import EMBEDDED_MODEL
from timely.prompting import ToolFormat, prompt_token_ids, resolve_tool_format, stop_token_ids
from timely.rng import derive_seed
from timely.types import Completion, Message

# One worker per loaded llama.cpp model, shared by every policy on it: two threads decoding one
# context at once would corrupt its KV cache.
_workers: weakref.WeakKeyDictionary[Any, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_workers_guard = threading.Lock()
_SEED_RANGE = 2**32 - 1  # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random"


@dataclass
class _Decoded:
    token_ids: list[int]
    reason: str  # "stop" | "length" | "deadline"
    ended: float  # wall_seconds() when decoding stopped


class LlamaCppPolicy:
    """A ``llama_cpp.Llama`` as a :class:`~timely.policies.base.Policy`.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (see :func:`.llamacpp_models.open_llama`).
        tokenizer: the HF tokenizer whose ids match the GGUF's vocabulary; it renders prompts
            exactly as ``hf:`` does.
        max_new_tokens: cap on new tokens per call (the deadline may lower it).
        temperature: 0 for greedy decoding; otherwise sampling temperature.
        top_p: nucleus sampling threshold (sampling only). Top-k and min-p are off, as in hf:.
        seed: seeds sampling (per call, with a call counter).
        tool_format: how tools reach the prompt, see :func:`timely.prompting.render_prompt`.
        name: the policy name in run records.
    """

    def __init__(
        self,
        llama: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        tool_format: ToolFormat = "auto",
        name: str | None = None,
    ) -> None:
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(
                f"bad sampling settings (max_new_tokens={max_new_tokens}, temperature="
                f"{temperature}, top_p={top_p}): need max_new_tokens >= 1, temperature >= 0, "
                "0 < top_p <= 1"
            )
        self.llama = llama
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.tool_format = resolve_tool_format(tokenizer, tool_format)
        self.name = name or f"llamacpp:{Path(getattr(llama, 'model_path', '') or 'model').name}"
        self.n_ctx = int(llama.n_ctx())
        vocab = int(llama.n_vocab())
        if len(tokenizer) > vocab:
            raise PolicyError(
                f"the tokenizer has {len(tokenizer)} tokens but the GGUF model only {vocab}: "
                "pass the tokenizer that belongs to this model (tokenizer=DIR)"
            )
        stops = set(stop_token_ids(tokenizer))
        eos = int(llama.token_eos())
        if 0 <= eos < vocab:
            stops.add(eos)
        self.stop_ids = sorted(stops)
        self._calls = 0
        with _workers_guard:
            self._worker = _workers.get(llama)
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
                _workers[llama] = self._worker

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[int]:
        """The exact prompt token ids this policy feeds the model (the same as ``hf:``'s)."""
        return prompt_token_ids(self.tokenizer, messages, tools, tool_format=self.tool_format)

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> int:
        """Prompt length in this model's tokens (the loop caps generation by the budget left)."""
        return len(self.prompt_ids(messages, tools))

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        """One turn. ``gen_seconds`` is the real time from this call to its result, queueing
        included: what the caller waited.

        Raises:
            PolicyError: the prompt does not fit the context, or llama.cpp failed.
        """
        started = wall_seconds()
        prompt = self.prompt_ids(messages, tools)  # here: a fast tokenizer is not thread-safe
        budget_cap = deadline.max_new_tokens
        if (budget_cap is not None and budget_cap <= 0) or deadline.remaining() <= 0:
            return Completion(
                finish_reason="deadline",
                prompt_tokens=len(prompt),
                prompt_token_ids=prompt,
                token_ids=[],
            )
        if len(prompt) >= self.n_ctx:
            raise PolicyError(
                f"the prompt has {len(prompt)} tokens but the llama.cpp context holds "
                f"{self.n_ctx}; raise n_ctx (up to the model's trained context) or shorten it"
            )
        cap = self.max_new_tokens if budget_cap is None else min(self.max_new_tokens, budget_cap)
        cap_is_budget = cap < self.max_new_tokens
        if self.n_ctx - len(prompt) < cap:  # a full context ends the turn as "length"
            cap, cap_is_budget = self.n_ctx - len(prompt), False
        wall_end = started + deadline.timeout_s() if deadline.clock.kind == "wall" else None
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._worker, self._decode, prompt, cap, wall_end, stop)
        try:
            out = await job
        except asyncio.CancelledError:
            stop.set()  # a running decode stops at its next token; a queued one never starts
            raise
        reason = out.reason
        if reason == "length" and cap_is_budget:
            reason = "deadline"
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        content, calls, malformed = parse_tool_calls(text, id_prefix=f"call_{len(messages)}_")
        return Completion(
            text=content,
            tool_calls=calls,
            malformed=malformed,
            prompt_tokens=len(prompt),
            completion_tokens=len(out.token_ids),
            gen_seconds=out.ended - started,
            finish_reason=reason,
            token_ids=out.token_ids,
            prompt_token_ids=prompt,
        )

    def _decode(
        self, prompt: list[int], cap: int, wall_end: float | None, stop: threading.Event
    ) -> _Decoded:
        """Blocking: decode one sequence on the model's worker thread."""
        if stop.is_set() or (wall_end is not None and wall_seconds() >= wall_end):
            return _Decoded([], "deadline", wall_seconds())  # its time ran out in the queue
        self._calls += 1
        if self.temperature > 0:
            self.llama.set_seed(derive_seed(self.seed, "llamacpp", self._calls) % _SEED_RANGE)
        stop_ids = set(self.stop_ids)
        ids: list[int] = []
        reason = "length"
        tokens = self.llama.generate(
            prompt,
            temp=self.temperature,
            top_p=self.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                ids.append(int(token))
                if token in stop_ids:
                    reason = "stop"
                    break
                if len(ids) >= cap:
                    break
                if stop.is_set() or (wall_end is not None and wall_seconds() >= wall_end):
                    reason = "deadline"
                    break
        except (RuntimeError, ValueError) as e:  # llama_decode failures surface as these
            raise PolicyError(f"llama.cpp failed to decode: {e}") from e
        finally:
            tokens.close()
        return _Decoded(ids, reason, wall_seconds())


_OPTIONS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "tool_format",
    "name",
    "n_ctx",
    "n_threads",
    "n_batch",
    "use_extra_bufts",
    "tokenizer",
    "adapter",
    "dtype",
    "cache_dir",
)


@register_backend(
    "llamacpp",
    help="llama.cpp on a GGUF file: llamacpp:smollm2-135m, llamacpp:smollm2-135m-timely, "
    "llamacpp:/path/to/model.gguf",
)
def llamacpp_backend(spec: str = EMBEDDED_MODEL, **options: Any) -> LlamaCppPolicy:
    """Build a :class:`LlamaCppPolicy` from a spec (the part after ``llamacpp:``) and options.

    Args:
        spec: ``smollm2-135m`` (the embedded GGUF, the default), ``smollm2-135m-timely`` (the
            embedded base with the shipped adapter, exported to GGUF on first use), or a path
            to a ``.gguf`` file.
        **options: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``tool_format``,
            ``name``; llama.cpp's ``n_ctx`` (0 = the model's trained context), ``n_threads``,
            ``n_batch``, ``use_extra_bufts``; ``tokenizer`` (an HF tokenizer directory; default
            the model's own); ``adapter`` (a peft directory merged into the embedded base),
            ``dtype`` (how an export stores merged weights: ``f16``, the default, ``q8_0`` or
            ``f32``) and ``cache_dir`` (where exports are cached).
    """
    from timely.policies.llamacpp_models import load_tokenizer, open_llama, resolve_model

    check_options(f"llamacpp:{spec}", options, _OPTIONS)
    spec = spec or EMBEDDED_MODEL
    adapter = options.pop("adapter", None)
    resolved = resolve_model(
        spec,
        adapter=adapter,
        tokenizer=options.pop("tokenizer", None),
        dtype=options.pop("dtype", "f16"),
        cache_dir=options.pop("cache_dir", None),
    )
    llama = open_llama(
        resolved.gguf,
        n_ctx=int(options.pop("n_ctx", 0)),
        n_threads=options.pop("n_threads", None),
        n_batch=int(options.pop("n_batch", 512)),
        use_extra_bufts=options.pop("use_extra_bufts", None),
    )
    tokenizer = load_tokenizer(resolved)
    options.setdefault("name", f"llamacpp:{spec}" + (f"+{Path(adapter).name}" if adapter else ""))
    return LlamaCppPolicy(llama, tokenizer, **options)
