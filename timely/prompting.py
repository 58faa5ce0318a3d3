"""One prompt renderer for generation, SFT and RL, so training and inference see the same text.

Many chat templates (the embedded SmolLM2's ChatML among them) silently ignore the ``tools=``
argument of ``apply_chat_template``, and none of them knows our OpenAI-shaped tool messages. So
the project renders tools itself, Hermes/Qwen style: a ``# Tools`` section in the system prompt
lists the JSON schemas inside ``<tools></tools>`` and teaches the
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` format; earlier assistant calls become
text in that format and tool results become user turns wrapped in ``<tool_response>`` tags.
Templates that do support tools natively can be used as they are (``tool_format="native"``);
``"auto"`` picks native only when the template visibly renders tools.

Every policy that builds prompts locally and every training-data builder must go through
:func:`render_prompt` / :func:`prompt_token_ids` (and :func:`assistant_text` for targets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from timely.errors import ConfigError
from timely.parsing import format_tool_call
from timely.types import Message, ToolCall

ToolFormat = Literal["auto", "hermes-in-system", "native"]
TOOL_FORMATS: tuple[str, ...] = ("auto", "hermes-in-system", "native")

TOOLS_HEADER = (
    "# Tools\n\n"
    "You may call one or more tools to help with the task.\n\n"
    "You are provided with tool signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "</tools>\n\n"
    "To call a tool, return a JSON object with the tool name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call>\n'
    "To give your final answer, reply without a tool call."
)

_DUMMY_TOOL = {
    "type": "function",
    "function": {
        "name": "timely_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}
_native_cache: dict[str, bool] = {}


def tools_system_section(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt section that lists ``tools`` and teaches the call format."""
    lines = [json.dumps(_as_function_tool(t), ensure_ascii=False) for t in tools]
    return "\n".join([TOOLS_HEADER, *lines, TOOLS_FOOTER])


def assistant_text(content: str, tool_calls: Sequence[ToolCall] | None) -> str:
    """An assistant turn as plain text: content, then one ``<tool_call>`` block per call.

    This is exactly the text a model must produce for :func:`timely.parsing.parse_tool_calls`
    to recover ``tool_calls``, so it doubles as the SFT target of an assistant turn.
    """
    parts = [content.strip()] if content.strip() else []
    parts += [format_tool_call(c.name, c.arguments) for c in tool_calls or []]
    return "\n".join(parts)


