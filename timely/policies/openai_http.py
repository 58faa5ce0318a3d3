"""A policy backed by any OpenAI-compatible chat-completions server (vLLM, SGLang, an API).

The budget is the point of the project, so nothing in the HTTP stack may spend it behind our
back: the SDK's defaults (a 600 s timeout, two silent retries with back-off) are switched off,
every request carries the deadline's real-time timeout, and the token limit is the smaller of the
configured one and the deadline's budget-derived cap. A request that times out is not an error:
it is a turn that ran out of time (``finish_reason="deadline"``); only an unreachable or failing
server raises :class:`~timely.errors.PolicyError`.

Tools travel natively (``tools=`` and ``tool_calls``) by default. Servers without a tool parser
return calls as text; those are parsed with :mod:`timely.parsing`. ``tool_format=
"hermes-in-system"`` renders tools into the prompt exactly like the local policy does, for
serving a model trained on that format through a template that ignores ``tools=``.

Hosted APIs meter requests and tokens: ``requests_per_minute`` / ``tokens_per_minute`` pace the
client, and a 429 is waited out as its ``Retry-After`` asks; both waits are charged to the
episode's budget (:mod:`timely.policies.rate_limits`), so throttling is never free.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, Literal

import httpx2
import openai

from timely.clock import wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.parsing import decode_arguments, parse_tool_calls
from timely.policies.base import (
    VIRTUAL_MIN_TIMEOUT_S,
    Deadline,
    check_options,
    register_backend,
    register_check,
)
from timely.policies.rate_limits import RateLimits
from timely.prompting import (
    as_message,
    assistant_text,
    estimate_prompt_tokens,
    estimate_tokens,
    to_hermes_messages,
)
from timely.types import Completion, Message, ToolCall

HttpToolFormat = Literal["native", "hermes-in-system"]
TokenLimitParam = Literal["max_tokens", "max_completion_tokens"]


class OpenAIPolicy:
    """Chat completions over HTTP with deadline-bound timeouts and no retries.

    Args:
        model: the served model name.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: bearer token; default ``$OPENAI_API_KEY`` or ``"EMPTY"`` (vLLM ignores it).
        temperature: sampling temperature (0 = greedy on vLLM).
        max_tokens: cap on new tokens per call (the deadline may lower it); None = server's.
        top_p: nucleus threshold, sent only when set.
        seed: sent only when set (vLLM honours it per request).
        tool_format: ``"native"`` or ``"hermes-in-system"`` (see module docstring).
        token_limit_param: which request field carries the cap. ``max_tokens`` is understood by
            every compatible server; OpenAI's reasoning models need ``max_completion_tokens``.
        extra_body: extra JSON fields for the server (e.g. vLLM's ``top_k``).
        requests_per_minute: client-side limit on requests per minute (all episodes sharing
            this policy together); None = unlimited.
        tokens_per_minute: client-side limit on tokens per minute, counting each request's
            estimated prompt plus its token cap (needs ``max_tokens``); None = unlimited.
        name: the policy name in run records.
        http_client: an ``httpx2.AsyncClient`` to use (tests pass an ASGI transport); by
            default one is created per event loop.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        tool_format: HttpToolFormat = "native",
        token_limit_param: TokenLimitParam = "max_tokens",
        extra_body: dict[str, Any] | None = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        name: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if tool_format not in ("native", "hermes-in-system"):
            raise ConfigError(
                f"tool_format must be 'native' or 'hermes-in-system', not {tool_format!r}"
            )
        if token_limit_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                "token_limit_param must be 'max_tokens' or 'max_completion_tokens', "
                f"not {token_limit_param!r}"
            )
        if tokens_per_minute is not None and max_tokens is None:
            raise ConfigError(
                "tokens_per_minute counts each request's prompt plus its token cap, so it needs "
                "max_tokens too (e.g. max_tokens=512)"
            )
        self.rate_limits = RateLimits(requests_per_minute, tokens_per_minute)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.seed = seed
        self.tool_format = tool_format
        self.token_limit_param = token_limit_param
        self.extra_body = dict(extra_body or {})
        self.name = name or f"openai:{model}"
        self._given_client = http_client
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _openai(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._given_client is None and self._client_loop is not loop):
            # httpx connection pools belong to the event loop that opened them.
            http = self._given_client or httpx2.AsyncClient(
                timeout=httpx2.Timeout(VIRTUAL_MIN_TIMEOUT_S),
                limits=httpx2.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.api_key,
                max_retries=0,
                timeout=VIRTUAL_MIN_TIMEOUT_S,
                http_client=http,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client this policy created (a given client is the caller's)."""
        if self._client is not None and self._given_client is None:
            await self._client.close()
        self._client = None

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        """One chat-completions request, bounded by ``deadline``."""
        started = wall_seconds()
        limit = _min_limit(self.max_tokens, deadline.max_new_tokens)
        if (limit is not None and limit <= 0) or deadline.remaining() <= 0:
            return Completion(finish_reason="deadline")
        request = self._request(messages, tools, limit)
        tokens = 0
        if self.rate_limits.tokens_per_minute is not None:
            tokens = estimate_prompt_tokens(request["messages"], request.get("tools") or ())
            tokens += limit or 0
        response = await self._create(request, tokens, deadline)
        if response is None:  # the deadline came first (while waiting, or the call timed out)
            return Completion(finish_reason="deadline", gen_seconds=wall_seconds() - started)
        gen_seconds = wall_seconds() - started
        capped_by_budget = deadline.max_new_tokens is not None and limit == deadline.max_new_tokens
        completion = _completion(response, len(messages), gen_seconds, capped_by_budget)
        if completion.usage_estimated and not completion.prompt_tokens:
            # No usage from the server: charge the prompt as it was sent, never nothing.
            prompt = estimate_prompt_tokens(request["messages"], request.get("tools") or ())
            completion = completion.model_copy(update={"prompt_tokens": prompt})
        return completion

    async def _create(self, request: dict[str, Any], tokens: int, deadline: Deadline) -> Any:
        """Send ``request`` within the rate limits; a 429 is waited out and retried while the
        budget lasts. None when the deadline came first.

        Raises:
            PolicyError: the server cannot be reached, is out of quota, or refused the request.
        """
        throttled = 0
        while True:
            if not await self.rate_limits.acquire(tokens, deadline):
                return None
            try:
                return await self._openai().chat.completions.create(
                    **request, timeout=deadline.timeout_s()
                )
            except openai.RateLimitError as e:
                if not await self.rate_limits.wait_after_429(
                    e.response.headers, e.body, throttled, deadline
                ):
                    return None
                throttled += 1
            except openai.APITimeoutError:
                return None
            except openai.APIConnectionError as e:
                raise PolicyError(
                    f"cannot reach the model server at {self.base_url} ({e}). Start it (e.g. "
                    "`vllm serve MODEL`) or fix the policy's base_url option"
                ) from e
            except openai.APIStatusError as e:
                raise PolicyError(
                    f"model server at {self.base_url} answered HTTP {e.status_code} for model "
                    f"{self.model!r}: {_error_message(e)}. Check the model name (GET "
                    f"{self.base_url}/models) and the request options"
                ) from e

    def _request(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]], limit: int | None
    ) -> dict[str, Any]:
        if self.tool_format == "hermes-in-system":
            wire: list[dict[str, Any]] = list(to_hermes_messages(messages, tools))
        else:
            wire = [as_message(m).to_openai() for m in messages]
        request: dict[str, Any] = {
            "model": self.model,
            "messages": wire,
            "temperature": self.temperature,
        }
        if tools and self.tool_format == "native":
            request["tools"] = list(tools)
        if limit is not None:
            request[self.token_limit_param] = limit
        if self.top_p is not None:
            request["top_p"] = self.top_p
        if self.seed is not None:
            request["seed"] = self.seed
        if self.extra_body:
            request["extra_body"] = self.extra_body
        return request


