"""Answers in the reference release's format: ``<answer>...</answer>``, often with a box inside.

The tag is authoritative (no other number in the reply counts), the last complete tag wins, an
unclosed tag counts only when no tag is complete, and math-verify runs in a bounded worker, so
scoring works from threads and event loops and returns within a bound on any input.
"""

import asyncio
import itertools
import json
import threading
from fractions import Fraction

import pytest

from timely.clock import wall_seconds
from timely.task import make_task
from timely_eval.tasks.math.scoring import extract_answer, score_answer


@pytest.mark.parametrize(
    ("answer", "gold", "score"),
    [
        # a distractor after the tag
        ("<answer>42</answer> ... so 43 is wrong", 42, 1.0),
        ("<answer>42</answer> ... so 43 is wrong", 43, 0.0),
        # a LaTeX fraction against a decimal gold, and the other way round
        ("<answer>\\frac{3}{4}</answer>", "0.75", 1.0),
        ("<answer>0.75</answer> of the \\frac{1}{2} cake", "\\frac{3}{4}", 1.0),
        # \dfrac and \tfrac
        ("<answer>\\dfrac{7}{2}</answer> hours, i.e. 3 hours 30 minutes", Fraction(7, 2), 1.0),
        ("<answer>\\tfrac{1}{8}</answer> of 40", "0.125", 1.0),
        # thousands separators
        ("<answer>1,234</answer> (I first got 1,200)", 1234, 1.0),
        ("<answer>1234</answer> (I first got 1,200)", "1,234", 1.0),
        # a trailing unit
        ("<answer>12 cm</answer> since 3 cm x 4", 12, 1.0),
        ("<answer>$5</answer> left after 3 apples", 5, 1.0),
        ("<answer>5 dollars</answer> left after 3 apples", 5, 1.0),
        # a boxed answer inside the tag
        ("<answer>\\boxed{\\frac{3}{4}}</answer> (not 5)", "0.75", 1.0),
        ("<answer>\\boxed{\\sqrt{2}}</answer>, about \\boxed{1.41}", "\\sqrt{2}", 1.0),
        ("<answer>The answer is \\boxed{8}.</answer> Check: 2 * 4", 8, 1.0),
        # two tags: the last complete one counts
        ("<answer>1</answer> wait, I slipped: <answer>2</answer> (not 3)", 2, 1.0),
        ("<answer>1</answer> wait, I slipped: <answer>2</answer> (not 3)", 1, 0.0),
        # an unclosed tag counts only when there is no complete one
        ("<answer>\\dfrac{7}{2} hours, since 7 divided by 2", "3.5", 1.0),
        ("<answer>1</answer> hmm, maybe <answer>2", 1, 1.0),
        ("<answer>1</answer> hmm, maybe <answer>2", 2, 0.0),
        # the tag is authoritative: an empty or wordy tag is not rescued by other numbers
        ("The result is 42. <answer></answer>", 42, 0.0),
        ("I computed 42. <answer>not sure</answer>", 42, 0.0),
        # the tag beats an Answer: line and a box outside it
        ("Answer: 5\n<answer>6</answer>", 6, 1.0),
        ("\\boxed{5} <answer>6</answer>", 6, 1.0),
        # case and spaces in the tag itself
        ("<ANSWER> 9 </Answer > and 10", 9, 1.0),
        # symbolic answers through math-verify
        ("<answer>\\sqrt{16}</answer>, not 5", 4, 1.0),
        ("<answer>\\frac{\\sqrt{3}}{2}</answer> (0.87)", "\\frac{1}{2}\\sqrt{3}", 1.0),
    ],
)
def test_answer_tag_scoring(answer, gold, score):
    assert score_answer(answer, gold) == score


def test_extract_answer_prefers_the_last_complete_tag():
    assert extract_answer("<answer>1</answer> and <answer> 2 </answer> then 3") == "2"
    assert extract_answer("<answer>\\boxed{\\frac{1}{2}}</answer> 7") == "\\frac{1}{2}"
    assert extract_answer("so <answer>4") == "4"
    assert extract_answer("<answer></answer> 5") == ""


def test_well_formed_recognises_the_tag(tmp_path):
    task = make_task("math/arithmetic-v1", seed=0)
    gold = task.gold_answer
    for answer in (f"<answer>{gold}</answer>", f"<answer>\\boxed{{{gold}}}</answer>",
                   f"Answer: {gold}", f"\\boxed{{{gold}}}"):  # fmt: skip
        assert task.well_formed(answer), answer
    for answer in (None, "", "I think it is 12", "<answer></answer>", "<answer>banana</answer>"):
        assert not task.well_formed(answer), answer
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "q", "question": "?", "answer": "\\sqrt{2}"}) + "\n")
    data = make_task("math/jsonl-v1", seed=0, path=str(path))
    assert data.well_formed("<answer>\\sqrt{2}</answer>") and data.well_formed("Answer: x")
    assert not data.well_formed("<answer> </answer> 5") and not data.well_formed("just 5")


def test_multipart_answers_in_a_tag():
    task = make_task("math/systems-v1", seed=0)
    line = task.gold_answer
    wrong = "; ".join(f"{label}=987654" for label in task.labels)
    assert task.score(f"<answer>{line}</answer> and not {wrong}") == 1.0
    assert task.well_formed(f"<answer>{line}</answer>")
    assert task.score(f"<answer>{wrong}</answer> Answer: {line}") == 0.0


# ---- math-verify off the main thread, and within a bound ----------------------------------

CASES = [("<answer>\\sqrt{16}</answer>, not 5", 4), ("<answer>\\frac{3}{4}</answer>", "0.75")]
PATHOLOGICAL = ("<answer>(x+1)^{999}</answer>", "(x+2)^{999}")  # ~20 s of sympy simplify


def test_scoring_from_a_worker_thread():
    results = []
    thread = threading.Thread(target=lambda: results.extend(score_answer(*c) for c in CASES))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and results == [1.0, 1.0]


def test_scoring_inside_a_running_event_loop():
    async def main():
        inline = [score_answer(*c) for c in CASES]  # blocking, but bounded
        threaded = await asyncio.gather(*(asyncio.to_thread(score_answer, *c) for c in CASES))
        return inline + list(threaded)

    assert asyncio.run(main()) == [1.0] * 4


def test_a_pathological_expression_returns_within_the_bound():
    bound = 1.0
    results: list[tuple[float, float]] = []
    fresh = itertools.count(100)  # uncached comparisons, so they really reach a worker

    def timed():
        n = next(fresh)
        assert score_answer(f"<answer>\\sqrt{{{n * n}}}</answer>", n) == 1.0  # a worker is up
        start = wall_seconds()
        value = score_answer(*PATHOLOGICAL, timeout_s=bound)
        results.append((value, wall_seconds() - start))

    async def in_loop():
        timed()

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join(timeout=60)
    asyncio.run(in_loop())
    assert len(results) == 2
    for value, elapsed in results:
        assert value == 0.0 and bound <= elapsed < bound + 0.5, elapsed
    # the stuck worker was replaced: scoring still works
    assert score_answer(*CASES[0]) == 1.0
