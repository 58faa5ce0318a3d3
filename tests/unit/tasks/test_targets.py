"""``Task.target()``: the gold each family scores against, or a digest when it must stay private."""

import hashlib
import itertools
import json

import pytest

from timely.task import TASKS, ScriptedSolution, Task, TaskSpec, make_task
from timely.testing import check_task
from timely_eval.tasks.ml.base import label_text


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    "task_id",
    ["math/arithmetic-v1", "math/word-problems-v1", "math/multistep-v1", "math/chain-v1",
     "math/systems-v1", "math/batch-v1"],
)  # fmt: skip
def test_math_targets_are_the_gold_answer_as_text(task_id):
    for seed in range(5):
        task = make_task(task_id, seed=seed)
        assert task.target() == task.gold_answer
        assert not task.target().startswith("sha256:")
        assert task.score(f"Answer: {task.target()}") == 1.0  # re-scoring from the record


def test_data_targets_are_the_items_gold(tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [{"id": "a", "question": "Half of 9?", "answer": "\\frac{9}{2}"},
            {"id": "b", "question": "Capital of France?", "answer": "Paris"}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    targets = [make_task("math/jsonl-v1", seed=s, path=str(path)).target() for s in (0, 1)]
    assert targets == ["\\frac{9}{2}", "Paris"]


def test_game_targets_are_a_digest_of_the_completion_code():
    targets = set()
    for split, seed in itertools.product(("train", "test"), range(4)):
        task = make_task("games/treasure-v1", seed=seed, split=split)
        target = task.target()
        assert target == sha256(task.code) and task.code not in target
        assert task.score(task.solution().answer) == 1.0  # the code the digest checks
        targets.add(target)
    assert len(targets) == 8


@pytest.mark.parametrize("task_id", ["ml/breast-cancer-v1", "ml/diabetes-code-v1"])
def test_ml_targets_are_a_digest_of_the_held_out_labels(task_id):
    task = make_task(task_id, seed=0)
    labels = task.data.test_labels
    assert task.target() == sha256(json.dumps(list(labels), separators=(",", ":")))
    assert task.target() == sha256(label_text(labels))
    assert make_task(task_id, seed=1).target() != task.target()
    assert make_task(task_id, seed=0, split="train").target() != task.target()


class _Toy(Task):
    """A task whose target a test swaps for a broken one."""

    family = "math"
    targets = iter(())

    def __init__(self, seed: int, split: str = "test", difficulty: int = 1) -> None:
        self.spec = TaskSpec(
            id="math/toy-target-v1", seed=seed, split=split, difficulty=difficulty,
            prompt=f"Say {seed} ({split}).",
        )  # fmt: skip

    def score(self, answer, trajectory=None) -> float:
        return float(answer == f"Answer: {self.spec.seed}")

    def solution(self) -> ScriptedSolution:
        return ScriptedSolution(calls=[], answer=f"Answer: {self.spec.seed}")

    def target(self) -> str | None:
        return next(self.targets)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (itertools.count(), "different targets"),
        (itertools.repeat(""), "non-empty text"),
        (itertools.repeat("sha256:XYZ"), "64"),
        (itertools.repeat("sha256:" + "A" * 64), "lowercase"),
    ],
)
def test_check_task_rejects_unstable_or_malformed_targets(monkeypatch, targets, message):
    monkeypatch.setitem(TASKS._items, "math/toy-target-v1", _Toy)
    monkeypatch.setattr(_Toy, "targets", targets)
    with pytest.raises(AssertionError, match=message):
        check_task("math/toy-target-v1", n_seeds=2)


@pytest.mark.parametrize(
    "targets", [itertools.repeat(None), itertools.repeat("42"), itertools.repeat(sha256("x"))]
)
def test_check_task_accepts_none_text_and_digests(monkeypatch, targets):
    monkeypatch.setitem(TASKS._items, "math/toy-target-v1", _Toy)
    monkeypatch.setattr(_Toy, "targets", targets)
    check_task("math/toy-target-v1", n_seeds=2)


def test_the_base_class_has_no_target_and_digests_utf8():
    class Plain(_Toy):
        target = Task.target

    assert Plain(seed=0).target() is None
    assert Task.digest("\u00e9") == sha256("\u00e9") == Task.digest("é")
