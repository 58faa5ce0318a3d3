"""A policy on a token-in/token-out generation server (verl's rollout servers, vLLM or SGLang).

RL frameworks at scale do not send chat messages to their rollout engine: they send prompt ids
and get sampled ids back (verl: ``await server_manager.generate(request_id, prompt_ids=,
sampling_params=)`` returning ``token_ids`` and ``log_probs``). :class:`TokenServerPolicy` makes
such a server a :class:`~timely.policies.base.Policy`, so an episode on it is played by the one
loop (:func:`timely.loop.run_episode`) with every rule it has: time status, the budget cut-off,
tool calls to the tool server, the reward.

Prompts are :class:`~timely.continuous_tokens.ContinuousTokens`: each turn's prompt is the last
prompt, the ids the server sampled, then the new messages' tokens, so the episode is one token
sequence (the prefix property of :mod:`timely.train.view` holds by construction) and the request
id keeps a conversation on one server, where the prefix cache holds it.

The server has no deadline (vLLM has none per request): the budget is kept here, by capping
``max_tokens`` with the deadline's token cap on a virtual clock, and by the loop's cut-off on a
wall clock.

verl's server tags each output with the weight versions it was sampled under
(``extra_fields["min_global_steps"]`` / ``["max_global_steps"]``); its default (v1) trainer needs
them on every rollout, so the policy keeps the first call's and the last call's
(:attr:`TokenServerPolicy.min_global_steps`, :attr:`TokenServerPolicy.max_global_steps`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from timely.clock import wall_seconds
from timely.continuous_tokens import ContinuousTokens
from timely.errors import ConfigError, PolicyError
from timely.parsing import parse_tool_calls
from timely.policies.base import Deadline
from timely.prompting import ToolFormat
from timely.prompting import stop_token_ids as stop_token_ids_of
from timely.types import Completion, Message


class TokenServer(Protocol):
    """verl's ``LLMServerClient.generate`` shape; the result has ``token_ids``, ``log_probs``
    (or None), ``stop_reason`` (``"completed"``, ``"aborted"`` or None) and, from verl,
    ``extra_fields`` (the weight versions it was sampled under among them)."""

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any]
    ) -> Any: ...


class ContextFull(PolicyError):
    """The episode's tokens reached the trainer's response length; nothing more can be sampled."""


class PromptTooLong(PolicyError):
    """The first prompt is longer than the trainer takes (nothing was sampled)."""


class TokenServerPolicy:
    """One episode's policy on a token server (one instance per episode: it holds its tokens).

    Args:
        server: the token server.
        tokenizer: the served model's tokenizer (renders prompts, decodes samples).
        sampling_params: passed on every call (temperature, top_p, logprobs, ...); ``max_tokens``
            is set per call.
        max_new_tokens: most new tokens per model turn.
        response_length: most tokens after the first prompt, sampled and not (verl's
            ``rollout.response_length``); None for no limit.
        context_length: most tokens the server takes, prompt and sample together; None for no
            limit.
        prompt_length: most tokens of the first prompt (verl's ``rollout.prompt_length``); a
            longer one is refused before anything is sampled (:class:`PromptTooLong`).
        stop_token_ids: ids that end an assistant turn (default:
            :func:`timely.prompting.stop_token_ids`, the rule of every local policy).
        generation_config: the model's generation config (its EOS ids end a turn too).
        chat_template_kwargs: extra arguments of every chat-template render (verl's
            ``data.apply_chat_template_kwargs``, e.g. ``{"enable_thinking": False}``).
        tool_format: how tools reach the prompt.
        request_id: keeps the conversation on one server (default: a fresh id).
        name: the policy name in trajectories.
    """

    def __init__(
        self,
        server: TokenServer,
        tokenizer: Any,
        *,
        sampling_params: dict[str, Any] | None = None,
        max_new_tokens: int = 1024,
        response_length: int | None = None,
        context_length: int | None = None,
        prompt_length: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        generation_config: Any = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        tool_format: ToolFormat = "auto",
        request_id: str | None = None,
        name: str = "token-server",
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.server = server
        self.tokenizer = tokenizer
        self.sampling_params = dict(sampling_params or {})
        self.max_new_tokens = max_new_tokens
        self.response_length = response_length
        self.context_length = context_length
        self.prompt_length = prompt_length
        self.stop_ids = set(stop_token_ids or stop_token_ids_of(tokenizer, generation_config))
        self.tokens = ContinuousTokens(
            tokenizer, tool_format, chat_template_kwargs=chat_template_kwargs
        )
        self.request_id = request_id or uuid.uuid4().hex
        self.name = name
        self.server_s = 0.0  # measured wall seconds inside server.generate
        # The weight versions of the first and the last sample (verl's extra_fields).
        self.min_global_steps: int | None = None
        self.max_global_steps: int | None = None

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> int:
        """Prompt length in the served model's tokens (the loop caps generation by the budget)."""
        return len(self.tokens.prompt_ids(messages, tools))

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        started = wall_seconds()
        prompt = self.tokens.prompt_ids(messages, tools)
        if self.prompt_length is not None and self.tokens.initial_length > self.prompt_length:
            raise PromptTooLong(
                f"the first prompt is {self.tokens.initial_length} tokens, over the prompt "
                f"length {self.prompt_length}"
            )
        cap, cap_is_budget = self._cap(len(prompt), deadline.max_new_tokens)
        if cap_is_budget and cap <= 0:
            return Completion(
                finish_reason="deadline",
                prompt_tokens=len(prompt),
                prompt_token_ids=prompt,
                token_ids=[],
                logprobs=[],
            )
        if cap <= 0:
            raise ContextFull(
                f"the episode reached {len(prompt) - self.tokens.initial_length} response "
                f"tokens, the trainer's limit ({self.response_length}); raise "
                "rollout.response_length or lower max_turns"
            )
        params = {**self.sampling_params, "max_tokens": cap}
        params["stop_token_ids"] = sorted(self.stop_ids | set(params.get("stop_token_ids") or []))
        called = wall_seconds()
        try:
            out = await self.server.generate(
                self.request_id, prompt_ids=prompt, sampling_params=params
            )
        finally:
            self.server_s += wall_seconds() - called
        self._weight_versions(getattr(out, "extra_fields", None) or {})
        if getattr(out, "stop_reason", None) == "aborted":
            # verl aborts in-flight requests when it syncs weights; the sample is not usable.
            raise PolicyError("the token server aborted the request before it finished")
        ids = [int(i) for i in out.token_ids][:cap]
        logprobs = list(out.log_probs)[: len(ids)] if out.log_probs is not None else None
        self.tokens.sampled(messages, prompt, ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        content, calls, malformed = parse_tool_calls(text, id_prefix=f"call_{len(messages)}_")
        return Completion(
            text=content,
            tool_calls=calls,
            malformed=malformed,
            prompt_tokens=len(prompt),
            completion_tokens=len(ids),
            gen_seconds=wall_seconds() - started,
            finish_reason=_finish_reason(ids, self.stop_ids, cap, cap_is_budget),
            token_ids=ids,
            prompt_token_ids=prompt,
            logprobs=logprobs,
        )

    def _weight_versions(self, fields: Mapping[str, Any]) -> None:
        """Keep the first call's oldest and the last call's newest weight version."""
        oldest = fields.get("min_global_steps", fields.get("global_steps"))
        newest = fields.get("max_global_steps", fields.get("global_steps"))
        if self.min_global_steps is None and oldest is not None:
            self.min_global_steps = int(oldest)
        if newest is not None:
            self.max_global_steps = int(newest)

    def _cap(self, prompt_len: int, budget_cap: int | None) -> tuple[int, bool]:
        """(most new tokens for this call, whether the time budget is what limits it)."""
        limits = [self.max_new_tokens]
        if self.response_length is not None:
            limits.append(self.response_length - (prompt_len - self.tokens.initial_length))
        if self.context_length is not None:
            limits.append(self.context_length - prompt_len)
        cap = min(limits)
        if budget_cap is not None and budget_cap < cap:
            return budget_cap, True
        return cap, False


def _finish_reason(ids: list[int], stop_ids: set[int], cap: int, cap_is_budget: bool) -> str:
    if ids and ids[-1] in stop_ids:
        return "stop"
    if len(ids) >= cap:
        return "deadline" if cap_is_budget else "length"
    return "stop"  # a stop string or sequence the server matched
