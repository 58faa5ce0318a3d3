"""``math/chain-v1``: a long chain of linked sub-problems, each answer feeding later ones.

"A. A warehouse stores 12 crates of 30 jars plus 7 loose jars; A is the number of jars.
B. B is the remainder when A is divided by 37. ... H. H is 4 times G, plus C." The chain mixes
small word problems, remainders, rounding, percentages and value-dependent branches; now and then
a fresh sub-problem starts and a later part joins two strands. Every part is asked for
(``Answer: A=367; B=34; ...``) and earns an equal share of the credit, so an agent that runs out
of time still scores the parts it finished: more work means more credit, and the budget binds.

Difficulty d asks for 2 + 2d parts (4 to 14, about 2 calculator steps each: ~8 steps at d = 1,
~16 at d = 3, ~28 at d = 6) and draws larger numbers. Values stay whole numbers in [0, 10**6].
"""

from __future__ import annotations

from collections.abc import Callable
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

_CAP = 1_000_000
Ref = tuple[str, int]  # (label, value) of an earlier part
Opener = Callable[[np.random.Generator, int, Work, str], tuple[str, int]]
Step = Callable[[np.random.Generator, int, Work, str, Ref, Ref | None], tuple[str, int] | None]


def _int(work: Work, expression: str) -> int:
    value = work.calc(expression)
    assert value.denominator == 1 and 0 <= value <= _CAP * _CAP, (expression, value)
    return int(value)


# ---- openers: a fresh sub-problem that needs no earlier answer ------------------------------


def crates(rng: np.random.Generator, d: int, work: Work, label: str) -> tuple[str, int]:
    """Crates of jars plus loose jars."""
    n, k = randint(rng, 3, 8 + 6 * d), randint(rng, 6, 12 + 12 * d)
    m = randint(rng, 1, k - 1)
    total = _int(work, f"{lit(_int(work, f'{n} * {k}'))} + {m}")
    text = (
        f"A warehouse stores {n} crates of {k} jars each, plus {m} loose jars. "
        f"{label} is the total number of jars."
    )
    return text, total


def field_area(rng: np.random.Generator, d: int, work: Work, label: str) -> tuple[str, int]:
    """A rectangle minus a smaller rectangle."""
    a, b = randint(rng, 20, 40 + 40 * d), randint(rng, 20, 40 + 40 * d)
    c, e = randint(rng, 2, a - 1), randint(rng, 2, b - 1)
    big, pond = _int(work, f"{a} * {b}"), _int(work, f"{c} * {e}")
    text = (
        f"A field measures {a} m by {b} m; a pond of {c} m by {e} m lies inside it. "
        f"{label} is the area of the field, in square metres, not covered by the pond."
    )
    return text, _int(work, f"{lit(big)} - {lit(pond)}")


def series(rng: np.random.Generator, d: int, work: Work, label: str) -> tuple[str, int]:
    """Sum of consecutive whole numbers, by the pairing formula."""
    a = randint(rng, 1, 20 * d)
    b = a + randint(rng, 10, 40 + 30 * d)
    pair, count = _int(work, f"{a} + {b}"), _int(work, f"{b} - {a} + 1")
    # (a + b) and (b - a + 1) have opposite parity, so the halving is exact.
    total = _int(work, f"{lit(pair)} * {lit(count)} / 2")
    return f"{label} is the sum of all whole numbers from {a} to {b}, inclusive.", total


def savings(rng: np.random.Generator, d: int, work: Work, label: str) -> tuple[str, int]:
    """Hourly pay over weeks, minus spending."""
    wage, hours, weeks = (
        randint(rng, 9, 20 + 5 * d),
        randint(rng, 5, 30),
        randint(rng, 2, 4 + 2 * d),
    )
    weekly = _int(work, f"{wage} * {hours}")
    earned = _int(work, f"{lit(weekly)} * {weeks}")
    spent = randint(rng, 1, earned - 1)
    text = (
        f"A student earns ${wage} an hour for {hours} hours a week, for {weeks} weeks, and "
        f"spends ${spent} of it. {label} is the number of dollars left."
    )
    return text, _int(work, f"{lit(earned)} - {spent}")


OPENERS: dict[str, Opener] = {
    "crates": crates,
    "field": field_area,
    "series": series,
    "savings": savings,
}


# ---- steps: a part computed from earlier answers (x: the latest, y: an earlier one) ---------


