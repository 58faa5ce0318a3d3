"""Multi-part math families (chain, linear systems, batch): partial credit, budgets that bind."""

import hashlib
import re
from fractions import Fraction

import numpy as np
import pytest

from tests.helpers.env import in_process_tools
from timely.budget import Budget
from timely.clock import VirtualClock
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import TASKS, make_task
from timely.testing import check_task, check_task_with_loop
from timely_eval.tasks.math.batch import BatchTask
from timely_eval.tasks.math.chain import LABELS, ChainTask, n_parts
from timely_eval.tasks.math.multipart import extract_labelled, score_parts
from timely_eval.tasks.math.systems import SystemsTask, det

MULTI_IDS = ["math/chain-v1", "math/systems-v1", "math/batch-v1"]


def test_ids_and_aliases():
    assert TASKS.get("math/chain") is TASKS.get("math/chain-v1") is ChainTask
    assert TASKS.get("math/systems") is TASKS.get("math/systems-v1") is SystemsTask
    assert TASKS.get("math/batch") is TASKS.get("math/batch-v1") is BatchTask
    assert make_task("math/chain", seed=4).spec == make_task("math/chain-v1", seed=4).spec


def test_existing_v1_tasks_are_unchanged():
    """The base refactor (prompt_footer) must keep v1 prompts and solutions byte-identical."""
    digest = hashlib.sha256()
    for task_id in ("math/arithmetic-v1", "math/word-problems-v1", "math/multistep-v1"):
        for seed in range(3):
            task = make_task(task_id, seed=seed, difficulty=2)
            sol = task.solution()
            steps = [c.arguments["expression"] for c in sol.calls] + sol.fallback_answers
            digest.update("\x1f".join([task.spec.prompt, *steps]).encode())
    assert digest.hexdigest()[:16] == "3b4bacc4d33f6601"


@pytest.mark.parametrize("task_id", MULTI_IDS)
@pytest.mark.parametrize("difficulty", [1, 5])
def test_contract_at_other_difficulties(task_id, difficulty):
    check_task(task_id, n_seeds=6, difficulty=difficulty)


async def test_oracle_solves_the_hardest_chains_within_budget():
    await check_task_with_loop("math/chain-v1", n_seeds=2, difficulty=6)


@pytest.mark.parametrize("task_id", MULTI_IDS)
def test_splits_are_disjoint(task_id):
    texts = {
        split: {make_task(task_id, seed=s, split=split).spec.prompt for s in range(300)}
        for split in ("train", "test")
    }
    assert not texts["train"] & texts["test"]
    assert len(texts["test"]) == 300  # and seeds do not collide within a split


def test_chain_gets_longer_with_difficulty():
    means = []
    for d in (1, 3, 5, 6):
        tasks = [make_task("math/chain-v1", seed=s, difficulty=d) for s in range(40)]
        assert all(len(t.labels) == n_parts(d) for t in tasks)
        means.append(np.mean([len(t.solution().calls) for t in tasks]))
    assert means == sorted(means)
    assert 6 <= means[0] <= 10 and 20 <= means[2] <= 30 and means[3] >= 24
    assert n_parts(100) == len(LABELS)


def test_batch_parts_are_one_call_each_on_the_text_as_written():
    """Work done is calls made: part k is finished by call k, copied from the prompt."""
    for difficulty in (1, 2, 5):
        task = make_task("math/batch-v1", seed=7, split="train", difficulty=difficulty)
        calls = [c.arguments["expression"] for c in task.solution().calls]
        assert len(calls) == len(task.labels) == min(2 + 2 * difficulty, 12)
        for label, expression in zip(task.labels, calls, strict=True):
            assert f"\n{label}. {expression}\n" in task.spec.prompt + "\n"


def test_chain_parts_depend_on_earlier_answers():
    task = make_task("math/chain-v1", seed=11, difficulty=4)
    body = task.spec.prompt.split("\n\n")[0].splitlines()[1:]
    assert [line[0] for line in body] == list(task.labels)
    # every later part names at least one earlier label, except fresh sub-problems
    refs = [set(re.findall(r"\b([A-P])\b", line[2:])) - {line[0]} for line in body[1:]]
    assert sum(1 for r in refs if r) >= len(refs) - 2
    assert any(len(r) >= 2 for r in refs), "no part joins two strands"
    kinds = task.spec.metadata["kinds"]
    assert len(kinds) == len(body) and task.spec.metadata["n_parts"] == len(body)


