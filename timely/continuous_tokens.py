"""Prompt ids that extend what the model sampled, turn after turn (verl's "continuous tokens").

A local policy re-renders the whole conversation every turn, so the next prompt holds the
*parsed* assistant text re-tokenised: a stripped space, a tool call written differently or a
non-canonical BPE split makes it differ from the ids the model sampled (see
:mod:`timely.train.view`). A trainer that wants one sequence per episode (verl's agent loop:
``prompt_ids`` + ``response_ids`` with a mask) needs instead every prompt to be the previous
prompt, then exactly the sampled ids, then the tokens of what happened since (tool results, time
status, the next assistant header). :class:`ContinuousTokens` builds prompts that way.

The tokens of the new messages are found by rendering them after a sentinel assistant turn and
taking the text after the sentinel. That text starts with the template's end of an assistant
turn (``<|im_end|>\n`` in ChatML); when the sampled ids already end with it (the stop token),
only the rest is added. Rendering against a sentinel rather than against the real history keeps
this right for templates that render the last assistant turn differently from earlier ones
(Qwen3 adds an empty think block to the last one only).

Chat templates take keyword arguments of their own (Qwen3's ``enable_thinking``; verl passes
``data.apply_chat_template_kwargs`` to every template call of its loops). They go to every
render here, the first prompt and every turn's new messages alike, through
:func:`with_template_kwargs`, so a prompt never mixes two settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timely.errors import TrainingDataError
from timely.prompting import ToolFormat, prompt_token_ids, render_prompt, resolve_tool_format
from timely.types import Message

_SENTINEL = "⟦timely-previous-turn⟧"


class _TemplateKwargsTokenizer:
    """A tokenizer whose ``apply_chat_template`` always gets ``kwargs`` (a call's own win).

    A wrapper rather than a parameter of :func:`timely.prompting.render_prompt`, so every
    renderer that takes a tokenizer honours the kwargs without knowing about them.
    """

    def __init__(self, tokenizer: Any, kwargs: Mapping[str, Any]) -> None:
        self._inner = tokenizer
        self.template_kwargs = dict(kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.apply_chat_template(*args, **{**self.template_kwargs, **kwargs})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def with_template_kwargs(tokenizer: Any, kwargs: Mapping[str, Any] | None) -> Any:
    """``tokenizer`` with ``kwargs`` passed to every chat-template render (as verl's
    ``data.apply_chat_template_kwargs``, e.g. ``{"enable_thinking": False}`` for Qwen3); the
    tokenizer itself when there are none.

    Args:
        tokenizer: an HF tokenizer with a chat template.
        kwargs: extra keyword arguments of ``apply_chat_template``.
    """
    if not kwargs:
        return tokenizer
    return _TemplateKwargsTokenizer(tokenizer, kwargs)


class ContinuousTokens:
    """The prompt ids of one episode's turns, each extending the last prompt and its sample.

    Args:
        tokenizer: an HF tokenizer with a chat template.
        tool_format: how tools reach the prompt (:func:`timely.prompting.render_prompt`).
        chat_template_kwargs: extra keyword arguments of every chat-template render
            (:func:`with_template_kwargs`).
    """

    def __init__(
        self,
        tokenizer: Any,
        tool_format: ToolFormat = "auto",
        *,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        tokenizer = with_template_kwargs(tokenizer, chat_template_kwargs)
        self.tokenizer = tokenizer
        self.tool_format = resolve_tool_format(tokenizer, tool_format)
        self.initial_ids: list[int] = []  # the first prompt (verl's prompt_ids)
        self._context: list[int] | None = None  # last prompt + its sampled ids
        self._seen = 0  # messages of the last call (its assistant reply is the next one)
        self._pending: tuple[int, list[int]] | None = None  # (len(messages), prompt) cache
        self._special_ids = set(tokenizer.all_special_ids)

    def prompt_ids(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[int]:
        """The ids to feed the model for ``messages`` (the last call's messages, its reply, and
        what came after)."""
        if self._pending is not None and self._pending[0] == len(messages):
            return self._pending[1]
        if self._context is None:
            ids = prompt_token_ids(self.tokenizer, messages, tools, tool_format=self.tool_format)
            self.initial_ids = ids
        else:
            ids = self._context + self._new_message_ids(messages, tools)
        self._pending = (len(messages), ids)
        return ids

    @property
    def initial_length(self) -> int:
        return len(self.initial_ids)

    def sampled(self, messages: Sequence[Message], prompt: list[int], ids: list[int]) -> None:
        """Record that the model, fed ``prompt`` for ``messages``, sampled ``ids``."""
        self._context = list(prompt) + list(ids)
        self._seen = len(messages)
        self._pending = None

    def _new_message_ids(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> list[int]:
        reply = self._seen  # index of the assistant message the last call produced
        if len(messages) <= reply or messages[reply].role != "assistant":
            raise TrainingDataError(
                f"turn prompts must extend the previous turn: expected the model's reply at "
                f"message {reply}, got {len(messages)} messages"
            )
        new = list(messages[reply + 1 :])
        head = [*messages[:1], Message(role="assistant", content=_SENTINEL)]
        text = render_prompt(self.tokenizer, [*head, *new], tools, tool_format=self.tool_format)
        at = text.rfind(_SENTINEL)
        if at < 0:
            raise TrainingDataError(
                "the chat template does not render an assistant message's content verbatim, so "
                "the tokens between turns cannot be found; use tool_format='hermes-in-system' "
                "or a template that does"
            )
        after = text[at + len(_SENTINEL) :]
        assert self._context is not None
        last = self._context[-1]
        stop = self.tokenizer.decode([last], skip_special_tokens=False)
        if last in self._special_ids and stop and after.startswith(stop):
            after = after[len(stop) :]  # the model sampled the end of its turn itself
        return list(self.tokenizer(after, add_special_tokens=False)["input_ids"])
