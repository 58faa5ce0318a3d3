"""The shared machinery of the time-constrained math family.

Every math task is a procedural generator: a seeded numpy Generator draws a problem whose gold
answer is exact by construction, plus a step-by-step calculator script that computes it (what the
scripted oracle replays and what SFT data is made from). This module holds what the generators
share: the exact evaluator that computes each step's value from the very expression the agent
would send (so a script can never disagree with its own numbers), the split rule, the prompt, and
scoring.

Splits are disjoint by construction, not by luck: the split is part of the RNG stream, *and* a
problem is only kept by the split its canonical text hashes to (hash parity: even = train,
odd = test; other draws are rejected and redrawn). The same problem text can therefore never be
in both splits, whatever the seed ranges.
"""

from __future__ import annotations

import ast
import math
import operator
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from timely.errors import TaskError
from timely.rng import derive_seed, make_rng
from timely.task import SPLITS, ScriptedSolution, Split, Task, TaskSpec
from timely.types import ToolCall
from timely_eval.tasks.math.scoring import format_number, score_answer, stated_answer

if TYPE_CHECKING:
    from timely.types import Trajectory

CALCULATOR = "calculator"
_MAX_ATTEMPTS = 1000  # a split draw is kept with probability 1/2; 1000 misses never happen

PROMPT_FOOTER = (
    "You may use the `calculator` tool: call it with "
    '{"expression": "<arithmetic expression>"} to evaluate + - * / // % ** and parentheses, '
    "as well as abs, round, min, max, sqrt, floor and ceil. Work step by step.\n"
    "When you are done, give the final answer on its own line as `Answer: <number>` "
    "(an integer or an exact decimal, without units)."
)


@dataclass(frozen=True)
class CalcStep:
    """One calculator call of a reference solution and the exact value it produces."""

    expression: str
    value: Fraction


@dataclass
class Problem:
    """A generated problem: its text, its reference work, its gold answer.

    Attributes:
        text: the problem statement (the prompt adds the tool and answer-format instructions).
        steps: the calculator calls that solve it, in order; the last value is the gold.
        guess: a rough answer available with no tool calls (what "answer now" says).
        metadata: facts the agent may see (template, number of steps).
    """

    text: str
    steps: list[CalcStep]
    guess: Fraction
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def gold(self) -> Fraction:
        return self.steps[-1].value


class Work:
    """Records calculator steps while a generator solves its own problem."""

    def __init__(self) -> None:
        self.steps: list[CalcStep] = []

    def calc(self, expression: str) -> Fraction:
        """Evaluate ``expression`` exactly, record it as a step, and return its value."""
        value = evaluate(expression)
        self.steps.append(CalcStep(expression, value))
        return value


def lit(value: Fraction | int) -> str:
    """A number as a literal inside a calculator expression (negatives parenthesised)."""
    text = format_number(Fraction(value))
    if "/" in text:
        raise ValueError(f"{value} has no exact decimal form; generators must avoid it")
    return f"({text})" if text.startswith("-") else text


def money(value: Fraction | int) -> str:
    """Dollars with two decimals, as written in a problem text: ``$4.50``."""
    cents = Fraction(value) * 100
    if cents.denominator != 1:
        raise ValueError(f"{value} is not a whole number of cents")
    return f"${int(cents) // 100}.{int(cents) % 100:02d}"


def pick(rng: np.random.Generator, options: list[Any] | tuple[Any, ...]) -> Any:
    """One element of ``options`` (keeps numpy scalar types out of problem texts)."""
    return options[int(rng.integers(len(options)))]


def randint(rng: np.random.Generator, low: int, high: int) -> int:
    """A Python int uniform in [low, high], both ends included."""
    return int(rng.integers(low, high + 1))


# ---- exact evaluation of calculator expressions ---------------------------------------------

_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}
_FUNCS: dict[str, Callable[..., Fraction]] = {
    "abs": abs,
    "ceil": lambda x: Fraction(math.ceil(x)),
    "floor": lambda x: Fraction(math.floor(x)),
    "min": min,
    "max": max,
}


