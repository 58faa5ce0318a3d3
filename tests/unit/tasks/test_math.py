"""The math family: deterministic generators, disjoint splits, exact scoring, checked solutions."""

import asyncio
import math
import threading
from fractions import Fraction

import numpy as np
import pytest

from timely.errors import TaskError
from timely.task import TASKS, make_task, task_names
from timely.testing import check_task
from timely_eval.tasks.math.base import evaluate, split_of
from timely_eval.tasks.math.scoring import extract_answer, format_number, parse_number, score_answer
from timely_eval.tasks.math.word_problems import TEMPLATES

MATH_IDS = ["math/arithmetic-v1", "math/word-problems-v1", "math/multistep-v1"]


def test_ids_and_aliases_are_registered():
    names = task_names()
    for tid in MATH_IDS:
        assert tid in names
        alias = tid.rsplit("-v", 1)[0]
        assert TASKS.get(alias) is TASKS.get(tid)
        # an alias builds the same instance, recorded under the versioned id
        assert make_task(alias, seed=5).spec == make_task(tid, seed=5).spec
        assert make_task(alias, seed=5).spec.id == tid


@pytest.mark.parametrize(
    "task_id",
    [
        n
        for n in task_names()
        if n.startswith("math/") and not getattr(TASKS.get(n), "requires_options", False)
    ],
)
def test_check_task(task_id):
    check_task(task_id, n_seeds=12)


@pytest.mark.parametrize("task_id", MATH_IDS)
def test_deterministic_and_seed_sensitive(task_id):
    a, b = make_task(task_id, seed=7), make_task(task_id, seed=7)
    assert a.spec == b.spec and a.solution() == b.solution() and a.gold == b.gold
    assert make_task(task_id, seed=8).spec.prompt != a.spec.prompt
    assert make_task(task_id, seed=7, difficulty=3).spec.prompt != a.spec.prompt


@pytest.mark.parametrize("task_id", MATH_IDS)
def test_splits_are_disjoint_by_construction(task_id):
    texts = {
        split: {
            make_task(task_id, seed=s, split=split, difficulty=2).spec.prompt for s in range(500)
        }
        for split in ("train", "test")
    }
    assert not texts["train"] & texts["test"]
    # not just unlikely: each problem text belongs to exactly one split
    task = make_task(task_id, seed=3, split="train")
    assert split_of(task.problem.text) == "train"


@pytest.mark.parametrize(
    ("task_id", "steps"),
    [("math/arithmetic-v1", lambda d: d + 1), ("math/multistep-v1", lambda d: 4 + 2 * d)],
)
def test_difficulty_sets_the_number_of_steps(task_id, steps):
    for d in (1, 2, 3, 4):
        task = make_task(task_id, seed=0, difficulty=d)
        assert len(task.solution().calls) == steps(d) == task.spec.metadata["n_steps"]
        assert task.spec.difficulty == d
    easy = make_task(task_id, seed=0, difficulty=1).spec.default_budget_s
    assert make_task(task_id, seed=0, difficulty=4).spec.default_budget_s > easy


def test_word_problems_cover_every_template_and_get_harder():
    seen = {make_task("math/word-problems-v1", seed=s).spec.metadata["template"] for s in range(80)}
    assert seen == set(TEMPLATES) and len(TEMPLATES) >= 5
    mean_steps = [
        np.mean(
            [
                len(make_task("math/word-problems-v1", seed=s, difficulty=d).solution().calls)
                for s in range(60)
            ]
        )
        for d in (1, 4)
    ]
    assert mean_steps[1] > mean_steps[0] >= 2


def test_bad_arguments_raise_task_errors():
    with pytest.raises(TaskError):
        make_task("math/arithmetic-v1", seed=0, split="validation")
    with pytest.raises(TaskError):
        make_task("math/arithmetic-v1", seed=0, difficulty=0)


def _python_eval(expression: str) -> float:
    """Independent check of the generators' exact evaluator: plain Python, floats."""
    return eval(expression, {"__builtins__": {}}, {"ceil": math.ceil, "floor": math.floor})


@pytest.mark.parametrize("task_id", MATH_IDS)
def test_solution_expressions_evaluate_to_the_intermediate_values(task_id):
    for seed in range(40):
        for d in (1, 3):
            task = make_task(task_id, seed=seed, difficulty=d)
            sol = task.solution()
            assert [c.id for c in sol.calls] == [f"call_{i}" for i in range(len(sol.calls))]
            assert len(sol.fallback_answers) == len(sol.calls) + 1
            assert sol.answer == sol.fallback_answers[-1] == f"Answer: {task.gold_answer}"
            for call, fallback in zip(sol.calls, sol.fallback_answers[1:], strict=True):
                assert call.name == "calculator" and set(call.arguments) == {"expression"}
                expected = Fraction(fallback.removeprefix("Answer: "))
                got = _python_eval(call.arguments["expression"])
                assert got == pytest.approx(float(expected), rel=1e-12), (seed, call)


