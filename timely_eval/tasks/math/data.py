"""The shared half of math tasks read from data (JSONL files, Hugging Face data sets).

Procedural families draw problems from a seed; data families look items up. This module holds
what the loaders share: the :class:`Item` record, the split rule, seed indexing, the prompt and
scoring, so :mod:`.jsonl` and :mod:`.hf` only read rows.

Seeds index items: seed ``i`` is the i-th item of the chosen split (and difficulty level), in
file order; an out-of-range seed is a :class:`~timely.errors.TaskError` that says how many items
there are. Splits are disjoint by construction, because every item belongs to exactly one:

- an item whose source names its split (a ``"split"`` field in a JSONL line, a hub split, a
  local file named ``train-*.parquet``) is in that split;
- other items form one pool, which is all ``test`` by default (a benchmark file is for
  evaluation); with ``train_fraction=f`` an item goes to ``train`` when a stable hash of its id
  falls below ``f``, so the same id always lands in the same split, whatever the file order.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from timely.errors import TaskError
from timely.rng import derive_seed
from timely.task import SPLITS, ScriptedSolution, Split, Task, TaskSpec
from timely_eval.tasks.math.base import CALCULATOR
from timely_eval.tasks.math.scoring import extract_answer, score_answer, stated_answer

if TYPE_CHECKING:
    from timely.types import Trajectory

DATA_FOOTER = (
    "You may use the `calculator` tool: call it with "
    '{"expression": "<arithmetic expression>"} to evaluate + - * / // % ** and parentheses, '
    "as well as abs, round, min, max, sqrt, floor and ceil.\n"
    "When you are done, give the final answer on its own line as `Answer: <answer>` "
    "(a number, or a LaTeX expression such as \\frac{3}{4}; no units)."
)
DEFAULT_BUDGET_S = 60.0
_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)
_HASH_SPACE = 2**63  # derive_seed returns 63-bit values


@dataclass(frozen=True)
class Item:
    """One question with its gold answer.

    Attributes:
        id: stable identifier (used for hash splits and recorded in the task metadata).
        question: the problem text shown to the agent.
        answer: the gold answer as text (a number or a LaTeX expression).
        split: the split the source assigns, or None when the item is in the shared pool.
        level: difficulty level when the source has one (MATH's "Level 3" is 3), else None.
    """

    id: str
    question: str
    answer: str
    split: Split | None = None
    level: int | None = None


def parse_level(value: Any) -> int | None:
    """A difficulty level from ``3``, ``"3"`` or ``"Level 3"``; None when there is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    match = _LEVEL_RE.match(value) if isinstance(value, str) else None
    return int(match.group(1)) if match and int(match.group(1)) >= 1 else None


def pool_split(item_id: str, train_fraction: float) -> Split:
    """The split of a pooled item: train iff a stable hash of its id is below the fraction."""
    if train_fraction <= 0:
        return "test"
    draw = derive_seed("timely-math-data-split", item_id) / _HASH_SPACE
    return "train" if draw < train_fraction else "test"


def select(
    items: list[Item] | tuple[Item, ...],
    split: Split,
    difficulty: int | None,
    train_fraction: float,
) -> list[Item]:
    """The items of ``split`` (and ``difficulty``, when given), in source order.

    Args:
        items: every item the source holds.
        split: "train" or "test".
        difficulty: keep only items of this level (None: all).
        train_fraction: share of pooled items that go to train (see :func:`pool_split`).
    """
    chosen = [
        it
        for it in items
        if (it.split if it.split is not None else pool_split(it.id, train_fraction)) == split
    ]
    if difficulty is not None:
        if not any(it.level is not None for it in items):
            raise TaskError(
                f"difficulty={difficulty} was asked for, but these items carry no difficulty "
                "level; leave difficulty unset (or add a 'level' to the data)"
            )
        chosen = [it for it in chosen if it.level == difficulty]
    return chosen


class DataTask(Task):
    """A math question looked up from data; subclasses load the items.

    Args:
        seed: index of the item within the selected split (and level).
        split: "train" or "test" (see the module docstring for how items are assigned).
        difficulty: keep only items of this level (None: all items).
        train_fraction: share of pooled items (those whose source names no split) that go to
            the train split, by a stable hash of the item id; 0 keeps them all in test.
        budget_s: the default time budget of every item, in seconds.
    """

    family: ClassVar[str] = "math"
    task_id: ClassVar[str]
    requires_options: ClassVar[bool] = True  # no instance without a data source

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        *,
        train_fraction: float = 0.0,
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if difficulty is not None and (
            isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1
        ):
            raise TaskError(f"difficulty must be an integer >= 1 or unset, got {difficulty!r}")
        if not isinstance(train_fraction, int | float) or not 0 <= train_fraction <= 1:
            raise TaskError(f"train_fraction must be a number in [0, 1], got {train_fraction!r}")
        if not isinstance(budget_s, int | float) or budget_s <= 0:
            raise TaskError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)  # ints and numpy integers, not floats or bools
        except TypeError:
            raise TaskError(f"seed must be an integer item index, got {seed!r}") from None
        items, source = self.load(split)
        chosen = select(items, split, difficulty, float(train_fraction))
        level = "" if difficulty is None else f" at difficulty {difficulty}"
        if not 0 <= seed < len(chosen):
            hint = (
                f"use seeds 0..{len(chosen) - 1}"
                if chosen
                else "there are none: check the split (train_fraction=..., or a 'split' field "
                "in the data) and the difficulty"
            )
            raise TaskError(
                f"{self.task_id}: seed {seed} is out of range: {source} has {len(chosen)} "
                f"{split} item(s){level}; {hint}"
            )
        self.item = chosen[seed]
        self.gold = self.item.answer
        self.spec = TaskSpec(
            id=self.task_id,
            seed=seed,
            split=split,
            difficulty=difficulty or self.item.level or 1,
            prompt=f"{self.item.question.strip()}\n\n{DATA_FOOTER}",
            tools=(CALCULATOR,),
            default_budget_s=float(budget_s),
            time_status="pull",
            metadata={"family": self.family, "item_id": self.item.id, "n_items": len(chosen)},
        )

    def load(self, split: Split) -> tuple[list[Item] | tuple[Item, ...], str]:
        """Every item of the source that ``split`` may draw from, and a name for messages.

        Sources may return items of both splits (``select`` filters them).
        """
        raise NotImplementedError

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """1.0 when the answer equals the gold (numbers exactly, LaTeX through math-verify).

        Golds that are neither (a word, a letter choice) are matched as text, ignoring case,
        spaces, ``$`` signs and a final period.
        """
        value = score_answer(answer, self.gold)
        if value == 0.0 and isinstance(answer, str):
            candidate = extract_answer(answer)
            if candidate is not None and _text_key(candidate) == _text_key(self.gold):
                return 1.0
        return value

    def target(self) -> str | None:
        """The item's gold answer as the data gives it (a number or a LaTeX expression)."""
        return self.gold

    def well_formed(self, answer: str | None) -> bool:
        """Whether the answer is stated explicitly and not empty: in an ``<answer>`` tag, an
        ``Answer:`` line or a ``\\boxed{}``."""
        stated = stated_answer(answer)
        return bool(stated and stated.strip())

    def solution(self) -> ScriptedSolution:
        """No tool script exists for arbitrary questions: the oracle states the gold answer.

        ``fallback_answers`` is empty: with no calls to cut short, every scripted mode answers
        the gold in its first turn; only generation time (e.g. ``think_tokens``) is charged.
        """
        return ScriptedSolution(calls=[], answer=f"Answer: {self.gold}", fallback_answers=[])


def _text_key(text: str) -> str:
    return " ".join(text.replace("$", " ").split()).rstrip(".").casefold()


def require_text(value: Any, what: str) -> str:
    """``value`` as stripped text; numbers are accepted, empty/None/bool/containers are not.

    Raises:
        ValueError: with a short reason (callers add the line or row).
    """
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise ValueError(f"{what} must be text or a number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return text
