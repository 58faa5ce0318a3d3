"""``ml/dir-v1``: reference-release agentic-ML directories, written here from sklearn data."""

import csv
import io

import pytest

from timely.budget import Budget
from timely.clock import VirtualClock
from timely.errors import TaskError
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import TASKS, make_task
from timely.testing import check_task
from timely.toolclient import ToolClient
from timely_eval.tasks.math.data import pool_split
from timely_eval.tasks.ml.datasets import build
from timely_eval.tasks.ml.dirs import DirTask
from timely_server.app import ServerConfig, create_app
from timely_tools.ml.data import encode_receipt

PROMPT = (
    "Task:\n- Train data is available at ./data/public/train.csv.\n"
    "- Build a binary classifier for column label.\n"
    "- Write ./submission.csv with columns: id,label (label is a probability).\n"
)


def write_csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def reference_dir(root, seed=0, *, prompt=True):
    """A breast-cancer task in the reference layout (binary; the label column is `label`)."""
    d = build("breast_cancer", seed, "test", 1)
    write_csv(root / "public" / "train.csv", d.train_csv.replace(",target\n", ",label\n", 1))
    write_csv(root / "public" / "test.csv", d.test_csv)
    ids = [r[0] for r in list(csv.reader(io.StringIO(d.test_csv)))[1:]]
    private = "id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, d.test_labels, strict=True))
    write_csv(root / "private" / "test.csv", private)
    if prompt:
        (root / "prompt.txt").write_text(PROMPT)
    return d


def one_hot_dir(root):
    """Digits in the reference's multiclass format: one 0/1 private column per class."""
    d = build("digits", 0, "test", 3)
    names = [f"digit_{k}" for k in range(10)]
    lines = d.train_csv.splitlines()
    train = [lines[0].replace(",target", ",digit")]
    train += [",".join([*r.split(",")[:-1], f"digit_{r.split(',')[-1]}"]) for r in lines[1:]]
    write_csv(root / "public" / "train.csv", "\n".join(train) + "\n")
    write_csv(root / "public" / "test.csv", d.test_csv)
    ids = [r[0] for r in list(csv.reader(io.StringIO(d.test_csv)))[1:]]
    body = "".join(
        f"{i}," + ",".join("1" if f"digit_{y}" == n else "0" for n in names) + "\n"
        for i, y in zip(ids, d.test_labels, strict=True)
    )
    write_csv(root / "private" / "test.csv", "id," + ",".join(names) + "\n" + body)


async def play(task):
    app = create_app(ServerConfig(latency="constant:1.0"))
    async with ToolClient.in_process(app) as tools:
        policy = make_policy("scripted:oracle")
        return await run_episode(policy, task, tools, VirtualClock(), Budget(seconds=300))


async def test_a_reference_binary_directory_plays_in_code_mode(tmp_path):
    reference_dir(tmp_path / "toy")
    task = make_task("ml/dir-v1", seed=0, path=str(tmp_path / "toy"), is_binary=True)
    again = make_task("ml/dir-v1", seed=0, path=str(tmp_path / "toy"), is_binary=True)
    assert task.spec == again.spec and task.spec.tools == ("run_python",)
    assert task.spec.prompt.startswith(PROMPT.strip()) and task.data.fmt == "probability"
    traj = await play(task)
    assert traj.score == 1.0 and traj.compliant
    labels = list(task.data.test_labels)
    assert task.score(encode_receipt(task.data.fp, "classification", labels)) == 1.0
    majority = max(set(labels), key=labels.count)
    assert task.score(encode_receipt(task.data.fp, "classification", [majority] * 71)) == 0.0
    assert task.score("Final: sub-7") == 0.0 and task.score(None) == 0.0


async def test_probability_submissions_are_thresholded_at_one_half(tmp_path):
    reference_dir(tmp_path / "toy", prompt=False)
    task = make_task("ml/dir-v1", seed=0, path=str(tmp_path / "toy"), is_binary=True)
    assert "Agentic ML task 'toy'" in task.spec.prompt  # no template: a generated text
    from timely_tools.ml.data import parse_submission

    ids = list(task.calibration.test_ids)
    text = "id,label\n" + "".join(
        f"{i},{0.9 if y == '1' else 0.2}\n" for i, y in zip(ids, task.data.test_labels, strict=True)
    )
    how = {"id_column": "id", "targets": ["label"], "test_ids": ids, "kind": "classification"}
    preds = parse_submission(text, fmt="probability", labels=["0", "1"], **how)
    assert preds == list(task.data.test_labels)
    with pytest.raises(ValueError, match="probability"):
        parse_submission(text.replace("0.9", "1.5"), fmt="probability", labels=["0", "1"], **how)


async def test_a_one_hot_multiclass_directory_in_tools_mode(tmp_path):
    one_hot_dir(tmp_path / "digits")
    task = make_task("ml/dir-v1", seed=0, path=str(tmp_path / "digits"), mode="tools",
                     reference_model="svm", reference_params={"C": 10.0})  # fmt: skip
    assert task.data.fmt == "one_hot" and task.data.label_column == "digit"
    assert set(task.data.test_labels) <= {f"digit_{k}" for k in range(10)}
    traj = await play(task)
    assert traj.score == 1.0


def test_a_directory_of_directories_splits_by_name_and_passes_the_contract(tmp_path, monkeypatch):
    names = [f"task{k}" for k in range(12)]
    split = {n: pool_split(n, 0.5) for n in names}
    assert (
        sum(s == "train" for s in split.values()) >= 2 <= sum(s == "test" for s in split.values())
    )
    for k, name in enumerate(names):
        reference_dir(tmp_path / name, seed=k)

    class Fixed(DirTask):
        task_id = "ml/dir-fixture-v1"

        def __init__(self, seed, split="test", difficulty=1):
            super().__init__(seed, split, difficulty, path=tmp_path, train_fraction=0.5,
                             mode="tools", reference_model="logistic_regression")  # fmt: skip

    monkeypatch.setitem(TASKS._items, Fixed.task_id, Fixed)
    check_task(Fixed.task_id, n_seeds=2)
    with pytest.raises(TaskError, match="out of range"):
        Fixed(seed=50)


def test_overrides_and_errors(tmp_path):
    reference_dir(tmp_path / "t")
    path = str(tmp_path / "t")
    task = make_task("ml/dir-v1", seed=0, path=path, is_binary=True, reference=0.99)
    assert task.calibration.reference == 0.99
    assert task.score(task.solution().answer) < 1.0  # the oracle falls short of a set threshold
    for options, message in [
        ({}, "needs a data directory"),
        ({"path": str(tmp_path / "missing")}, "no directory"),
        ({"path": path, "private": "private/nope.csv"}, "private label file"),
        ({"path": path, "metric": "r2"}, "metric for classification"),
        ({"path": path, "mode": "chat"}, "mode"),
        ({"path": path, "prompt": "nope.txt"}, "prompt template"),
    ]:
        with pytest.raises(TaskError, match=message):
            make_task("ml/dir-v1", seed=0, **options)
