"""``math/batch-v1``: several independent expressions, one calculator call each, partial credit.

The multi-part family where every unit of work is the same small, certain step: part ``X`` is
one operation written out in full (``B. 9120 - 4488``), so finishing it takes exactly one
calculator call on the text as written, and each finished part earns an equal share of the
credit. The score an agent can bank therefore grows linearly with the tool calls it makes, and
at every turn the only decision left is the one Timely-RL teaches: one more call, or answer now
with the parts already done. ``math/chain`` asks the same question, but its parts need reading
and composing, which a 135M model cannot do (it scores 0 there at every budget); here the
choice is not hidden behind the model's arithmetic reasoning.

Difficulty d asks for 2 + 2d parts (at most 14, lettered as chain's: no I or O) over numbers of
up to d + 2 digits.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from timely.task import register_task
from timely_eval.tasks.math.base import Work, lit, pick, randint
from timely_eval.tasks.math.multipart import (
    LABELS,
    MultiPartProblem,
    MultiPartTask,
    Part,
    n_parts,
)

OPERATIONS = ("+", "-", "*")


def _operands(rng: np.random.Generator, op: str, digits: int) -> tuple[int, int]:
    """Two operands; a product's right factor stays small so values stay readable."""
    high = 10**digits - 1
    if op == "*":
        return randint(rng, 10, high), randint(rng, 3, 99)
    return randint(rng, 10, high), randint(rng, 10, high)


@register_task(
    "math/batch-v1", help="Independent one-call expressions (4-14 parts); partial credit per part."
)
@register_task("math/batch", help="Alias of the latest math/batch version (v1).")
class BatchTask(MultiPartTask):
    """2 + 2 x difficulty independent one-operation expressions, each answer credited."""

    task_id = "math/batch-v1"
    default_difficulty = 2

    @classmethod
    def generate(cls, rng: np.random.Generator, difficulty: int) -> MultiPartProblem:
        k = n_parts(difficulty)
        digits = min(difficulty + 2, 6)
        work, lines, parts = Work(), [], []
        for label in LABELS[:k]:
            op = pick(rng, OPERATIONS)
            a, b = _operands(rng, op, digits)
            expression = f"{lit(a)} {op} {lit(b)}"
            value = work.calc(expression)
            lines.append(f"{label}. {expression}")
            parts.append(Part(label, Fraction(value), len(work.steps) - 1))
        body = "\n".join(lines)
        return MultiPartProblem(
            text=(
                f"Evaluate each of the following {k} expressions exactly. They are independent: "
                "each one is a single calculator call on the expression as written.\n"
                f"{body}"
            ),
            steps=work.steps,
            guess=Fraction(0),
            metadata={"template": "batch", "n_parts": k},
            parts=parts,
        )
