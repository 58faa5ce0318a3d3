"""Scripted policies: deterministic baselines and test doubles that replay a task's solution.

They make the loop, the clock and the reward testable without a model, and give reference
curves: ``scripted:oracle`` replays the task's :class:`~timely.task.ScriptedSolution` and ignores
time (what an untrained, budget-blind agent that happens to be right does),
``scripted:budget-aware`` replays it but stops with its best answer so far when the next step
would not fit in the time left, and ``scripted:answer-now`` answers immediately (the fast, dumb
floor). They report realistic token counts so a virtual clock's SpeedProfile charges sensible
generation time.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import TYPE_CHECKING, Any, Literal, get_args

from timely.clock import wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.policies.base import Deadline, register_backend, register_check
from timely.prompting import CHARS_PER_TOKEN
from timely.rng import make_rng
from timely.types import Completion, Message, ToolCall

if TYPE_CHECKING:
    from timely.task import ScriptedSolution, Task

ScriptMode = Literal["oracle", "budget-aware", "answer-now"]
MODES: tuple[str, ...] = get_args(ScriptMode)

# The budget line the loop appends to the user turn (both wordings in timely.budget).
_BUDGET_RE = re.compile(
    r"(?:time budget of|answer within)\s+(\d+(?:\.\d+)?)\s+seconds", re.IGNORECASE
)


def prompt_chars(
    messages: list[Message] | list[dict[str, Any]], tools: list[dict[str, Any]]
) -> int:
    """Characters a chat template would render: message contents, tool calls and tool schemas."""
    total = len(json.dumps(tools)) if tools else 0
    for m in messages:
        total += len(_get(m, "content") or "")
        for call in _get(m, "tool_calls") or []:
            call = call if isinstance(call, ToolCall) else ToolCall.model_validate(_flat_call(call))
            total += len(call.name) + len(json.dumps(call.arguments))
    return total


def should_stop(
    remaining: float, elapsed: float, steps_done: int, *, safety: float, first_step_s: float = 0.0
) -> bool:
    """Whether a budget-aware agent should answer now rather than take another step.

    The next step is assumed to cost what steps have cost on average so far (``first_step_s``
    before any has been observed); stop when less than ``safety`` times that is left.

    Args:
        remaining: seconds left in the budget.
        elapsed: seconds spent so far in this episode.
        steps_done: tool results received so far.
        safety: margin factor on the per-step estimate (1.5 = stop with 50% headroom).
        first_step_s: per-step estimate before anything has been observed.
    """
    per_step = elapsed / steps_done if steps_done else first_step_s
    return remaining <= 0 or remaining < safety * per_step


class ScriptedPolicy:
    """A scripted baseline; ``bind(task)`` gives the per-episode instance that plays it.

    Args:
        mode: "oracle", "budget-aware" or "answer-now".
        safety: budget-aware only: stop when remaining < safety x estimated step time.
        think_tokens: hidden reasoning tokens added to every completion (emulates a thinking
            model, so a SpeedProfile charges more generation time per turn).
        first_step_s: budget-aware only: the step-time estimate before any step was observed.
        slip: probability that a turn's tool call is wasted (re-issued instead of advancing the
            solution), drawn from a stream seeded by the task id, split and seed. It emulates a
            weaker model that needs more interactions for the same result (the wasted call is
            the solution's ``idle_call``, else the previous call again): with ``slip`` and a
            fast SpeedProfile one policy plays a small fast model, with ``slip=0`` and a slow
            profile a large slow one, and tool latency decides which wins (the paper's
            crossover, simulated).
        task: the task being played (set by ``bind``).
    """

    def __init__(
        self,
        mode: ScriptMode = "oracle",
        *,
        safety: float = 1.5,
        think_tokens: int = 0,
        first_step_s: float = 0.0,
        slip: float = 0.0,
        task: Task | None = None,
    ) -> None:
        if mode not in MODES:
            close = difflib.get_close_matches(mode, MODES, n=1)
            hint = f" Did you mean scripted:{close[0]}?" if close else ""
            raise ConfigError(
                f"unknown scripted policy {mode!r}.{hint} Use one of {', '.join(MODES)}"
            )
        if safety <= 0 or think_tokens < 0 or first_step_s < 0:
            raise ConfigError("safety must be > 0; think_tokens and first_step_s must be >= 0")
        if not 0.0 <= slip < 1.0:
            raise ConfigError(f"slip must be in [0, 1), got {slip}")
        self.mode: ScriptMode = mode
        self.name = f"scripted:{mode}"
        self.safety = float(safety)
        self.think_tokens = int(think_tokens)
        self.first_step_s = float(first_step_s)
        self.slip = float(slip)
        self.task = task
        self._solution: ScriptedSolution | None = task.solution() if task is not None else None
        self._started_at: float | None = None
        self._wasted = 0  # tool calls re-issued by a slip; they do not advance the solution
        self._rng = (  # only slipping policies draw; binding happens once per episode
            make_rng("scripted-slip", task.id, task.spec.split, task.spec.seed)
            if task is not None and self.slip
            else None
        )

    def bind(self, task: Task) -> ScriptedPolicy:
        """A fresh instance that plays ``task`` (the loop calls this once per episode)."""
        return ScriptedPolicy(
            self.mode,
            safety=self.safety,
            think_tokens=self.think_tokens,
            first_step_s=self.first_step_s,
            slip=self.slip,
            task=task,
        )

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        """The next scripted turn: the next tool call, or the final answer.

        Args:
            messages: the conversation so far; its tool results tell where in the script we are.
            tools: the OpenAI tools array (only counted for prompt tokens).
            deadline: when this call must be done; budget-aware reads the time left from it.
        """
        t0 = wall_seconds()
        solution = self._solution
        if solution is None:
            raise PolicyError(f"{self.name} must be bound to a task first: use bind_policy()")
        if self._started_at is None:
            self._started_at = deadline.clock.now()
        done = sum(1 for m in messages if _get(m, "role") == "tool") - self._wasted
        step = max(0, min(done, len(solution.calls)))
        call: ToolCall | None = None
        if self.mode == "answer-now":
            text = _fallback(solution, 0)
        elif step >= len(solution.calls):
            text = solution.answer
        elif self.mode == "budget-aware" and self._out_of_time(messages, deadline, step):
            text = _fallback(solution, step)
        else:
            call = solution.calls[step]
            if step > 0 and self._rng is not None and self._rng.random() < self.slip:
                # A wasted turn, as a weaker model would take: a call that changes nothing.
                wasted = solution.idle_call or solution.calls[step - 1]
                call = wasted.model_copy(update={"id": f"{call.id}-retry"})
                self._wasted += 1
                step -= 1
            text = f"Step {step + 1}: {_describe(call)}."
        out_chars = len(text) + (len(call.name) + len(json.dumps(call.arguments)) if call else 0)
        return Completion(
            text=text,
            tool_calls=[call] if call else [],
            prompt_tokens=math.ceil(prompt_chars(messages, tools) / CHARS_PER_TOKEN),
            completion_tokens=max(1, math.ceil(out_chars / CHARS_PER_TOKEN)) + self.think_tokens,
            gen_seconds=wall_seconds() - t0,
            finish_reason="tool_calls" if call else "stop",
        )

    def _out_of_time(self, messages: list[Any], deadline: Deadline, step: int) -> bool:
        assert self._started_at is not None
        elapsed = deadline.clock.now() - self._started_at
        remaining = deadline.remaining()
        budget = _stated_budget(messages)
        if budget is not None:  # under a 'late' overrun the deadline lies past the budget
            remaining = min(remaining, budget - elapsed)
        return should_stop(
            remaining, elapsed, step, safety=self.safety, first_step_s=self.first_step_s
        )


@register_check("scripted")  # building one is the check: it loads nothing
@register_backend(
    "scripted",
    help="Deterministic baselines replaying the task's solution: "
    "scripted:oracle, scripted:budget-aware, scripted:answer-now.",
)
def make_scripted(name: str = "oracle", **opts: Any) -> ScriptedPolicy:
    """Build a scripted policy from its name ("oracle" or "scripted:oracle") and options.

    Args:
        name: the mode, with or without the ``scripted:`` prefix.
        **opts: ``safety``, ``think_tokens``, ``first_step_s``, ``slip`` (see
            :class:`ScriptedPolicy`).
    """
    mode = name.removeprefix("scripted:")
    known = {"safety", "think_tokens", "first_step_s", "slip"}
    unknown = set(opts) - known
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)} for scripted:{mode}; known: {sorted(known)}"
        )
    return ScriptedPolicy(mode, **opts)  # type: ignore[arg-type]


def _get(message: Any, key: str) -> Any:
    return message.get(key) if isinstance(message, dict) else getattr(message, key, None)


def _flat_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped tool call dict as ToolCall fields."""
    if "function" not in call:
        return call
    args = call["function"].get("arguments") or "{}"
    return {
        "id": call.get("id", ""),
        "name": call["function"].get("name", ""),
        "arguments": json.loads(args) if isinstance(args, str) else args,
    }


def _stated_budget(messages: list[Any]) -> float | None:
    for m in messages:
        if _get(m, "role") == "user":
            found = _BUDGET_RE.findall(_get(m, "content") or "")
            return float(found[-1]) if found else None
    return None


def _fallback(solution: ScriptedSolution, step: int) -> str:
    answers = solution.fallback_answers
    if not answers:
        return solution.answer if step >= len(solution.calls) else ""
    return answers[min(step, len(answers) - 1)]


def _describe(call: ToolCall) -> str:
    if len(call.arguments) == 1:
        (value,) = call.arguments.values()
        return (
            f"computing {value}" if call.name == "calculator" else f"calling {call.name}({value})"
        )
    return f"calling {call.name}"