def evaluate(expression: str) -> Fraction:
    """Evaluate a calculator expression with exact rational arithmetic.

    Generators compute every step's value through this, so the value recorded in a script is the
    value of the expression the agent would send. Only the subset the generators use is accepted.

    Args:
        expression: e.g. ``"(482 + 37) * 12"`` or ``"ceil(35000 / 500)"``.

    Raises:
        ValueError: on anything outside that subset.
    """
    return _eval(ast.parse(expression, mode="eval").body)


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return Fraction(str(node.value))  # via str: 4.35 means 435/100, not the binary float
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _eval(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or not 0 <= right <= 10:
                raise ValueError("only small whole powers are supported")
            return left ** int(right)
        if type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        return Fraction(_FUNCS[node.func.id](*(_eval(a) for a in node.args)))
    raise ValueError(f"unsupported expression: {ast.dump(node)}")


# ---- the task class --------------------------------------------------------------------------


def split_of(text: str) -> Split:
    """The only split a problem text may appear in (hash parity of its canonical form)."""
    canonical = " ".join(text.split())
    return "train" if derive_seed("timely-math-split", canonical) % 2 == 0 else "test"


def budget_for(n_steps: int) -> float:
    """Default budget: 10 s plus 5 s a step.

    Enough for a small fast model with sub-second tools to finish; slow tools or a slow model
    make it bind, which is the point of the family.
    """
    return float(10 + 5 * n_steps)


class MathTask(Task):
    """A generated math problem solved with a calculator; subclasses implement ``generate``.

    Args:
        seed: the episode seed; with the split, id and difficulty it fixes the instance.
        split: "train" or "test"; never share a problem text.
        difficulty: 1 = easiest; what it scales is family-specific (see ``generate``).
    """

    family: ClassVar[str] = "math"
    task_id: ClassVar[str]
    default_difficulty: ClassVar[int] = 2

    def __init__(self, seed: int, split: Split = "test", difficulty: int | None = None) -> None:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        level = self.default_difficulty if difficulty is None else difficulty
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise TaskError(f"difficulty must be an integer >= 1, got {difficulty!r}")
        self.problem = self._draw(int(seed), split, level)
        self.gold: Fraction = self.problem.gold
        self.spec = TaskSpec(
            id=self.task_id,
            seed=int(seed),
            split=split,
            difficulty=level,
            prompt=f"{self.problem.text}\n\n{self.prompt_footer()}",
            tools=(CALCULATOR,),
            default_budget_s=budget_for(len(self.problem.steps)),
            # A turn per calculator step, as many again for mistakes, and the answer.
            max_turns=max(20, 2 * len(self.problem.steps) + 5),
            time_status="pull",
            metadata={"family": self.family, "n_steps": len(self.problem.steps)}
            | self.problem.metadata,
        )

    def prompt_footer(self) -> str:
        """Tool and answer-format instructions appended to the problem text.

        Families whose answers are not one number (e.g. several labelled sub-answers) override
        this; ``self.problem`` is already drawn when it is called.
        """
        return PROMPT_FOOTER

    @classmethod
    @abstractmethod
    def generate(cls, rng: np.random.Generator, difficulty: int) -> Problem:
        """Draw one problem; all randomness must come from ``rng``."""

    @classmethod
    def _draw(cls, seed: int, split: Split, difficulty: int) -> Problem:
        for attempt in range(_MAX_ATTEMPTS):
            problem = cls.generate(
                make_rng(cls.task_id, split, difficulty, seed, attempt), difficulty
            )
            if split_of(problem.text) == split:
                return problem
        raise TaskError(f"{cls.task_id}: no {split} problem after {_MAX_ATTEMPTS} draws (a bug)")

    @property
    def gold_answer(self) -> str:
        """The gold answer as text, e.g. ``"34.25"``."""
        return format_number(self.gold)

    def target(self) -> str | None:
        """The gold answer as the task writes it: :attr:`gold_answer` (``"34.25"``, ``"2/3"``;
        ``"A=12; B=5"`` for multi-part problems)."""
        return self.gold_answer

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """1.0 when the final answer equals the gold value exactly (see ``scoring``), else 0.0."""
        return score_answer(answer, self.gold)

    def well_formed(self, answer: str | None) -> bool:
        """Whether the answer states a number explicitly: in an ``<answer>`` tag, an
        ``Answer:`` line or a ``\\boxed{}`` (a bare number in the reasoning does not count)."""
        stated = stated_answer(answer)
        return stated is not None and any(ch.isdigit() for ch in stated)

    def solution(self) -> ScriptedSolution:
        """One calculator call per step, each embedding earlier results as literal numbers."""
        steps = self.problem.steps
        calls = [
            ToolCall(id=f"call_{i}", name=CALCULATOR, arguments={"expression": s.expression})
            for i, s in enumerate(steps)
        ]
        fallbacks = [f"Answer: {format_number(self.problem.guess)}"]
        fallbacks += [f"Answer: {format_number(s.value)}" for s in steps]
        return ScriptedSolution(calls=calls, answer=fallbacks[-1], fallback_answers=fallbacks)