def _completion(response: Any, turn: int, gen_seconds: float, capped_by_budget: bool) -> Completion:
    if not getattr(response, "choices", None):
        raise PolicyError("the model server returned no choices; is it an OpenAI-compatible API?")
    choice = response.choices[0]
    message = choice.message
    content = message.content or ""
    calls: list[ToolCall] = []
    malformed: list[str] = []
    for i, call in enumerate(message.tool_calls or []):
        fn = getattr(call, "function", None)
        name = getattr(fn, "name", None)
        if not name:
            malformed.append("the server returned a tool call without a function name")
            continue
        arguments, error = decode_arguments(fn.arguments)
        if arguments is None:
            malformed.append(f"tool call {name!r}: {error}")
            continue
        calls.append(ToolCall(id=call.id or f"call_{turn}_{i}", name=name, arguments=arguments))
    if not message.tool_calls:
        # A server without a tool parser (or a model in hermes-in-system mode) answers in text.
        content, calls, malformed = parse_tool_calls(content, id_prefix=f"call_{turn}_")
    finish = choice.finish_reason or "stop"
    if finish == "length" and capped_by_budget:
        finish = "deadline"
    usage = getattr(response, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    # Servers that report no usage (some proxies, streaming without include_usage) are charged
    # from the text instead, and the step says so: generation is never free.
    estimated = not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int)
    if not isinstance(completion_tokens, int) or (
        completion_tokens == 0 and (content or message.tool_calls)
    ):
        completion_tokens = max(1, estimate_tokens(assistant_text(content, calls)))
        estimated = True
    return Completion(
        text=content,
        tool_calls=calls,
        malformed=malformed,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else 0,
        completion_tokens=completion_tokens,
        gen_seconds=gen_seconds,
        finish_reason=finish,
        usage_estimated=estimated,
    )


def _min_limit(configured: int | None, budget: int | None) -> int | None:
    if configured is None:
        return budget
    return configured if budget is None else min(configured, budget)


def _error_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(error.message)


_OPENAI_OPTIONS = (
    "base_url",
    "api_key",
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "tool_format",
    "token_limit_param",
    "extra_body",
    "requests_per_minute",
    "tokens_per_minute",
    "name",
)


@register_check("openai")  # building one is the check: the HTTP client opens on first use
@register_backend("openai", help="OpenAI-compatible server: openai:MODEL with base_url=...")
def openai_backend(spec: str = "", **options: Any) -> OpenAIPolicy:
    """Build an :class:`OpenAIPolicy` from a spec (the model, after ``openai:``) and options.

    Args:
        spec: the served model name.
        **options: ``base_url`` (required), ``api_key``, ``temperature``, ``max_tokens``,
            ``top_p``, ``seed``, ``tool_format``, ``token_limit_param``, ``extra_body``,
            ``requests_per_minute``, ``tokens_per_minute``, ``name``.

    Raises:
        ConfigError: no model, no base_url, or an unknown option.
    """
    check_options(f"openai:{spec}", options, _OPENAI_OPTIONS)
    if not spec:
        raise ConfigError(
            "policy 'openai:' needs a model name: openai:MODEL (as the server serves it)"
        )
    if not options.get("base_url"):
        raise ConfigError(
            f"policy openai:{spec} needs the base_url option, e.g. "
            "base_url=http://127.0.0.1:8000/v1 for a local `vllm serve`, or https://api.openai.com/v1"
        )
    return OpenAIPolicy(spec, **options)