def remainder(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """x mod m, for a large enough x."""
    xl, xv = x
    if xv < 100:
        return None
    m = randint(rng, 7, min(999, xv // 3))
    return f"{label} is the remainder when {xl} is divided by {m}.", _int(work, f"{xv} % {m}")


def boxes(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """Boxes needed: a ceiling division."""
    xl, xv = x
    k = randint(rng, 6, 48)
    if xv <= 2 * k:
        return None
    text = (
        f"{xl} books are packed in boxes that hold {k} books each. {label} is the number of "
        "boxes needed (a partly filled box counts)."
    )
    return text, _int(work, f"ceil({xv} / {k})")


def percent_up(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """An increase by a percentage, rounded down."""
    xl, xv = x
    p = 5 * randint(rng, 1, 12)
    if xv * 2 > _CAP:
        return None
    increase = _int(work, f"{xv} * {p} // 100")
    text = (
        f"{label} is {xl} increased by {p}% of itself, where the increase is first rounded down "
        "to a whole number."
    )
    return text, _int(work, f"{xv} + {increase}")


def parity(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """A branch on the parity of x; only the taken branch is computed."""
    xl, xv = x
    a, b = randint(rng, 2, 60), randint(rng, 1, 30)
    if 3 * xv + b > _CAP:
        return None
    text = (
        f"If {xl} is even, {label} is half of {xl} plus {a}; otherwise {label} is three times "
        f"{xl} plus {b}."
    )
    return text, _int(work, f"{xv} / 2 + {a}" if xv % 2 == 0 else f"3 * {xv} + {b}")


def scale(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """k * x - c."""
    xl, xv = x
    k, c = randint(rng, 3, 19), randint(rng, 1, 99 * d)
    if xv * k > _CAP or xv * k <= c:
        return None
    product = _int(work, f"{xv} * {k}")
    return f"{label} is {k} times {xl}, minus {c}.", _int(work, f"{product} - {c}")


def square_mod(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """x squared mod m."""
    xl, xv = x
    m = randint(rng, 101, 9973)
    square = _int(work, f"{xv} ** 2")
    text = f"{label} is the remainder when the square of {xl} is divided by {m}."
    return text, _int(work, f"{square} % {m}")


def combine(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """c * x + y: joins two strands."""
    if y is None:
        return None
    (xl, xv), (yl, yv) = x, y
    c = randint(rng, 2, 9 + d)
    if c * xv + yv > _CAP:
        return None
    product = _int(work, f"{c} * {xv}")
    return f"{label} is {c} times {xl}, plus {yl}.", _int(work, f"{product} + {yv}")


def gap(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """|x - y| + c: which is larger must be checked."""
    if y is None:
        return None
    (xl, xv), (yl, yv) = x, y
    c = randint(rng, 1, 50)
    diff = _int(work, f"{xv} - {yv}" if xv >= yv else f"{yv} - {xv}")
    text = f"{label} is the larger of {xl} and {yl} minus the smaller one, plus {c}."
    return text, _int(work, f"{diff} + {c}")


def nested_mod(
    rng: np.random.Generator, d: int, work: Work, label: str, x: Ref, y: Ref | None
) -> tuple[str, int] | None:
    """x mod (y mod 90 + 10): a divisor that itself must be computed."""
    if y is None:
        return None
    (xl, xv), (yl, yv) = x, y
    q = _int(work, f"{yv} % 90 + 10")
    text = (
        f"Let q be the remainder when {yl} is divided by 90, plus 10. {label} is the remainder "
        f"when {xl} is divided by q."
    )
    return text, _int(work, f"{xv} % {q}")


UNARY: dict[str, Step] = {
    "remainder": remainder,
    "boxes": boxes,
    "percent": percent_up,
    "parity": parity,
    "scale": scale,
    "square-mod": square_mod,
}
BINARY: dict[str, Step] = {"combine": combine, "gap": gap, "nested-mod": nested_mod}


def _step(
    rng: np.random.Generator, d: int, work: Work, label: str, refs: list[Ref], joins: bool
) -> tuple[str, int, str]:
    """One dependent part; ``joins`` prefers a template that uses two earlier answers."""
    x = refs[-1]
    y = refs[int(rng.integers(len(refs) - 1))] if len(refs) > 1 else None
    names = sorted(BINARY) if joins and y is not None else sorted(UNARY)
    for name in [pick(rng, names) for _ in range(8)] + names + sorted(UNARY):
        start = len(work.steps)
        made = (BINARY.get(name) or UNARY[name])(rng, d, work, label, x, y)
        if made is not None:
            return made[0], made[1], name
        del work.steps[start:]  # a template that declined records nothing
    raise AssertionError("square-mod always applies")  # pragma: no cover


@register_task("math/chain-v1", help="Linked sub-problems (4-14 parts); partial credit per part.")
@register_task("math/chain", help="Alias of the latest math/chain version (v1).")
class ChainTask(MultiPartTask):
    """2 + 2 x difficulty linked sub-problems; every part's answer is asked for and credited."""

    task_id = "math/chain-v1"
    default_difficulty = 3

    @classmethod
    def generate(cls, rng: np.random.Generator, difficulty: int) -> MultiPartProblem:
        k = n_parts(difficulty)
        work, lines, parts, refs, kinds = Work(), [], [], [], []
        for i, label in enumerate(LABELS[:k]):
            # A fresh strand now and then (never in the last two parts), joined again later.
            fresh = i == 0 or (2 <= i < k - 2 and rng.random() < 0.2)
            if fresh:
                kind = pick(rng, sorted(OPENERS))
                text, value = OPENERS[kind](rng, difficulty, work, label)
            else:
                joins = i == k - 1 or rng.random() < 0.3
                text, value, kind = _step(rng, difficulty, work, label, refs, joins)
            lines.append(f"{label}. {text}")
            parts.append(Part(label, Fraction(value), len(work.steps) - 1))
            refs.append((label, value))
            kinds.append(kind)
        body = "\n".join(lines)
        return MultiPartProblem(
            text=(
                f"The following {k} sub-problems are linked: later parts use the answers of "
                "earlier ones, so solve them in order. Every answer is a whole number.\n"
                f"{body}"
            ),
            steps=work.steps,
            guess=Fraction(0),
            metadata={"template": "chain", "n_parts": k, "kinds": kinds},
            parts=parts,
        )
