"""How a model chooses between one more tool call and answering, by the time it was shown.

A budget-aware agent makes its stop decision in the first token of the turn after a tool result:
the CPU recipe's experts open a call turn with ``Step 3: computing ...`` and an answering turn
with ``Answer: ...``. At every decision point of recorded trajectories (a tool result whose
status states the steps that fit, :attr:`timely.budget.TimeStatus.steps_left`) this measures
the model's probability of the answering turn's first token, grouped by the steps shown, beside
what the recorded turn did. It is the direct reading of "has the model learned to answer when
about one step is left" that docs/training.md reports for SFT and RL (``timely-rl decisions``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from timely.budget import read_status
from timely.types import Message, Trajectory

# Steps shown at a decision point, with everything from 3 up pooled (plenty of time).
BUCKETS = ("0", "1", "2", "3+")


@dataclass(frozen=True)
class DecisionPoint:
    """The conversation up to a tool result whose status states the steps that fit.

    Attributes:
        messages: the conversation the model's next turn was generated from.
        tools: the tools array it was offered.
        steps_left: the steps of the shown step cost that fit in the time left.
        answered: whether the recorded next turn answered (no tool call); None where there was
            no next turn (the deadline cut it).
    """

    messages: list[Message]
    tools: list[dict[str, Any]]
    steps_left: int
    answered: bool | None

    @property
    def bucket(self) -> str:
        return BUCKETS[min(self.steps_left, len(BUCKETS) - 1)]


def decision_points(
    trajectories: Iterable[Trajectory], task_prefix: str = ""
) -> list[DecisionPoint]:
    """Every tool result with a stated step count in ``trajectories`` (of tasks whose id starts
    with ``task_prefix``), with the recorded next turn's choice."""
    points = []
    for traj in trajectories:
        if not traj.task_id.startswith(task_prefix):
            continue
        msgs = traj.messages
        for i, m in enumerate(msgs):
            if m.role != "tool":
                continue
            after = msgs[i + 1] if i + 1 < len(msgs) else None
            if after is not None and after.role != "assistant":
                continue  # more tool results of the same turn follow: no decision yet
            status = read_status(m.content)
            if status is None or status.steps_left is None:
                continue
            answered = None if after is None else not after.tool_calls
            points.append(DecisionPoint(msgs[: i + 1], traj.tools, status.steps_left, answered))
    return points


def per_bucket(points: Sequence[DecisionPoint], limit: int) -> list[DecisionPoint]:
    """The first ``limit`` points of each steps-shown bucket (long budgets have far more
    decision points than short ones, and the short ones are the question)."""
    kept: dict[str, int] = {}
    out = []
    for p in points:
        if kept.get(p.bucket, 0) < limit:
            kept[p.bucket] = kept.get(p.bucket, 0) + 1
            out.append(p)
    return out


def answer_probabilities(
    model: Any, tokenizer: Any, points: Sequence[DecisionPoint], answer_prefix: str = "Answer"
) -> list[float]:
    """The model's probability that the next turn starts with ``answer_prefix``'s first token,
    at each point (prompts rendered as the local policy renders them)."""
    import torch

    from timely.prompting import prompt_token_ids

    answer_id = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"][0]
    probs = []
    with torch.inference_mode():
        for p in points:
            ids = prompt_token_ids(tokenizer, p.messages, p.tools)
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            probs.append(float(torch.softmax(logits, -1)[answer_id]))
    return probs


def decision_table(points: Sequence[DecisionPoint], probs: Sequence[float]) -> list[dict[str, Any]]:
    """One row per steps-shown bucket: decision points, the share the recorded turn answered
    (of those with a next turn) and the model's mean answer probability."""
    rows = []
    for bucket in BUCKETS:
        mine = [(p, q) for p, q in zip(points, probs, strict=True) if p.bucket == bucket]
        if not mine:
            continue
        recorded = [p.answered for p, _ in mine if p.answered is not None]
        rows.append(
            {
                "steps_left": bucket,
                "points": len(mine),
                "recorded_answered": sum(recorded) / len(recorded) if recorded else None,
                "cut_off": sum(1 for p, _ in mine if p.answered is None),
                "p_answer": sum(q for _, q in mine) / len(mine),
            }
        )
    return rows
