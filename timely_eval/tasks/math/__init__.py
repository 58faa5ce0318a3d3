"""Time-constrained math: procedural problems with exact answers, and math data sets.

Importing this package registers the procedural families ``math/arithmetic-v1``,
``math/word-problems-v1``, ``math/multistep-v1``, ``math/chain-v1``, ``math/systems-v1`` and
``math/batch-v1``, the data-file families ``math/jsonl-v1`` and ``math/hf-v1``, and the
unversioned aliases that point at the latest version of each.
"""

from timely_eval.tasks.math.arithmetic import ArithmeticTask
from timely_eval.tasks.math.base import MathTask, Problem
from timely_eval.tasks.math.batch import BatchTask
from timely_eval.tasks.math.chain import ChainTask
from timely_eval.tasks.math.data import DataTask, Item
from timely_eval.tasks.math.hf import HFTask
from timely_eval.tasks.math.jsonl import JsonlTask
from timely_eval.tasks.math.multistep import MultistepTask
from timely_eval.tasks.math.systems import SystemsTask
from timely_eval.tasks.math.word_problems import WordProblemTask

__all__ = [
    "ArithmeticTask",
    "BatchTask",
    "ChainTask",
    "DataTask",
    "HFTask",
    "Item",
    "JsonlTask",
    "MathTask",
    "MultistepTask",
    "Problem",
    "SystemsTask",
    "WordProblemTask",
]
