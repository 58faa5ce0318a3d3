"""Math from data files: the reference JSONL format, and HF `datasets` on local parquet files."""

from __future__ import annotations

import json

import pytest

from timely.errors import TaskError
from timely.task import make_task

ROWS = [
    {"id": "q1", "question": "What is 6 times 7?", "answer": "42"},
    {"id": "q2", "question": "What is 3/4 plus 1/4?", "answer": "1"},
    {"id": "q3", "question": "Half of 9?", "answer": "\\frac{9}{2}", "split": "train"},
    {"id": "q4", "question": "What is 2 to the 10th power?", "answer": "1024", "level": "Level 3"},
]


@pytest.fixture
def items_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    return path


def test_reference_jsonl_lines_become_tasks(items_file):
    first = make_task("math/jsonl-v1", seed=0, path=str(items_file))
    assert "6 times 7" in first.spec.prompt and first.spec.split == "test"
    assert first.score("Answer: 42") == 1.0 and first.score("Answer: 41") == 0.0
    assert first.score("garbage") == 0.0 and first.score(None) == 0.0
    train = make_task("math/jsonl-v1", seed=0, split="train", path=str(items_file))
    assert "Half of 9" in train.spec.prompt
    assert train.score("Answer: 4.5") == 1.0  # math-verify: 9/2 == 4.5
    hard = make_task("math/jsonl-v1", seed=0, difficulty=3, path=str(items_file))
    assert "2 to the 10th" in hard.spec.prompt
    solution = first.solution()
    assert first.score(solution.answer) == 1.0


def test_seeds_index_items_and_splits_never_overlap(items_file):
    test_ids = {
        make_task("math/jsonl-v1", seed=s, path=str(items_file)).spec.prompt for s in range(3)
    }
    train_ids = {
        make_task("math/jsonl-v1", seed=0, split="train", path=str(items_file)).spec.prompt
    }
    assert len(test_ids) == 3 and not test_ids & train_ids
    with pytest.raises(TaskError, match="3"):
        make_task("math/jsonl-v1", seed=3, path=str(items_file))


def test_bad_jsonl_fails_naming_every_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "a", "question": "q", "answer": "1"}\n'
        "not json\n"
        '{"id": "b", "question": "q"}\n'
        '{"id": "a", "question": "q", "answer": "2"}\n'
    )
    with pytest.raises(TaskError) as err:
        make_task("math/jsonl-v1", seed=0, path=str(path))
    message = str(err.value)
    assert "line 2" in message and "line 3" in message and "line 4" in message
    with pytest.raises(TaskError, match="path="):
        make_task("math/jsonl-v1", seed=0)
    with pytest.raises(TaskError, match="no file"):
        make_task("math/jsonl-v1", seed=0, path=str(tmp_path / "missing.jsonl"))


def test_hf_datasets_reads_gsm8k_style_parquet_offline(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    data = tmp_path / "gsm8k"
    data.mkdir()
    test_rows = {
        "question": ["Tom has 3 bags of 4 apples. How many apples?", "What is 10% of 250?"],
        "answer": ["3 bags x 4 = 12 apples.\n#### 12", "250 / 10 = 25\n#### 25"],
    }
    train_rows = {"question": ["1,000 plus 1?"], "answer": ["#### 1,001"]}
    pq.write_table(pa.table(test_rows), data / "test-00000.parquet")
    pq.write_table(pa.table(train_rows), data / "train-00000.parquet")
    task = make_task("math/hf-v1", seed=1, dataset=str(data))
    assert "10% of 250" in task.spec.prompt
    assert task.score("So it is 25.\nAnswer: 25") == 1.0 and task.score("Answer: 24") == 0.0
    train = make_task("math/hf-v1", seed=0, split="train", dataset=str(data))
    assert train.score("Answer: 1001") == 1.0  # the gsm8k format drops thousands separators


def test_hf_reads_math_style_boxed_solutions(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = {
        "problem": ["Simplify 2/4."],
        "solution": ["Divide both by 2: $\\boxed{\\frac{1}{2}}$."],
        "level": ["Level 2"],
    }
    path = tmp_path / "math.parquet"
    pq.write_table(pa.table(rows), path)
    task = make_task("math/hf-v1", seed=0, difficulty=2, dataset=str(path))
    assert task.score("Answer: 0.5") == 1.0 and task.score("Answer: \\frac{1}{2}") == 1.0
    with pytest.raises(TaskError):
        make_task("math/hf-v1", seed=0, dataset=str(tmp_path / "nothing-here.parquet"))
