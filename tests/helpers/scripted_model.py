"""A real causal LM that leans toward scripted replies: multi-turn tool episodes, untrained.

Neither the embedded model nor a random tiny model emits ``<tool_call>{...}</tool_call>``
reliably, yet the log-prob and training-view tests need multi-turn tool episodes. ``ScriptedLM``
wraps a causal LM (a tiny random llama, or the embedded model) and adds a position-dependent bias
to its logits: at the ``k``-th position after an assistant header, the logit of the turn's
scripted token ``k`` is lifted to ``margin`` above the best other logit. Every other logit is the
inner model's, so at a temperature the distribution stays non-trivial: low-margin positions
(the tool arguments, the answer) give log-probs well below 0 and sometimes another token, after
which the script simply goes on (position, not content, picks the next scripted token). Which
script a turn gets is the number of assistant headers so far (the last script repeats).

The bias is a function of the token prefix and the inner logits only, so it is part of the
model: an incremental decode with a KV cache and a teacher-forced pass over the whole sequence
compute the same logits (under a cache only the new token arrives, so the wrapper keeps the ids
seen so far on the cache object).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

HEADER = "<|im_start|>assistant\n"
Segment = tuple[str, float]  # text (special tokens allowed) and its margin


class ScriptedLM(torch.nn.Module):
    """``inner``'s logits with scripted tokens lifted after each assistant header.

    Args:
        inner: a transformers causal LM.
        header: token ids that open an assistant turn.
        scripts: per assistant turn, ``(token id, margin)`` pairs of the reply to prefer.
    """

    def __init__(
        self, inner: Any, header: Sequence[int], scripts: Sequence[Sequence[tuple[int, float]]]
    ) -> None:
        super().__init__()
        self.inner = inner
        self.header = list(header)
        self.scripts = [list(s) for s in scripts]
        self.config = inner.config
        self.generation_config = inner.generation_config
        self.name_or_path = "test:scripted"

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Any:
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        seen = input_ids
        if past_key_values is not None:
            seen = torch.cat([past_key_values.timely_seen_ids, input_ids], dim=1)
        if use_cache and out.past_key_values is not None:
            out.past_key_values.timely_seen_ids = seen
        out.logits = self._lift(seen, out.logits)
        return out

    def _lift(self, seen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Lift scripted tokens in ``logits``, which cover the last positions of ``seen``."""
        logits = logits.clone()
        width, n_positions = seen.shape[1], logits.shape[1]
        h = len(self.header)
        for row, ids in enumerate(seen.tolist()):
            ends = [
                i + h - 1
                for i, token in enumerate(ids)
                if token == self.header[0] and ids[i : i + h] == self.header
            ]
            for turn, end in enumerate(ends):  # end: the header's last token
                script = self.scripts[min(turn, len(self.scripts) - 1)]
                for k, (target, margin) in enumerate(script):
                    col = end + k - (width - n_positions)  # position predicting token k
                    if end + k >= width:
                        break
                    if col < 0:
                        continue
                    scores = logits[row, col]
                    best_other = torch.cat([scores[:target], scores[target + 1 :]]).max()
                    scores[target] = best_other + margin
        return logits


def scripted_model(inner: Any, tokenizer: Any, scripts: Sequence[Sequence[Segment]]) -> ScriptedLM:
    """Wrap ``inner`` so assistant turn ``i`` leans toward ``scripts[i]`` (text segments)."""

    def encode(segments: Sequence[Segment]) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        for text, margin in segments:
            out += [(i, margin) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        return out

    header = tokenizer(HEADER, add_special_tokens=False)["input_ids"]
    return ScriptedLM(inner, header, [encode(s) for s in scripts]).eval()


def tool_then_answer(
    *expressions: str, answer: str = "42", sure: float = 6.0, unsure: float = 1.0
) -> list[list[Segment]]:
    """Scripts: one calculator call per expression, then ``Answer: <answer>``.

    The call syntax gets margin ``sure``; the expression and the answer get ``unsure``, so those
    tokens are sampled with visible uncertainty.
    """
    calls = [
        [
            ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "', sure),
            (e, unsure),
            ('"}}\n</tool_call><|im_end|>', sure),
        ]
        for e in expressions
    ]
    return [*calls, [("Answer: ", sure), (answer, unsure), ("<|im_end|>", sure)]]
