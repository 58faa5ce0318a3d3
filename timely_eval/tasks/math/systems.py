"""``math/systems-v1``: solve a small system of linear equations with integer coefficients.

The solution is a vector of whole numbers by construction (the right-hand side is computed from
it), the coefficient matrix is invertible, and every unknown is asked for and credited on its
own (``Answer: x=3; y=-2; z=5``). The reference script is Cramer's rule: one calculator call for
the determinant, then for each unknown one call for its determinant (a Laplace expansion written
out as one expression) and one division, so the unknowns become available one by one and a
budget-aware agent can stop early with some of them.

Difficulty: d = 1 two unknowns; d = 2, 3 three; d >= 4 four. Coefficients and solutions grow
with d (coefficients up to 5 + 3d in size, solutions up to 5 + 5d).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from timely.task import register_task
from timely_eval.tasks.math.base import Work, lit, randint
from timely_eval.tasks.math.multipart import MultiPartProblem, MultiPartTask, Part

UNKNOWNS = ("x", "y", "z", "w")
Matrix = list[list[int]]


def size_for(difficulty: int) -> int:
    """Unknowns at a difficulty: 2, 3, 3, then 4."""
    return 2 if difficulty == 1 else 3 if difficulty <= 3 else 4


def det(m: Matrix) -> int:
    """Exact determinant by Laplace expansion along the first row (n <= 4)."""
    if len(m) == 1:
        return m[0][0]
    return sum((-1) ** j * m[0][j] * det(_minor(m, j)) for j in range(len(m)))


def det_expression(m: Matrix) -> str:
    """The Laplace expansion of ``det(m)`` as one calculator expression."""
    if len(m) == 1:
        return lit(m[0][0])
    if len(m) == 2:
        return f"{lit(m[0][0])} * {lit(m[1][1])} - {lit(m[0][1])} * {lit(m[1][0])}"
    terms = []
    for j in range(len(m)):
        sign = "+" if j % 2 == 0 else "-"
        term = f"{lit(m[0][j])} * ({det_expression(_minor(m, j))})"
        terms.append(term if j == 0 else f"{sign} {term}")
    return " ".join(terms)


def _minor(m: Matrix, col: int) -> Matrix:
    return [row[:col] + row[col + 1 :] for row in m[1:]]


def _equation(coefficients: list[int], rhs: int, names: tuple[str, ...]) -> str:
    """``3x - y + 2z = 7`` (unit coefficients written without the 1)."""
    text = ""
    for c, name in zip(coefficients, names, strict=True):
        size = "" if abs(c) == 1 else str(abs(c))
        if not text:
            text = f"{'-' if c < 0 else ''}{size}{name}"
        else:
            text += f" {'-' if c < 0 else '+'} {size}{name}"
    return f"{text} = {rhs}"


def _draw_matrix(rng: np.random.Generator, n: int, bound: int) -> Matrix:
    """A random invertible integer matrix with nonzero entries in [-bound, bound]."""
    while True:
        m = [
            [randint(rng, 1, bound) * (1 if rng.random() < 0.6 else -1) for _ in range(n)]
            for _ in range(n)
        ]
        if det(m) != 0:
            return m


@register_task("math/systems-v1", help="Linear systems, 2-4 unknowns; partial credit per unknown.")
@register_task("math/systems", help="Alias of the latest math/systems version (v1).")
class SystemsTask(MultiPartTask):
    """Solve n linear equations in n whole-number unknowns (n = 2..4 by difficulty)."""

    task_id = "math/systems-v1"
    default_difficulty = 2
    answer_noun = "integer"

    @classmethod
    def generate(cls, rng: np.random.Generator, difficulty: int) -> MultiPartProblem:
        n = size_for(difficulty)
        names = UNKNOWNS[:n]
        matrix = _draw_matrix(rng, n, min(5 + 3 * difficulty, 30))
        bound = min(5 + 5 * difficulty, 50)
        solution = [randint(rng, -bound, bound) for _ in range(n)]
        rhs = [sum(a * s for a, s in zip(row, solution, strict=True)) for row in matrix]
        work = Work()
        d = work.calc(det_expression(matrix))
        parts = []
        for i, name in enumerate(names):
            replaced = [row[:i] + [b] + row[i + 1 :] for row, b in zip(matrix, rhs, strict=True)]
            d_i = work.calc(det_expression(replaced))
            value = work.calc(f"{lit(d_i)} / {lit(d)}")
            assert value == solution[i]
            parts.append(Part(name, Fraction(value), len(work.steps) - 1))
        equations = "\n".join(_equation(row, b, names) for row, b in zip(matrix, rhs, strict=True))
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        return MultiPartProblem(
            text=(
                f"Solve the following system of {n} linear equations. The unknowns {listed} "
                f"are integers.\n{equations}"
            ),
            steps=work.steps,
            guess=Fraction(0),
            metadata={"template": "linear-system", "n_parts": n, "n_unknowns": n},
            parts=parts,
        )
