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

``stream=True`` asks for a server-sent-event stream (``stream_options={"include_usage": true}``
so the final chunk still reports the tokens). On a wall clock a stream still running at the
deadline is closed there and what arrived is returned as cut (``finish_reason="deadline"``):
vLLM has no per-request deadline, but it aborts a request whose client disconnects, so closing
the stream is what stops the server spending time on an answer nobody will use. A deadline
before any token behaves like a non-streamed timeout. The time to first token is kept in
:attr:`OpenAIPolicy.stream_stats` (a step has no field for it).

Hosted APIs meter requests and tokens: ``requests_per_minute`` / ``tokens_per_minute`` pace the
client, and a 429 is waited out as its ``Retry-After`` asks; both waits are charged to the
episode's budget (:mod:`timely.policies.rate_limits`), so throttling is never free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import httpx2
import openai

from timely.clock import WallClock, wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.policies.base import (
    VIRTUAL_MIN_TIMEOUT_S,
    Deadline,
    check_options,
    register_backend,
    register_check,
)
from timely.policies.openai_reply import (
    StreamedReply,
    StreamStats,
    assemble_completion,
    completion_from_response,
)
from timely.policies.rate_limits import RateLimits
from timely.prompting import (
    as_message,
    estimate_prompt_tokens,
    to_hermes_messages,
)
from timely.types import Completion, Message

log = logging.getLogger(__name__)

# Real time, for bounding a stream on a virtual-clock episode (its deadline is simulated).
_REAL_TIME = WallClock()

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
        stream: stream the reply (server-sent events), so a wall-clock deadline can stop the
            generation mid-answer and the time to first token is measured.
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
        stream: bool = False,
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
        if not isinstance(stream, bool):
            raise ConfigError(f"stream must be true or false, not {stream!r}")
        self.rate_limits = RateLimits(requests_per_minute, tokens_per_minute)
        self.stream = stream
        self.stream_stats = StreamStats()
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
        capped_by_budget = deadline.max_new_tokens is not None and limit == deadline.max_new_tokens
        turn = len(messages)
        if self.stream:
            completion = await self._generate_stream(
                request, tokens, deadline, started, turn, capped_by_budget
            )
        else:
            sent = await self._create(request, tokens, deadline)
            completion = None
            if sent is not None:
                completion = completion_from_response(
                    sent[0], turn, wall_seconds() - started, capped_by_budget
                )
        if completion is None:  # the deadline came first (waiting, timed out, nothing streamed)
            return Completion(finish_reason="deadline", gen_seconds=wall_seconds() - started)
        if completion.usage_estimated and not completion.prompt_tokens:
            # No usage from the server: charge the prompt as it was sent, never nothing.
            prompt = estimate_prompt_tokens(request["messages"], request.get("tools") or ())
            completion = completion.model_copy(update={"prompt_tokens": prompt})
        return completion

    async def _generate_stream(
        self,
        request: dict[str, Any],
        tokens: int,
        deadline: Deadline,
        started: float,
        turn: int,
        capped_by_budget: bool,
    ) -> Completion | None:
        """One streamed request; the stream is closed at the deadline. None when nothing
        arrived before the deadline.

        Raises:
            PolicyError: the server failed before or during the stream (a dropped connection,
                an undecodable chunk, an error event, a stream that ends unfinished).
        """
        request = {**request, "stream": True, "stream_options": {"include_usage": True}}
        sent = await self._create(request, tokens, deadline)
        if sent is None:
            return None
        stream, sent_at = sent
        reply = StreamedReply()
        cut = False
        try:
            async with _stream_cutoff(deadline):
                async for chunk in stream:
                    reply.add(chunk, wall_seconds() - sent_at)
        except (TimeoutError, httpx2.TimeoutException, openai.APITimeoutError):
            cut = True  # a read timeout can only be the deadline's (the SDK may wrap it)
        except (httpx2.TransportError, openai.APIConnectionError) as e:
            cause = e.__cause__ or e
            raise PolicyError(
                f"the model server at {self.base_url} broke off the stream after {reply.chunks} "
                f"chunks ({type(cause).__name__}: {cause}); check its log, or run without "
                "stream=true"
            ) from e
        except json.JSONDecodeError as e:
            raise PolicyError(
                f"the model server at {self.base_url} sent a stream chunk that is not JSON "
                f"({e}); is it an OpenAI-compatible API? Try without stream=true"
            ) from e
        except openai.APIError as e:
            raise PolicyError(
                f"the model server at {self.base_url} reported an error mid-stream for model "
                f"{self.model!r}: {e.message}"
            ) from e
        finally:
            await stream.close()  # mid-stream, this disconnect aborts the request in vLLM
        self.stream_stats.record(reply, cut)
        if reply.first_token_s is not None:
            log.debug("%s: first token after %.3f s", self.name, reply.first_token_s)
        if not cut and reply.finish_reason is None:
            raise PolicyError(
                f"the model server at {self.base_url} ended the stream without a finish_reason "
                f"after {reply.chunks} chunks: the reply is incomplete; check its log"
            )
        if cut and not reply.received:
            return None
        return assemble_completion(
            reply.text,
            reply.tool_calls(),
            "deadline" if cut else reply.finish_reason or "stop",
            reply.usage,
            turn,
            wall_seconds() - started,
            capped_by_budget,
        )

    async def _create(
        self, request: dict[str, Any], tokens: int, deadline: Deadline
    ) -> tuple[Any, float] | None:
        """Send ``request`` within the rate limits; a 429 is waited out and retried while the
        budget lasts. The response (a stream when asked for) and when it was sent; None when
        the deadline came first.

        Raises:
            PolicyError: the server cannot be reached, is out of quota, or refused the request.
        """
        throttled = 0
        while True:
            if not await self.rate_limits.acquire(tokens, deadline):
                return None
            sent_at = wall_seconds()
            try:
                response = await self._openai().chat.completions.create(
                    **request, timeout=deadline.timeout_s()
                )
                return response, sent_at
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


def _min_limit(configured: int | None, budget: int | None) -> int | None:
    if configured is None:
        return budget
    return configured if budget is None else min(configured, budget)


def _stream_cutoff(deadline: Deadline) -> contextlib.AbstractAsyncContextManager[None]:
    """Where a stream is closed: at the deadline on a wall clock; on a virtual clock (whose
    time is simulated) after the real-time floor every HTTP call gets."""
    if deadline.clock.kind == "wall":
        return deadline.clock.cutoff(deadline.at)
    return _REAL_TIME.cutoff(_REAL_TIME.now() + deadline.timeout_s())


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
    "stream",
    "name",
)


@register_check("openai")  # building one is the check: the HTTP client opens on first use
@register_backend(
    "openai", help="OpenAI-compatible server: openai:MODEL with base_url=... [stream=true]"
)
def openai_backend(spec: str = "", **options: Any) -> OpenAIPolicy:
    """Build an :class:`OpenAIPolicy` from a spec (the model, after ``openai:``) and options.

    Args:
        spec: the served model name.
        **options: ``base_url`` (required), ``api_key``, ``temperature``, ``max_tokens``,
            ``top_p``, ``seed``, ``tool_format``, ``token_limit_param``, ``extra_body``,
            ``requests_per_minute``, ``tokens_per_minute``, ``stream``, ``name``.

    Raises:
        ConfigError: no model, no base_url, an unknown option or a bad value.
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
