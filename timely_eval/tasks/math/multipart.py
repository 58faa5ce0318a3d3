"""Problems with several labelled sub-answers, scored with partial credit.

Long reasoning tasks are rarely all-or-nothing: a chain of linked sub-problems, or a linear
system with several unknowns, has answers that become available one by one as the work goes on.
Asking for every sub-answer (``Answer: A=12; B=5; C=-3``) and crediting each one makes time
matter smoothly: an agent that stops early with the parts it has finished scores the fraction it
finished, which is exactly what a budget-aware agent should trade for time. The reference script's
fallback answers report the parts completed after each calculator step.

This module is the shared half (parsing labelled answers, partial-credit scoring, the fallback
script); families such as :mod:`.chain` and :mod:`.systems` only generate problems.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar

from timely.task import ScriptedSolution
from timely.types import ToolCall
from timely_eval.tasks.math.base import CALCULATOR, MathTask, Problem
from timely_eval.tasks.math.scoring import (
    format_number,
    numbers_match,
    parse_with_places,
    tagged_answer,
)

if TYPE_CHECKING:
    from timely.types import Trajectory

# Part labels of the lettered families (chain, batch): no I or O, which read as 1 and 0.
LABELS = ("A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M", "N", "P")
_ANSWER_RE = re.compile(r"\banswer\b\s*\**\s*[:\uff1a]", re.IGNORECASE)
_MAX_CHARS = 20_000  # answers live at the end; longer texts are cut from the front
NO_PARTS_YET = "Answer: none yet"


@dataclass(frozen=True)
class Part:
    """One labelled sub-answer and the calculator step (0-based) that finishes it."""

    label: str
    value: Fraction
    last_step: int


@dataclass
class MultiPartProblem(Problem):
    """A :class:`Problem` whose gold is several labelled values, in the order asked."""

    parts: list[Part] = field(default_factory=list)


def n_parts(difficulty: int) -> int:
    """Parts a lettered family asks for at a difficulty: 2 + 2d, at most one per label."""
    return min(2 + 2 * difficulty, len(LABELS))


def answer_line(parts: list[Part] | list[tuple[str, Fraction]]) -> str:
    """The canonical final answer: ``Answer: A=12; B=-3.5``."""
    pairs = [(p.label, p.value) if isinstance(p, Part) else p for p in parts]
    if not pairs:
        return NO_PARTS_YET
    return "Answer: " + "; ".join(f"{label}={format_number(v)}" for label, v in pairs)


def extract_labelled(text: str | None, labels: tuple[str, ...]) -> dict[str, str]:
    """The text stated for each label, e.g. ``{"A": "12", "B": "5 * 3 = 15"}``.

    Only the content of the answer tag counts when there is one (``<answer>A=1; B=2</answer>``;
    which tag: :func:`~.scoring.tagged_answer`), else only the text after the last ``Answer:``
    (both are authoritative, as in single answers); otherwise the whole text, where the last
    statement of a label wins. A label is recognised as a standalone token followed by ``=`` or
    ``:`` (``A=3``, ``Part B: 7``, ``x = -2``); its text runs to the next recognised label.

    Args:
        text: the model's final message.
        labels: the labels the problem asks for.
    """
    if not isinstance(text, str) or not labels:
        return {}
    text = text[-_MAX_CHARS:]
    tagged = tagged_answer(text)
    if tagged is not None:
        text = tagged
    markers = list(_ANSWER_RE.finditer(text))
    if markers:
        text = text[markers[-1].end() :]
    names = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9_])({names})(?![A-Za-z0-9_])\s*\**\s*[=:]")
    found = list(pattern.finditer(text))
    stated: dict[str, str] = {}
    ends = [m.start() for m in found[1:]] + [len(text)]
    for match, end in zip(found, ends, strict=False):
        stated[match.group(1)] = text[match.end() : end].strip(" \t\n;,")
    return stated


def score_parts(answer: str | None, gold: dict[str, Fraction]) -> float:
    """The fraction of labelled sub-answers stated correctly, in [0, 1]; never raises.

    Args:
        answer: the model's final message.
        gold: label -> exact value.
    """
    if not gold:
        return 0.0
    stated = extract_labelled(answer, tuple(gold))
    right = 0
    for label, value in gold.items():
        parsed = parse_with_places(stated.get(label))
        if parsed is not None and numbers_match(parsed[0], value, parsed[1]):
            right += 1
    return right / len(gold)


class MultiPartTask(MathTask):
    """A math task whose problem asks for several labelled values; partial credit per value.

    Subclasses implement ``generate`` returning a :class:`MultiPartProblem` whose parts are in
    the order they are finished by the reference steps.
    """

    problem: MultiPartProblem
    answer_noun: ClassVar[str] = "number"

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels asked for, in order."""
        return tuple(p.label for p in self.problem.parts)

    @property
    def golds(self) -> dict[str, Fraction]:
        """Label -> exact gold value."""
        return {p.label: p.value for p in self.problem.parts}

    @property
    def gold_answer(self) -> str:
        """The gold answer line, e.g. ``A=12; B=5``."""
        return answer_line(self.problem.parts).removeprefix("Answer: ")

    def prompt_footer(self) -> str:
        """Calculator instructions and the labelled answer format."""
        fmt = "; ".join(f"{label}=<{self.answer_noun}>" for label in self.labels)
        return (
            "You may use the `calculator` tool: call it with "
            '{"expression": "<arithmetic expression>"} to evaluate + - * / // % ** and '
            "parentheses, as well as abs, round, min, max, sqrt, floor and ceil. "
            "Work step by step.\n"
            f"When you are done, give all {len(self.labels)} answers on one line as "
            f"`Answer: {fmt}` (integers or exact decimals, without units). Each correct value "
            "earns an equal share of the credit, so if time runs short, answer with the values "
            "you have."
        )

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """The fraction of sub-answers stated with their exact value (see :func:`score_parts`)."""
        return score_parts(answer, self.golds)

    def well_formed(self, answer: str | None) -> bool:
        """Whether every label is stated with a number."""
        stated = extract_labelled(answer, self.labels)
        return all(parse_with_places(stated.get(label)) is not None for label in self.labels)

    def solution(self) -> ScriptedSolution:
        """One calculator call per step; after each, the fallback reports the finished parts."""
        steps = self.problem.steps
        calls = [
            ToolCall(id=f"call_{i}", name=CALCULATOR, arguments={"expression": s.expression})
            for i, s in enumerate(steps)
        ]
        fallbacks = [
            answer_line([p for p in self.problem.parts if p.last_step < done])
            for done in range(len(steps) + 1)
        ]
        return ScriptedSolution(calls=calls, answer=fallbacks[-1], fallback_answers=fallbacks)
