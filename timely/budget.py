"""Budgets, time status, and how the model is told about time.

The model sees its budget in the prompt and its time status in one of three modes:
``push`` (a status line appended to every tool result), ``pull`` (a ``get_duration`` clock tool it
may call), or ``both``. ``auto`` uses the task family's preference (the paper pushes in games and
ML, and offers ``get_duration`` for pure reasoning). The ``paper`` wording matches the reference
release so results stay comparable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

StatusMode = Literal["push", "pull", "both", "none", "auto"]
Wording = Literal["default", "paper"]
Overrun = Literal["hard", "late"]

GET_DURATION_TOOL = "get_duration"

# The answer turn's cost as the status counts it, in steps: a step is a turn and a tool call,
# the answer a (longer) turn alone, so one step is a safe bound that needs no second estimate.
ANSWER_RESERVE_STEPS = 1
# Statuses show tenths of a second: a step cost read off them is that much uncertain, and a
# stop decided exactly at the margin was late (measured on treasure at 0.25x). The step count
# keeps the same margin as the budget-aware expert, so the two agree on where "~0" begins.
SHOWN_RESOLUTION_S = 0.1


class Budget(BaseModel):
    """An episode's time budget and what happens when it runs out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(gt=0, description="Time budget T in seconds.")
    overrun: Overrun = Field(
        "hard",
        description="hard: stop calling model and tools once the budget is spent (episode fails); "
        "late: let the episode finish, record the answer, mark it non-compliant.",
    )
    on_time_slack: float = Field(
        1.0,
        ge=1.0,
        description="An answer counts as on time up to slack x T (the reference release uses 1.1 "
        "for reasoning).",
    )
    late_limit_factor: float = Field(
        2.0,
        ge=1.0,
        description="Under 'late', calls stop at late_limit_factor x T so nothing runs forever.",
    )

    @property
    def stop_at(self) -> float:
        """Clock time (from episode start) after which no call may run."""
        return self.seconds if self.overrun == "hard" else self.seconds * self.late_limit_factor

    def on_time(self, elapsed: float) -> bool:
        return elapsed <= self.seconds * self.on_time_slack


class TimeStatus(BaseModel):
    """A snapshot of the episode's time.

    Attributes:
        budget: the budget in seconds.
        elapsed: seconds used so far.
        step_s: the expected cost of one more step (a model turn and its tool call) as the
            readings so far imply it (:func:`expected_step_s`); None before any step.
    """

    model_config = ConfigDict(frozen=True)

    budget: float
    elapsed: float
    step_s: float | None = None

    @property
    def remaining(self) -> float:
        return self.budget - self.elapsed

    @property
    def steps_left(self) -> int | None:
        """Whole steps of ``step_s`` that fit in the time left once the answer's own turn is
        held back (charged as one more step); None before any step.

        So "~0" means "answer now": the stop a budget-aware agent makes is the lowest count,
        not a count of one that reads as "one more step fits" (the fifth recipe's RL, shown
        the plain count, called at "~1 step" in every short-budget rollout and was cut off
        before its answer).
        """
        if not self.step_s:
            return None
        left = max(0.0, self.remaining - SHOWN_RESOLUTION_S)
        return max(0, math.floor(left / self.step_s) - ANSWER_RESERVE_STEPS)


def expected_step_s(readings: Sequence[tuple[int, float]]) -> float | None:
    """The expected cost of one more step from time readings ``(steps done, seconds used)``.

    The larger of the average over the steps at the latest reading and the cost of the steps
    since the reading before it: prompts grow, and a turn's prefill with them, so the latest
    step is the better guess when it was dearer. None before any step was read.

    Args:
        readings: in order; the start is ``(0, 0.0)``.
    """
    if not readings:
        return None
    steps_at, elapsed = readings[-1]
    if steps_at <= 0:
        return None
    step_s = elapsed / steps_at
    earlier = [r for r in readings if r[0] < steps_at]
    if earlier:
        prev_steps, prev_elapsed = earlier[-1]
        step_s = max(step_s, (elapsed - prev_elapsed) / (steps_at - prev_steps))
    return step_s


