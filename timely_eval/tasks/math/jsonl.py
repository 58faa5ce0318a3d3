"""``math/jsonl-v1``: general-reasoning questions from a JSONL file, in the reference format.

The reference ``timely-eval`` release reads its general-reasoning track from JSONL lines
``{"id": ..., "question": ..., "answer": ...}``; users bring those files unchanged with
``path=/data/items.jsonl``. Optional per-line fields: ``"split"`` (``"train"`` or ``"test"``) and
``"level"`` or ``"difficulty"`` (an integer, or ``"Level 3"``); other fields are ignored. Blank
lines are skipped.

Seeds index items in file order within the split (see :mod:`.data`); lines without a ``split``
are all ``test`` unless ``train_fraction`` carves a train split by a stable hash of the id.
A malformed file fails as a whole with an error naming each bad line (up to five), so a typo
never silently drops questions from an evaluation. Files are read once per process and re-read
when they change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from timely.errors import TaskError
from timely.task import SPLITS, Split, register_task
from timely_eval.tasks.math.data import DEFAULT_BUDGET_S, DataTask, Item, parse_level, require_text

REQUIRED = ("id", "question", "answer")
_MAX_REPORTED = 5
_CACHE: dict[tuple[str, int, int], tuple[Item, ...]] = {}
_CACHE_SIZE = 16


def read_items(path: str | Path) -> tuple[Item, ...]:
    """Every item of a JSONL file, validated; cached per (path, modification time, size).

    Args:
        path: the JSONL file.

    Raises:
        TaskError: the file is missing, empty, or has bad lines (each named by number).
    """
    p = Path(path).expanduser()
    try:
        stat = p.stat()
    except OSError:
        raise TaskError(
            f"math/jsonl-v1: no file at {str(p)!r}; pass path=/path/to/items.jsonl "
            '(one {"id", "question", "answer"} object per line)'
        ) from None
    if not p.is_file():
        raise TaskError(f"math/jsonl-v1: {str(p)!r} is not a file; pass a JSONL file as path=")
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        items = _parse(p)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = items
    return _CACHE[key]


def _parse(p: Path) -> tuple[Item, ...]:
    items: list[Item] = []
    errors: list[str] = []
    first_line_of: dict[str, int] = {}
    with p.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                item = _item(raw, number)
            except ValueError as exc:
                errors.append(f"line {number}: {exc}")
                continue
            if item is None:
                continue
            if item.id in first_line_of:
                errors.append(
                    f"line {number}: id {item.id!r} repeats line {first_line_of[item.id]}; "
                    "ids must be unique"
                )
                continue
            first_line_of[item.id] = number
            items.append(item)
    if errors:
        shown = "\n  ".join(errors[:_MAX_REPORTED])
        more = (
            f"\n  ... and {len(errors) - _MAX_REPORTED} more" if len(errors) > _MAX_REPORTED else ""
        )
        # The first line of the message names no content, only where the first bad line is:
        # the agent endpoint passes only that line on to its client (the file is the server's).
        first = errors[0].split(":", 1)[0]
        raise TaskError(
            f"math/jsonl-v1: {p} has {len(errors)} bad line(s), the first is {first}:\n"
            f"  {shown}{more}\n"
            'Each line must be one JSON object like {"id": "q1", "question": "...", '
            '"answer": "42"}.'
        )
    if not items:
        raise TaskError(
            f"math/jsonl-v1: {p} holds no items (it is empty or only blank lines); add lines "
            'like {"id": "q1", "question": "...", "answer": "42"}'
        )
    return tuple(items)


def _item(raw: bytes, number: int) -> Item | None:
    """One line as an Item; None for a blank line; ValueError with a reason otherwise."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        row: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(repr(k) for k in missing)}")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (or absent), got {split!r}")
    raw_level = row.get("level", row.get("difficulty"))
    level = parse_level(raw_level)
    if raw_level is not None and level is None:
        raise ValueError(f"level must be an integer >= 1 or 'Level N', got {raw_level!r}")
    return Item(
        id=require_text(row["id"], "'id'"),
        question=require_text(row["question"], "'question'"),
        answer=require_text(row["answer"], "'answer'"),
        split=split,
        level=level,
    )


@register_task("math/jsonl-v1", help="Reasoning questions from a JSONL file: path=... (required).")
@register_task("math/jsonl", help="Alias of the latest math/jsonl version (v1).")
class JsonlTask(DataTask):
    """One question of a ``{"id", "question", "answer"}`` JSONL file; seed = item index.

    Args:
        seed: index of the item within the split (and level), in file order.
        split: "train" or "test".
        difficulty: keep only items whose ``level`` is this (None: all).
        path: the JSONL file (required).
        train_fraction: share of lines without a ``split`` that go to train (default 0: none).
        budget_s: default time budget per question.
    """

    task_id = "math/jsonl-v1"
    path_options: ClassVar[frozenset[str]] = frozenset({"path"})

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        *,
        path: str | Path | None = None,
        train_fraction: float = 0.0,
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        if path is None or not str(path).strip():
            raise TaskError(
                "math/jsonl-v1 needs a data file: make_task(..., path='/data/items.jsonl'), "
                "or task_options.path=/data/items.jsonl with `timely run`"
            )
        self.path = Path(str(path)).expanduser()
        super().__init__(seed, split, difficulty, train_fraction=train_fraction, budget_s=budget_s)

    def load(self, split: Split) -> tuple[tuple[Item, ...], str]:
        """All items of the file (both splits; ``select`` filters)."""
        return read_items(self.path), str(self.path)