def test_systems_golds_satisfy_the_equations():
    for d in (1, 2, 4, 6):
        for seed in range(15):
            task = make_task("math/systems-v1", seed=seed, difficulty=d)
            values = {k: int(v) for k, v in task.golds.items()}
            lines = task.spec.prompt.split("\n\n")[0].splitlines()[1:]
            assert len(lines) == len(values) == (2 if d == 1 else 3 if d <= 3 else 4)
            for line in lines:
                left, right = line.split(" = ")
                expr = re.sub(r"(\d)([a-z])", r"\1*\2", left)
                assert eval(expr, {}, values) == int(right), (seed, line)


def test_det_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4):
        m = rng.integers(-9, 10, size=(n, n)).tolist()
        assert det(m) == round(np.linalg.det(np.array(m, dtype=float)))


@pytest.mark.parametrize("task_id", MULTI_IDS)
def test_fallbacks_earn_growing_partial_credit(task_id):
    for seed in range(10):
        task = make_task(task_id, seed=seed)
        sol = task.solution()
        scores = [task.score(a) for a in sol.fallback_answers]
        assert len(scores) == len(sol.calls) + 1
        assert scores[0] == 0.0 and scores[-1] == 1.0 and scores == sorted(scores)
        assert any(0 < s < 1 for s in scores)
        k = len(task.labels)
        assert {round(s * k, 9) for s in scores} <= set(range(k + 1))
        assert task.well_formed(sol.answer) and not task.well_formed(sol.fallback_answers[1])


GOLD = {"A": Fraction(12), "B": Fraction(5)}


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("Answer: A=12; B=5", 1.0),
        ("Answer: A = 12, B = 6", 0.5),
        ("A: 12\nB: 5", 1.0),  # no Answer marker: the labelled statements anywhere
        ("Answer: B=5; A=12", 1.0),
        ("I first thought A=12. Answer: A=13; B=5", 0.5),  # only the text after Answer counts
        ("Answer: A = 4 * 3 = 12; B = 10 / 2 = 5", 1.0),
        ("**Answer:** A=12; B=5.", 1.0),
        ("Answer:\nA = 12\nB = 5", 1.0),
        ("\\boxed{A=12, B=5}", 1.0),
        ("Answer: A=12.0; B=5", 1.0),
        ("Answer: 12; 5", 0.0),  # unlabelled
        ("Answer: AB=12; BA=5", 0.0),  # labels are whole tokens
        ("Answer: A=twelve; B=", 0.0),
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_partial_credit_scoring(answer, score):
    assert score_parts(answer, GOLD) == score


def test_lowercase_labels_are_tokens():
    gold = {"x": Fraction(-3), "y": Fraction(4)}
    assert score_parts("Answer: x = -3; y = 4", gold) == 1.0
    assert score_parts("Answer: max=-3; y=4", gold) == 0.5
    assert extract_labelled("x: 1, y: 2", ("x", "y")) == {"x": "1", "y": "2"}


def test_scoring_never_raises_on_random_strings():
    task = make_task("math/chain-v1", seed=0, difficulty=1)
    rng = np.random.default_rng(7)
    pieces = list("0123456789,.;-=: \n") + ["A", "B", "C", "D", "Answer:", "\\boxed{", "**"]
    for _ in range(300):
        text = "".join(rng.choice(pieces, size=int(rng.integers(0, 40))))
        value = task.score(text)
        assert 0.0 <= value <= 1.0 and round(value * 4, 9).is_integer()


def test_solutions_match_the_real_calculator_tool():
    calculator = pytest.importorskip("timely_tools.calculator")
    for task_id in MULTI_IDS:
        for seed in range(15):
            for d in (1, 4, 6):
                task = make_task(task_id, seed=seed, difficulty=d)
                for step in task.problem.steps:
                    shown = calculator.format_number(calculator.evaluate(step.expression))
                    assert Fraction(shown) == step.value, (task_id, seed, step.expression)


async def _play(task_id: str, policy: str, budget_s: float, seed: int = 0):
    task = make_task(task_id, seed=seed)
    async with in_process_tools(latency="constant:1.0") as tools:
        return await run_episode(
            make_policy(policy), task, tools, VirtualClock(), Budget(seconds=budget_s)
        )


@pytest.mark.parametrize("task_id", MULTI_IDS)
async def test_budget_binds_and_budget_aware_keeps_partial_credit(task_id):
    full = await _play(task_id, "scripted:oracle", 200)
    assert full.score == 1.0 and full.compliant
    tight = full.elapsed_s * 0.6
    late = await _play(task_id, "scripted:oracle", tight)
    assert late.score == 0.0 and late.reward == 0.0  # the oracle ignores time and is cut off
    aware = await _play(task_id, "scripted:budget-aware", tight)
    assert aware.compliant and 0.0 < aware.score < 1.0 and aware.reward == aware.score
    assert aware.elapsed_s <= tight
