import pytest

from timely_tools.base import ToolInputError
from timely_tools.calculator import evaluate, format_number


@pytest.mark.parametrize(
    "expr, shown",
    [
        ("109316837376 / 4", "27329209344"),  # exact integer division stays an integer
        ("7 / 2", "3.5"),
        ("1 / 3", "0.3333333333"),
        ("2**40 / 4", "274877906944"),
        ("-9 // 2", "-5"),
        ("sqrt(16) + abs(-3)", "7"),
    ],
)
def test_values(expr, shown):
    assert format_number(evaluate(expr)) == shown


@pytest.mark.parametrize("expr", ["1/0", "__import__('os')", "2**100000", "x + 1", "1 +"])
def test_rejects(expr):
    with pytest.raises(ToolInputError):
        evaluate(expr)