def test_prompt_mentions_the_answer_format_and_the_calculator():
    spec = make_task("math/multistep-v1", seed=0).spec
    assert "Answer: <number>" in spec.prompt and "calculator" in spec.prompt
    assert spec.tools == ("calculator",) and spec.time_status == "pull"
    assert "gold" not in spec.metadata and "answer" not in spec.metadata


def test_evaluate_is_exact():
    assert evaluate("3 * 4.35") == Fraction(1305, 100)
    assert evaluate("ceil(35001 / 500) + 7 % 3 - (-2) ** 3") == 71 + 1 + 8
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


@pytest.mark.parametrize(
    ("answer", "gold", "score"),
    [
        ("Answer: 1,234", 1234, 1.0),
        ("\\boxed{3/4}", Fraction(3, 4), 1.0),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4), 1.0),
        ("Answer: 0.75", Fraction(3, 4), 1.0),
        ("Answer: 3/4", "0.75", 1.0),
        ("The answer is -7.", -7, 1.0),
        ("Answer: -\\frac{7}{2}", Fraction(-7, 2), 1.0),
        ("**Answer:** $1,234.50.", Fraction(2469, 2), 1.0),
        ("Answer: 12 km", 12, 1.0),
        ("Answer:\n42", 42, 1.0),
        ("Answer: 3 * 4 = 12", 12, 1.0),
        ("Answer: \u22127", -7, 1.0),
        ("Answer: 0.667", Fraction(2, 3), 1.0),  # correctly rounded, gold has no short decimal
        ("Answer: 0.67", Fraction(2, 3), 0.0),  # too coarse
        ("Answer: 0.7", Fraction(3, 4), 0.0),
        ("Answer: 1234.01", 1234, 0.0),
        ("Answer: 7", -7, 0.0),
        ("I got 42 earlier.\nAnswer: unsure", 42, 0.0),  # the Answer line is authoritative
        ("42 then 43", 42, 0.0),  # the last number counts
        ("Answer: \\sqrt{16}", 4, 1.0),  # math-verify fallback
        ("Answer: \\dfrac{\\pi}{2}", "\\frac{\\pi}{2}", 1.0),
        ("Answer: 9^{999}", 4, 0.0),  # guarded: never handed to sympy
        ("garbage", 42, 0.0),
        ("", 42, 0.0),
        (None, 42, 0.0),
        ("Answer: 1/0", 42, 0.0),
    ],
)
def test_scoring(answer, gold, score):
    assert score_answer(answer, gold) == score


def test_extract_and_parse():
    assert extract_answer("so \\boxed{\\frac{1}{2}} and then Answer: 5") == "5"
    assert extract_answer("first \\boxed{1} then \\boxed{{2}}") == "{2}"
    assert extract_answer("no numbers") is None
    assert parse_number("$-1,234.5") == Fraction(-2469, 2)
    assert parse_number("1,2345") == 1  # not a thousands group
    assert [format_number(Fraction(x)) for x in ("42", "-3.5", "34.25", "2/3")] == [
        "42",
        "-3.5",
        "34.25",
        "2/3",
    ]


def test_scoring_never_raises_on_random_strings():
    rng = np.random.default_rng(1234)
    pieces = list("0123456789,./-+eE $%^*(){}=:\n\\ ax") + [
        "Answer:", "\\boxed{", "\\frac", "\\sqrt", "{,}", "\u2212", "**", "1,234", "\\text{",
        "^{", "!", "\\pi", "9" * 500,
    ]  # fmt: skip
    task = make_task("math/arithmetic-v1", seed=0)
    for _ in range(400):
        text = "".join(rng.choice(pieces, size=int(rng.integers(0, 30))))
        assert task.score(text) in (0.0, 1.0)
        assert score_answer(text, "\\frac{\\pi}{2}") in (0.0, 1.0)


def test_scoring_works_off_the_main_thread_and_in_asyncio():
    results = []
    cases = [("Answer: \\sqrt{16}", 4), ("Answer: \\frac{3}{4}", "0.75")]

    def work():
        results.extend(score_answer(a, g) for a, g in cases)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()

    async def in_loop():
        inline = [score_answer(a, g) for a, g in cases]
        threaded = await asyncio.gather(*(asyncio.to_thread(score_answer, a, g) for a, g in cases))
        return inline + list(threaded)

    results += asyncio.run(in_loop())
    assert results == [1.0] * 6


def test_solutions_match_the_real_calculator_tool():
    calculator = pytest.importorskip("timely_tools.calculator")
    for task_id in MATH_IDS:
        for seed in range(30):
            task = make_task(task_id, seed=seed, difficulty=5)
            for step in task.problem.steps:
                shown = calculator.format_number(calculator.evaluate(step.expression))
                assert Fraction(shown) == step.value, (task_id, seed, step.expression, shown)
