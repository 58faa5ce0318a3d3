"""``calculator``: exact arithmetic for the reasoning tasks, evaluated safely.

Models call this with arbitrary text, so it never uses ``eval``: the expression is parsed with
``ast`` and only numbers, arithmetic operators, parentheses and a short list of functions are
interpreted. Sizes are bounded before they are computed (``9**9**9`` is refused, not attempted),
so one call cannot stall the server.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from timely_tools.base import ToolContext, ToolInputError, tool

MAX_EXPRESSION_CHARS = 2000
MAX_EXPONENT = 1000
# Python refuses int -> str beyond 4300 digits by default; stay under it rather than change
# that process-wide limit.
MAX_RESULT_DIGITS = 4000
_LOG10_2 = math.log10(2)

Number = int | float


def _divide(a: Number, b: Number) -> Number:
    """True division that stays exact for integers that divide evenly (2**40 / 4 is an int)."""
    if isinstance(a, int) and isinstance(b, int) and b != 0 and a % b == 0:
        return a // b
    return operator.truediv(a, b)


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


_SYMBOLS = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.Div: "/"}


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise ToolInputError("round(x, n) needs an integer n")
    if abs(ndigits) > MAX_RESULT_DIGITS:
        raise ToolInputError(f"round(x, n) needs |n| <= {MAX_RESULT_DIGITS}")
    return round(x, ndigits)


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


# name -> (function, min args, max args)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, 64),
    "max": (_max, 1, 64),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}


def _digits(x: int) -> float:
    return x.bit_length() * _LOG10_2


def _check_size(x: Any) -> Number:
    if isinstance(x, complex):
        raise ToolInputError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):
        raise ToolInputError("the result is too large (or not a number)")
    if isinstance(x, int) and _digits(x) > MAX_RESULT_DIGITS:
        raise ToolInputError(f"the result would have more than {MAX_RESULT_DIGITS} digits")
    return x


def _power(base: Number, exp: Number) -> Number:
    if abs(exp) > MAX_EXPONENT:
        raise ToolInputError(f"exponents above {MAX_EXPONENT} are not supported")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if _digits(abs(base)) * exp > MAX_RESULT_DIGITS + 1:
            raise ToolInputError(f"the result would have more than {MAX_RESULT_DIGITS} digits")
    try:
        return base**exp
    except ZeroDivisionError:
        raise ToolInputError("zero cannot be raised to a negative power") from None


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolInputError(f"only numbers are allowed, not {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        try:
            return _check_size(_BINOPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolInputError(f"division by zero (in '{_SYMBOLS[type(node.op)]}')") from None
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolInputError(f"unsupported syntax: {_describe(node)}. {_ALLOWED}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise ToolInputError(f"unknown function {ast.unparse(node.func)!r}. {_ALLOWED}")
    if node.keywords:
        raise ToolInputError(f"{node.func.id}() takes positional arguments only")
    fn, lo, hi = FUNCTIONS[node.func.id]
    if not lo <= len(node.args) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ToolInputError(f"{node.func.id}() takes {want} argument(s), got {len(node.args)}")
    args = [_eval(a) for a in node.args]
    try:
        return _check_size(fn(*args))
    except ToolInputError:
        raise
    except ValueError as exc:  # math domain error, e.g. sqrt(-1)
        shown = ", ".join(format_number(a) for a in args)
        raise ToolInputError(f"{node.func.id}({shown}): {exc}") from None


def _describe(node: ast.AST) -> str:
    try:
        return repr(ast.unparse(node))
    except Exception:  # noqa: BLE001 - only for the message
        return type(node).__name__


_ALLOWED = "Use numbers, + - * / // % **, parentheses and " + ", ".join(sorted(FUNCTIONS)) + "."


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely.

    Args:
        expression: e.g. ``"2 * (3 + 4) ** 2 / sqrt(16)"``.

    Returns:
        An int when the arithmetic stays in integers, else a float.

    Raises:
        ToolInputError: bad syntax, a disallowed construct, division by zero, or a result too
            large to compute.
    """
    text = expression.strip()
    if not text:
        raise ToolInputError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolInputError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        detail = "" if exc.msg == "invalid syntax" else f" ({exc.msg})"
        raise ToolInputError(f"invalid syntax{detail}. {_ALLOWED}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ToolInputError("the expression cannot be parsed (nested too deeply?)") from None
    try:
        return _eval(tree)
    except (OverflowError, MemoryError):
        raise ToolInputError("the result is too large") from None
    except RecursionError:
        raise ToolInputError("the expression is nested too deeply") from None
    except TypeError as exc:
        raise ToolInputError(str(exc)) from None


def format_number(value: Number) -> str:
    """Integers print in full; floats with up to 10 significant digits, trailing zeros trimmed."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.10g}"


@tool(
    "calculator",
    description="Evaluate an arithmetic expression and return its value. Supports numbers, "
    "+ - * / // % ** and parentheses, and the functions abs, round, min, max, sqrt, floor, ceil.",
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "The expression, e.g. '2 * (3 + 4) ** 2 / sqrt(16)'.",
                "maxLength": MAX_EXPRESSION_CHARS,
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    title="Calculator",
    read_only=True,
    idempotent=True,
)
async def calculator(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """Evaluate ``arguments["expression"]`` and return the value as a string."""
    return format_number(evaluate(arguments["expression"]))