class TimeAwareness(BaseModel):
    """How the budget and the time status are shown to the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: StatusMode = Field(
        "auto",
        description="push: status after each tool result; pull: a get_duration tool; both; none; "
        "auto: the task family's preference.",
    )
    wording: Wording = Field(
        "default",
        description="default: budget, elapsed, remaining and the steps that fit before the "
        "answer; paper: the "
        "reference release's 'Please answer within T seconds.' and elapsed-only 'You have "
        "spent X seconds.'",
    )
    show_budget: bool = Field(True, description="State the budget in the user turn.")

    def resolved_mode(self, task_preference: Literal["push", "pull"]) -> StatusMode:
        return task_preference if self.mode == "auto" else self.mode

    def budget_line(self, budget_s: float) -> str:
        if self.wording == "paper":
            return f"Please answer within {_fmt(budget_s)} seconds."
        return f"You have a time budget of {_fmt(budget_s)} seconds for this task."

    def status_line(self, status: TimeStatus) -> str:
        if self.wording == "paper":
            return f"You have spent {status.elapsed:.1f} seconds."
        line = (
            f"[time] {status.elapsed:.1f}s used of {_fmt(status.budget)}s, "
            f"{max(0.0, status.remaining):.1f}s left"
        )
        left = status.steps_left
        if left is None or status.step_s is None:
            return line
        # The step count turns "is there time for another step?" into reading one number, a
        # comparison a 135M model learns from a few hundred examples where it does not learn
        # to divide the time left by a step cost it would first have to work out.
        return (
            f"{line}, room for ~{left} step{'' if left == 1 else 's'} of {status.step_s:.1f}s "
            "and the answer"
        )

    def pushes(self, task_preference: Literal["push", "pull"]) -> bool:
        return self.resolved_mode(task_preference) in ("push", "both")

    def pulls(self, task_preference: Literal["push", "pull"]) -> bool:
        return self.resolved_mode(task_preference) in ("pull", "both")


_NUMBER = r"(\d+(?:\.\d+)?)"
_DEFAULT_STATUS = re.compile(
    rf"\[time\] {_NUMBER}s used of {_NUMBER}s, {_NUMBER}s left"
    # The step count: "room for ~N steps of Xs and the answer" (and the bare "~N steps of Xs"
    # of runs recorded before the answer was held back).
    rf"(?:, (?:room for )?~\d+ steps? of {_NUMBER}s(?: and the answer)?)?"
)
_PAPER_STATUS = re.compile(rf"You have spent {_NUMBER} seconds\.")


def read_status(text: str | None, budget_s: float | None = None) -> TimeStatus | None:
    """The last time status shown in ``text`` (either wording), as the model can read it.

    The inverse of :meth:`TimeAwareness.status_line`, for agents that decide on the time they
    were shown rather than on a clock they cannot see (the budget-aware scripted expert). The
    numbers are the shown, rounded ones.

    Args:
        text: a tool result, clock reading or user turn.
        budget_s: the budget stated in the prompt; needed for the paper's elapsed-only wording,
            which does not restate it (without it such a line reads as None).
    """
    if not text:
        return None
    found = list(_DEFAULT_STATUS.finditer(text))
    if found:
        elapsed, budget, _, step = found[-1].groups()
        return TimeStatus(
            budget=float(budget),
            elapsed=float(elapsed),
            step_s=float(step) if step is not None else None,
        )
    spent = list(_PAPER_STATUS.finditer(text))
    if spent and budget_s is not None:
        return TimeStatus(budget=budget_s, elapsed=float(spent[-1].group(1)))
    return None


TIME_AWARENESS_PRESETS: dict[str, TimeAwareness] = {
    "default": TimeAwareness(),
    "paper": TimeAwareness(mode="auto", wording="paper"),
    "push": TimeAwareness(mode="push"),
    "pull": TimeAwareness(mode="pull"),
    "both": TimeAwareness(mode="both"),
    "blind": TimeAwareness(mode="none", show_budget=False),
}


def get_duration_schema() -> dict:
    """The OpenAI tool schema of the local clock tool."""
    return {
        "type": "function",
        "function": {
            "name": GET_DURATION_TOOL,
            "description": "Return how many seconds have been spent on this task so far.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }


def _fmt(seconds: float) -> str:
    return f"{seconds:g}" if float(seconds).is_integer() else f"{seconds:.1f}"
