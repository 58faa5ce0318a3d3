"""A token-in/token-out server with scripted replies, shaped like verl's ``LLMServerClient``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenOutput:
    """verl's ``TokenOutput`` fields that a rollout reads."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    stop_reason: str | None = "completed"


@dataclass
class ScriptedTokenServer:
    """Replies with ``replies[i]`` (text, special tokens included) to the i-th call, cut at the
    request's ``max_tokens`` like vLLM; records every request."""

    tokenizer: Any
    replies: Sequence[str]
    logprob: float = -0.5
    with_logprobs: bool = True
    stop_reason: str = "completed"
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any
    ) -> TokenOutput:
        self.requests.append(
            {"request_id": request_id, "prompt_ids": list(prompt_ids), **sampling_params}
        )
        text = self.replies[min(len(self.requests), len(self.replies)) - 1]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids[: sampling_params["max_tokens"]]
        logprobs = [self.logprob] * len(ids) if self.with_logprobs else None
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason=self.stop_reason)


# The tiny ChatML template with Qwen3's switch: an empty think block when thinking is off.
CHATML_THINK = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)
