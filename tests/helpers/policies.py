"""Test doubles for policies: replay a fixed list of completions, or fail."""

from __future__ import annotations

from typing import Any

from timely.policies.base import Deadline
from timely.types import Completion, Message, ToolCall


class ReplayPolicy:
    """Returns the given completions in order (the last one repeats)."""

    def __init__(self, completions: list[Completion], name: str = "test:replay") -> None:
        self.completions = completions
        self.name = name
        self.calls: list[tuple[list[Message], list[dict[str, Any]], Deadline]] = []

    async def generate(self, messages, tools, *, deadline):
        self.calls.append((list(messages), tools, deadline))
        i = min(len(self.calls) - 1, len(self.completions) - 1)
        return self.completions[i]


class CrashingPolicy:
    name = "test:crash"

    async def generate(self, messages, tools, *, deadline):
        raise RuntimeError("model server exploded")


class SlowWallPolicy:
    """Really waits (through the deadline's clock) before answering: for wall-clock cutoffs."""

    name = "test:slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def generate(self, messages, tools, *, deadline):
        await deadline.clock.sleep(self.seconds)
        return Completion(text="Answer: 0", completion_tokens=3)


class CalculatorAgent:
    """A stand-in agent for chat requests: calls ``calculator`` while it is offered (up to
    ``calls`` times, on the expression after 'compute'), then answers with the last result.

    With ``calls`` large it keeps calling tools until the loop stops offering them (the
    endpoint's wrap-up), which is what the deadline tests need.
    """

    name = "test:calculator-agent"

    def __init__(self, calls: int = 1, expression: str = "6*7") -> None:
        self.calls, self.expression = calls, expression
        self.offered: list[list[str]] = []  # tool names offered on each call

    async def generate(self, messages, tools, *, deadline):
        names = [t["function"]["name"] for t in tools]
        self.offered.append(names)
        results = [m for m in messages if m.role == "tool"]
        if "calculator" in names and len(results) < self.calls:
            call = ToolCall(id="c", name="calculator", arguments={"expression": self.expression})
            return Completion(tool_calls=[call], prompt_tokens=30, completion_tokens=12)
        answer = results[-1].content.splitlines()[0] if results else "no result"
        return Completion(text=f"The answer is {answer}", prompt_tokens=30, completion_tokens=6)