def to_hermes_messages(
    messages: Sequence[Message | dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, str]]:
    """Convert OpenAI-shaped messages to plain ``{"role", "content"}`` chat messages.

    The tools section is merged into the first system message (or becomes one); assistant tool
    calls become ``<tool_call>`` text; consecutive ``tool`` results become one ``user`` turn of
    ``<tool_response>`` blocks.
    """
    out: list[dict[str, str]] = []
    pending: list[str] = []  # consecutive tool results, flushed as one user turn

    def flush() -> None:
        if pending:
            out.append({"role": "user", "content": "\n".join(pending)})
            pending.clear()

    for msg in map(as_message, messages):
        if msg.role == "tool":
            pending.append(f"<tool_response>\n{msg.content}\n</tool_response>")
            continue
        flush()
        if msg.role == "assistant":
            out.append(
                {"role": "assistant", "content": assistant_text(msg.content, msg.tool_calls)}
            )
        else:
            out.append({"role": msg.role, "content": msg.content})
    flush()

    if tools:
        section = tools_system_section(tools)
        if out and out[0]["role"] == "system":
            system = out[0]["content"].rstrip()
            out[0] = {"role": "system", "content": f"{system}\n\n{section}" if system else section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def to_native_messages(messages: Sequence[Message | dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for templates with tool support (HF convention: arguments as dicts)."""
    out: list[dict[str, Any]] = []
    for msg in map(as_message, messages):
        item: dict[str, Any] = {"role": msg.role, "content": msg.content}
        if msg.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in msg.tool_calls
            ]
        if msg.role == "tool":
            item["tool_call_id"] = msg.tool_call_id
            if msg.name is not None:
                item["name"] = msg.name
        out.append(item)
    return out


def supports_native_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools=`` argument at all.

    Detected by rendering one user turn with and without a dummy tool; cached per template.
    """
    template = str(getattr(tokenizer, "chat_template", None) or "")
    if template not in _native_cache:
        probe = [{"role": "user", "content": "hi"}]
        try:
            plain = tokenizer.apply_chat_template(probe, tokenize=False)
            with_tool = tokenizer.apply_chat_template(probe, tools=[_DUMMY_TOOL], tokenize=False)
            _native_cache[template] = plain != with_tool
        except Exception:  # a template that chokes on tools does not support them
            _native_cache[template] = False
    return _native_cache[template]


def resolve_tool_format(tokenizer: Any, tool_format: ToolFormat = "auto") -> ToolFormat:
    """Turn ``"auto"`` into ``"native"`` or ``"hermes-in-system"`` for this tokenizer."""
    if tool_format not in TOOL_FORMATS:
        raise ValueError(f"unknown tool_format {tool_format!r}; use one of {TOOL_FORMATS}")
    if tool_format != "auto":
        return tool_format
    return "native" if supports_native_tools(tokenizer) else "hermes-in-system"


def render_prompt(
    tokenizer: Any,
    messages: Sequence[Message | dict[str, Any]],
    tools: Sequence[dict[str, Any]] = (),
    *,
    tool_format: ToolFormat = "auto",
    add_generation_prompt: bool = True,
) -> str:
    """Render the conversation (and tools) to the exact prompt text the model sees.

    Args:
        tokenizer: an HF tokenizer with a chat template.
        messages: the conversation, :class:`~timely.types.Message` objects or OpenAI dicts.
        tools: OpenAI ``tools`` array (``[{"type": "function", "function": {...}}]``).
        tool_format: ``"hermes-in-system"`` (render tools ourselves), ``"native"`` (hand them to
            the template) or ``"auto"`` (native only if the template renders tools).
        add_generation_prompt: end with the assistant header, ready for generation. Pass False
            to render a finished conversation (SFT data).

    Returns:
        The prompt text.
    """
    if resolve_tool_format(tokenizer, tool_format) == "native":
        return tokenizer.apply_chat_template(
            to_native_messages(messages),
            tools=list(tools) or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    return tokenizer.apply_chat_template(
        to_hermes_messages(messages, tools),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def prompt_token_ids(
    tokenizer: Any,
    messages: Sequence[Message | dict[str, Any]],
    tools: Sequence[dict[str, Any]] = (),
    *,
    tool_format: ToolFormat = "auto",
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of :func:`render_prompt`'s text (special tokens come from the template text)."""
    text = render_prompt(
        tokenizer,
        messages,
        tools,
        tool_format=tool_format,
        add_generation_prompt=add_generation_prompt,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def as_message(msg: Message | dict[str, Any]) -> Message:
    """Accept our :class:`Message` or an OpenAI chat dict (``function.arguments`` as JSON)."""
    if isinstance(msg, Message):
        return msg
    data = dict(msg)
    calls = data.pop("tool_calls", None) or None
    if calls:
        data["tool_calls"] = [_openai_call(c, i) for i, c in enumerate(calls)]
    if data.get("content") is None:
        data["content"] = ""
    return Message.model_validate(data)


def _openai_call(call: Any, index: int) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    fn = call.get("function", call)
    args = fn.get("arguments") or {}
    if isinstance(args, str):
        args = json.loads(args)
    return ToolCall(id=call.get("id") or f"call_{index}", name=fn["name"], arguments=args)


def _as_function_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Tools are listed in OpenAI form; a bare function schema is wrapped for consistency."""
    if tool.get("type") == "function" and "function" in tool:
        return tool
    return {"type": "function", "function": tool}


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every id that ends an assistant turn, one rule for every policy that samples ids.

    A model's turn ends on whatever its generation config or tokenizer calls EOS, and on the
    ChatML end of turn ``<|im_end|>`` where the vocabulary has it: exported tokenizers do not
    always agree on EOS (the embedded SmolLM2's Hugging Face export names ``<|im_start|>``),
    and a policy that stops on one id only runs on past the end of its turn.

    Args:
        tokenizer: the model's tokenizer.
        generation_config: the model's ``GenerationConfig`` (or anything with
            ``eos_token_id``: an int or a list), when one is at hand.

    Raises:
        ConfigError: nothing ends a turn.
    """
    ids: set[int] = set()
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    if not ids:
        raise ConfigError("the tokenizer has no EOS token; set tokenizer.eos_token")
    return sorted(ids)


# -- token estimates, for backends without a local tokenizer --------------------------------------
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code with BPE tokenizers
TEMPLATE_TOKENS_PER_MESSAGE = 5  # ChatML-style headers: <|im_start|>role\n ... <|im_end|>\n


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text`` (characters / 4, rounded up)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_tools_tokens(tools: Sequence[dict[str, Any]]) -> int:
    """Estimated tokens of the system-prompt section that lists ``tools`` (0 without tools)."""
    return estimate_tokens(tools_system_section(tools)) if tools else 0


def estimate_messages_tokens(
    messages: Sequence[Message | dict[str, Any]],
    generation_prompt: int = TEMPLATE_TOKENS_PER_MESSAGE,
) -> int:
    """Estimated tokens of the rendered conversation: contents, calls and template headers,
    plus ``generation_prompt`` tokens for the assistant header generation starts from."""
    total = generation_prompt
    for m in messages:
        msg = m if isinstance(m, Message) else as_message(m)
        text = assistant_text(msg.content, msg.tool_calls) if msg.tool_calls else msg.content
        total += TEMPLATE_TOKENS_PER_MESSAGE + estimate_tokens(text)
    return total


def estimate_prompt_tokens(
    messages: Sequence[Message | dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
) -> int:
    """Estimated prompt tokens of ``messages`` and ``tools`` as a chat template renders them."""
    return estimate_tools_tokens(tools) + estimate_messages_tokens(messages)
