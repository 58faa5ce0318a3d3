"""The budget-tracker prompt: a training-free baseline that restates the time before every turn.

Issue 20's question is whether training teaches a model time, so the trained rows must beat the
strongest thing a user can do without training: tell the model, before each of its turns, how
much time is left and to answer before it runs out. ``tracker:<inner spec>`` wraps any policy
(``tracker:hf:smollm2-135m``, ``tracker:llamacpp:...``, ``tracker:openai:MODEL``,
``tracker:scripted:oracle``) and appends that reminder as a user turn to the conversation the
inner policy sees.

The numbers are the ones the conversation already shows (the latest time status the loop pushed
or a ``get_duration`` result, read by :func:`timely.policies.scripted.shown_times`): the tracker
gives the model no information it did not have, only restates it where it is hard to miss.
Only where no budget is stated at all does it fall back on the deadline. The reminder is
transient (the loop's trajectory keeps its own messages) and its tokens are part of the prompt
the inner policy reports, so the loop charges them once, like any prompt; the tracker itself
never touches the clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timely.policies.base import (
    Deadline,
    Policy,
    bind_policy,
    check_policy,
    make_policy,
    register_backend,
    register_check,
)
from timely.policies.scripted import shown_times
from timely.types import Completion, Message

if TYPE_CHECKING:
    from timely.task import Task

PREFIX = "tracker"


def reminder(messages: list[Message], deadline: Deadline | None = None) -> str | None:
    """The restatement for the next turn, from the time the conversation shows.

    Args:
        messages: the conversation so far.
        deadline: the call's deadline; read only where the conversation states no budget.

    Returns:
        The reminder text, or None where there is nothing to restate (no budget, no deadline).
    """
    shown = shown_times(messages)
    if shown is None:
        if deadline is None:
            return None
        left = max(0.0, deadline.remaining())
        return (
            f"Time check: about {left:.1f}s left before the deadline. "
            "Give your final answer before it runs out."
        )
    left = max(0.0, shown.remaining)
    head = f"Time check: {shown.elapsed:.1f}s used, {left:.1f}s left."
    if shown.step_s is None:
        return f"{head} Give your final answer before the time runs out."
    if left < shown.step_s:
        return (
            f"{head} A step has cost about {shown.step_s:.1f}s so far, more than is left: "
            "answer now with your best partial result."
        )
    return (
        f"{head} A step has cost about {shown.step_s:.1f}s so far. Give your final answer "
        "before the time runs out; when less time is left than a step costs, answer at once "
        "with your best partial result."
    )


def with_reminder(messages: list[Message], deadline: Deadline | None = None) -> list[Message]:
    """``messages`` plus the reminder as a last user turn (unchanged where there is none)."""
    text = reminder(messages, deadline)
    return messages if text is None else [*messages, Message(role="user", content=text)]


class TrackerPolicy:
    """``inner`` with the budget-tracker reminder before every turn.

    Args:
        inner: any policy (bound or not; ``bind`` binds it to the episode's task).
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = f"{PREFIX}:{inner.name}"
        # The loop sizes its token cap with the policy's own tokenizer where it has one; an
        # inner policy without one is estimated from the text by the loop, as unwrapped.
        if callable(getattr(inner, "count_prompt_tokens", None)):
            self.count_prompt_tokens = self._count_prompt_tokens

    def bind(self, task: Task) -> TrackerPolicy:
        bound = bind_policy(self.inner, task)
        return self if bound is self.inner else TrackerPolicy(bound)

    def __getattr__(self, attr: str) -> Any:
        # Anything else (tokenizer, model, engine options) is the inner policy's.
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def _count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]]) -> int:
        """The inner policy's count of the prompt it will see, the reminder included."""
        return int(self.inner.count_prompt_tokens(with_reminder(messages), tools))  # type: ignore[attr-defined]

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        return await self.inner.generate(
            with_reminder(messages, deadline), tools, deadline=deadline
        )


@register_backend(
    PREFIX,
    help="budget-tracker prompt around any policy (the time left restated before every turn): "
    "tracker:hf:smollm2-135m, tracker:scripted:oracle",
)
def make_tracker(name: str, **options: Any) -> TrackerPolicy:
    """``tracker:<inner spec>``: the inner policy built with ``options``, wrapped."""
    return TrackerPolicy(make_policy(name, **options))


@register_check(PREFIX)
def check_tracker(name: str, **options: Any) -> None:
    """The inner spec's check: a tracker is as valid as the policy it wraps."""
    check_policy(name, **options)
