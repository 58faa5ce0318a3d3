"""How a chat-completions reply, streamed or not, becomes a :class:`~timely.types.Completion`.

A plain reply is one ``message`` (content, ``tool_calls`` with JSON-string arguments, a finish
reason, ``usage``). A streamed reply arrives as ``chat.completion.chunk`` objects: content
fragments in ``choices[0].delta.content``, tool calls as fragments keyed by
``delta.tool_calls[i].index`` (the id, type and function name usually in the first fragment, the
arguments JSON split over the rest, as vLLM's tool parsers send them), a ``finish_reason`` on the
last choice chunk, and, when the request asked for ``stream_options={"include_usage": True}``, a
final chunk with no choices and the ``usage``. :class:`StreamedReply` folds them into the parts a
plain ``message`` has, so both paths build their Completion with :func:`assemble_completion` and
give the same record for the same reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from timely.errors import PolicyError
from timely.parsing import decode_arguments, parse_tool_calls
from timely.prompting import assistant_text, estimate_tokens
from timely.types import Completion, ToolCall

# (id, function name, arguments JSON) of one tool call, as the server sent it.
RawCall = tuple[str | None, str | None, str | None]


@dataclass
class _CallParts:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamedReply:
    """What the chunks of one stream said so far.

    Attributes:
        content: the assistant text fragments, in order.
        finish_reason: the choice's finish reason; None until the last choice chunk.
        usage: the last ``usage`` object seen (the final chunk with ``include_usage``).
        first_token_s: seconds from sending the request to the first chunk that carried text
            or a tool call; None while nothing came.
        chunks: chunks received.
    """

    content: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Any = None
    first_token_s: float | None = None
    chunks: int = 0
    _calls: dict[int, _CallParts] = field(default_factory=dict)

    def add(self, chunk: Any, at: float) -> None:
        """Fold one chunk in; ``at`` is seconds since the request was sent."""
        self.chunks += 1
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        for choice in getattr(chunk, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue  # n > 1 is never requested; only the first choice is an answer
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None)
            if text:
                self.content.append(text)
                self._first(at)
            for call in getattr(delta, "tool_calls", None) or []:
                self._add_call(call)
                self._first(at)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def _first(self, at: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = at

    def _add_call(self, call: Any) -> None:
        index = getattr(call, "index", None)
        if not isinstance(index, int):
            index = len(self._calls)
        parts = self._calls.setdefault(index, _CallParts())
        if call.id and not parts.id:
            parts.id = call.id
        fn = getattr(call, "function", None)
        name = getattr(fn, "name", None)
        # The name comes whole in one fragment; some servers repeat it in every fragment.
        if name and name != parts.name:
            parts.name += name
        arguments = getattr(fn, "arguments", None)
        if arguments:
            parts.arguments.append(arguments)

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def received(self) -> bool:
        """Whether any text or tool call arrived."""
        return bool(self.content or self._calls)

    def tool_calls(self) -> list[RawCall]:
        """The tool calls in index order, arguments joined."""
        return [
            (parts.id, parts.name or None, "".join(parts.arguments))
            for _, parts in sorted(self._calls.items())
        ]


@dataclass
class StreamStats:
    """What streaming did for a policy so far (all episodes together).

    The record of a step has no field for the time to first token, so it is kept here (and
    logged at debug level): ``policy.stream_stats``.

    Attributes:
        streams: streamed calls that got an answer from the server.
        cut: streams closed at the deadline (closing it is what aborts the request in vLLM).
        first_tokens: streams whose first token arrived.
        first_token_s_total: their times to first token, summed.
        last_first_token_s: the most recent time to first token.
    """

    streams: int = 0
    cut: int = 0
    first_tokens: int = 0
    first_token_s_total: float = 0.0
    last_first_token_s: float | None = None

    def record(self, reply: StreamedReply, cut: bool) -> None:
        self.streams += 1
        self.cut += cut
        if reply.first_token_s is not None:
            self.first_tokens += 1
            self.first_token_s_total += reply.first_token_s
            self.last_first_token_s = reply.first_token_s

    @property
    def mean_first_token_s(self) -> float | None:
        return self.first_token_s_total / self.first_tokens if self.first_tokens else None


def completion_from_response(
    response: Any, turn: int, gen_seconds: float, capped_by_budget: bool
) -> Completion:
    """The Completion of a plain (non-streamed) chat-completions response."""
    if not getattr(response, "choices", None):
        raise PolicyError("the model server returned no choices; is it an OpenAI-compatible API?")
    choice = response.choices[0]
    message = choice.message
    raw: list[RawCall] = []
    for call in message.tool_calls or []:
        fn = getattr(call, "function", None)
        raw.append((call.id, getattr(fn, "name", None), getattr(fn, "arguments", None)))
    return assemble_completion(
        message.content or "",
        raw,
        choice.finish_reason or "stop",
        getattr(response, "usage", None),
        turn,
        gen_seconds,
        capped_by_budget,
    )


def assemble_completion(
    content: str,
    raw_calls: Sequence[RawCall],
    finish: str,
    usage: Any,
    turn: int,
    gen_seconds: float,
    capped_by_budget: bool,
) -> Completion:
    """The Completion of a reply, streamed or not (one function, so both record the same).

    A reply cut at the deadline keeps its text and the calls that arrived whole; a call cut
    halfway is dropped rather than counted as malformed (the model did not get it wrong).
    """
    cut = finish == "deadline"
    calls: list[ToolCall] = []
    malformed: list[str] = []
    for i, (call_id, name, raw_arguments) in enumerate(raw_calls):
        if not name:
            malformed.append("the server returned a tool call without a function name")
            continue
        arguments, error = decode_arguments(raw_arguments)
        if arguments is None:
            malformed.append(f"tool call {name!r}: {error}")
            continue
        calls.append(ToolCall(id=call_id or f"call_{turn}_{i}", name=name, arguments=arguments))
    if not raw_calls:
        # A server without a tool parser (or a model in hermes-in-system mode) answers in text.
        content, calls, malformed = parse_tool_calls(content, id_prefix=f"call_{turn}_")
    if cut:
        malformed = []
    if finish == "length" and capped_by_budget:
        finish = "deadline"
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    # Servers that report no usage (some proxies, streaming without include_usage) are charged
    # from the text instead, and the step says so: generation is never free.
    estimated = not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int)
    if not isinstance(completion_tokens, int) or (
        completion_tokens == 0 and (content or raw_calls)
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
