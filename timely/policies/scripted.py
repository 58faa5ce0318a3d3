"""Scripted policies: deterministic baselines and test doubles that replay a task's solution.

They make the loop, the clock and the reward testable without a model, and give reference
curves: ``scripted:oracle`` replays the task's :class:`~timely.task.ScriptedSolution` and ignores
time (what an untrained, budget-blind agent that happens to be right does),
``scripted:budget-aware`` replays it but stops with its best answer so far when the next step
would not fit in the time left (read from its deadline), ``scripted:timely`` does the same on
the time *shown* in the conversation (the expert the cold-start data imitates: its decisions
follow what the model will see, :func:`shown_times`), and ``scripted:answer-now`` answers
immediately (the fast, dumb floor). They report realistic token counts so a virtual clock's
SpeedProfile charges sensible generation time.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from timely.budget import (
    GET_DURATION_TOOL,
    SHOWN_RESOLUTION_S,
    TimeStatus,
    expected_step_s,
    read_status,
)
from timely.clock import wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.policies.base import Deadline, register_backend, register_check
from timely.prompting import CHARS_PER_TOKEN
from timely.rng import make_rng
from timely.types import Completion, Message, ToolCall

if TYPE_CHECKING:
    from timely.task import ScriptedSolution, Task

ScriptMode = Literal["oracle", "budget-aware", "timely", "answer-now"]
MODES: tuple[str, ...] = get_args(ScriptMode)

# The budget line the loop appends to the user turn (both wordings in timely.budget).
CLOCK_TEXT = "Let me check the time."
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


@dataclass(frozen=True)
class ShownTime:
    """What the conversation has shown of the time: a reading and the step cost it implies.

    Attributes:
        steps: task tool results (clock reads excluded) before the latest reading.
        elapsed: seconds used at the latest reading (0 at the start).
        remaining: seconds left at the latest reading.
        step_s: expected seconds of one more step (a generation plus a tool call): the larger
            of the average over the steps shown and the latest step's cost, since prompts grow
            and a turn's prefill with them; None before any step was shown.
    """

    steps: int
    elapsed: float
    remaining: float
    step_s: float | None


def shown_times(messages: list[Any]) -> ShownTime | None:
    """The time as the model saw it: the latest status in the conversation and the step cost
    its readings imply; None where no budget was stated (nothing to decide on).

    Readings come from status lines pushed after tool results, ``get_duration`` results and
    wrap-up turns, in either wording (:func:`timely.budget.read_status`); the start counts as a
    reading of 0 s used. Task steps are the tool results other than clock reads.
    """
    budget = _stated_budget(messages)
    if budget is None:
        return None
    readings: list[tuple[int, float]] = [(0, 0.0)]
    latest: TimeStatus | None = None
    steps = 0
    for m in messages:
        role = _get(m, "role")
        if role == "tool" and _get(m, "name") != GET_DURATION_TOOL:
            steps += 1
        if role in ("tool", "user"):
            status = read_status(_get(m, "content"), budget)
            if status is not None:
                readings.append((steps, status.elapsed))
                latest = status
    steps_at, elapsed = readings[-1]
    shown_budget = latest.budget if latest is not None else budget
    # A status that states the step cost is read as stated (what the model saw); the paper's
    # wording does not, and the cost is worked out from its readings the same way the loop does.
    step_s = latest.step_s if latest is not None and latest.step_s else None
    if step_s is None:
        step_s = expected_step_s(readings)
    return ShownTime(
        steps=steps_at, elapsed=elapsed, remaining=shown_budget - elapsed, step_s=step_s
    )


def answer_now(
    shown: ShownTime | None, steps_done: int, *, safety: float, first_step_s: float = 0.0
) -> bool:
    """The ``scripted:timely`` stopping rule: answer now when the time left, as shown and
    extrapolated to now, is less than ``safety`` x the expected cost of the next step.

    One step is the next tool call's turn and latency; at ``safety`` 2 the second covers the
    answer turn after it (a generation, cheaper than a step, so the rule errs early: the room
    RL can win back). Steps taken since the latest reading (the time was only pulled) are
    charged at the expected step cost.

    Args:
        shown: :func:`shown_times` of the conversation; None (no budget stated) never stops.
        steps_done: task tool results so far.
        safety: margin on the expected step cost.
        first_step_s: the step cost assumed before any step was shown.
    """
    if shown is None:
        return False
    step_s = shown.step_s if shown.step_s is not None else first_step_s
    remaining = shown.remaining - max(0, steps_done - shown.steps) * step_s
    return remaining <= 0 or remaining < safety * step_s + SHOWN_RESOLUTION_S


class ScriptedPolicy:
    """A scripted baseline; ``bind(task)`` gives the per-episode instance that plays it.

    Args:
        mode: "oracle", "budget-aware" or "answer-now".
        safety: budget-aware and timely: stop when remaining < safety x estimated step time.
        think_tokens: hidden reasoning tokens added to every completion (emulates a thinking
            model, so a SpeedProfile charges more generation time per turn).
        first_step_s: budget-aware and timely: the step-time estimate before any step was
            observed.
        slip: probability that a turn's tool call is wasted (re-issued instead of advancing the
            solution), drawn from a stream seeded by the task id, split and seed. It emulates a
            weaker model that needs more interactions for the same result (the wasted call is
            the solution's ``idle_call``, else the previous call again): with ``slip`` and a
            fast SpeedProfile one policy plays a small fast model, with ``slip=0`` and a slow
            profile a large slow one, and tool latency decides which wins (the paper's
            crossover, simulated).
        clock_every: timely only, where the time is pulled (``get_duration`` offered, nothing
            pushed): read the clock once this many task steps passed without a reading, and
            before stopping early; 0 reads it only before stopping.
        stop_after: answer with the partial result after this many task steps at the latest
            (None: no cap). Cold-start data replays a cut-off expert episode with a cap to keep
            it as an episode answered in time (:func:`timely.train.experts.play_expert`).
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
        clock_every: int = 2,
        stop_after: int | None = None,
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
        if clock_every < 0 or (stop_after is not None and stop_after < 0):
            raise ConfigError("clock_every and stop_after must be >= 0")
        self.mode: ScriptMode = mode
        self.name = f"scripted:{mode}"
        self.safety = float(safety)
        self.think_tokens = int(think_tokens)
        self.first_step_s = float(first_step_s)
        self.slip = float(slip)
        self.clock_every = int(clock_every)
        self.stop_after = stop_after
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
            clock_every=self.clock_every,
            stop_after=self.stop_after,
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
        tool_results = [m for m in messages if _get(m, "role") == "tool"]
        if self.mode == "timely":  # its own clock reads are no steps of the script
            tool_results = [m for m in tool_results if _get(m, "name") != GET_DURATION_TOOL]
        done = len(tool_results) - self._wasted
        step = max(0, min(done, len(solution.calls)))
        call: ToolCall | None = None
        decided: tuple[str, ToolCall | None] | None = None
        if self.mode == "answer-now":
            text = _fallback(solution, 0)
        elif step >= len(solution.calls):
            text = solution.answer
        elif self.stop_after is not None and step >= self.stop_after:
            text = _fallback(solution, step)
        elif self.mode == "budget-aware" and self._out_of_time(messages, deadline, step):
            text = _fallback(solution, step)
        elif self.mode == "timely" and (decided := self._timely_turn(messages, tools, step)):
            text, call = decided
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

    def _timely_turn(
        self, messages: list[Any], tools: list[dict[str, Any]], step: int
    ) -> tuple[str, ToolCall | None] | None:
        """The timely expert's turn when it does not simply take the next step: an answer with
        its partial result, or a clock read; None: take the next step.

        It decides on the shown time only (:func:`shown_times`, :func:`answer_now`). Where the
        time is pulled it reads the clock after its first step (until then it knows no step
        cost to extrapolate with), when ``clock_every`` steps passed unread, and before an
        early stop that rests on an extrapolation, if half a step is left for the read: an
        early answer in the data then follows a reading the model saw.
        """
        assert self._solution is not None
        offered = {t["function"]["name"] for t in tools}
        if self._solution.calls[step].name not in offered:  # wrapping up: no tools offered
            return _fallback(self._solution, step), None
        shown = shown_times(messages)
        stop = answer_now(shown, step, safety=self.safety, first_step_s=self.first_step_s)
        if shown is not None and GET_DURATION_TOOL in offered and not _just_read(messages):
            unread = step - shown.steps
            step_s = shown.step_s or self.first_step_s
            room = shown.remaining - unread * step_s > step_s / 2
            blind = shown.step_s is None and not self.first_step_s  # no step cost seen yet
            if unread > 0 and ((stop and room) or blind or 0 < self.clock_every <= unread):
                reads = sum(1 for m in messages if _get(m, "name") == GET_DURATION_TOOL)
                clock = ToolCall(id=f"clock_{reads}", name=GET_DURATION_TOOL, arguments={})
                return CLOCK_TEXT, clock
        return (_fallback(self._solution, step), None) if stop else None

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
    "scripted:oracle, scripted:budget-aware, scripted:timely, scripted:answer-now.",
)
def make_scripted(name: str = "oracle", **opts: Any) -> ScriptedPolicy:
    """Build a scripted policy from its name ("oracle" or "scripted:oracle") and options.

    Args:
        name: the mode, with or without the ``scripted:`` prefix.
        **opts: ``safety``, ``think_tokens``, ``first_step_s``, ``slip``, ``clock_every``,
            ``stop_after`` (see
            :class:`ScriptedPolicy`).
    """
    mode = name.removeprefix("scripted:")
    known = {"safety", "think_tokens", "first_step_s", "slip", "clock_every", "stop_after"}
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


def _just_read(messages: list[Any]) -> bool:
    """Whether the latest message is a clock reading (reading again would show nothing new)."""
    return bool(messages) and _get(messages[-1], "name") == GET_DURATION_TOOL


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
