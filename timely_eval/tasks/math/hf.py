"""``math/hf-v1``: GSM8K / MATH-style questions through Hugging Face ``datasets``.

``dataset=`` is a hub name (``openai/gsm8k`` with ``config=main``; needs a network) or local data:
a parquet / JSONL / CSV file, a glob, or a directory of such files (read with
``datasets.load_dataset("parquet", data_files=...)`` and friends; no network).

Splits (see :mod:`.data` for the rule): with ``hf_split`` unset, our ``test``/``train`` read the
data set's own split of that name (a hub split, or local files named ``test-*.parquet`` /
``train-*.parquet``), so they are as disjoint as the data set's authors made them. Local files
that name no split, and any split picked explicitly with ``hf_split=`` (``"test"``,
``"train[:500]"``), form one pool: all ``test``, unless ``train_fraction`` sends a stable-hash
share of it to ``train``.

Gold answers come from ``answer_field`` through ``answer_format``: ``gsm8k`` (the text after
``####``, commas removed), ``boxed`` (the last ``\\boxed{...}`` of a MATH solution), ``plain``,
or ``auto`` (the first of those that applies to each row). A row whose answer cannot be read
fails the load with its index. Loaded items are cached per process.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from timely.errors import TaskError
from timely.rng import derive_seed
from timely.task import Split, register_task
from timely_eval.tasks.math.data import DEFAULT_BUDGET_S, DataTask, Item, parse_level, require_text
from timely_eval.tasks.math.scoring import last_boxed

AnswerFormat = Literal["auto", "gsm8k", "boxed", "plain"]
ANSWER_FORMATS: tuple[str, ...] = ("auto", "gsm8k", "boxed", "plain")
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
QUESTION_FIELDS = ("question", "problem", "query", "prompt")
ANSWER_FIELDS = ("answer", "solution", "final_answer")
ID_FIELDS = ("id", "unique_id", "idx")
_SPLIT_NAME_RE = re.compile(r"(?:^|[/_.\-])(train|test|validation|valid|dev)(?=[/_.\-]|$)")
_CACHE: dict[tuple[Any, ...], tuple[Item, ...]] = {}
_CACHE_SIZE = 8
OFFLINE_HINT = "no network? pass a local path: dataset=/path/to/file.parquet"


def gold_from(text: Any, answer_format: str) -> str:
    """The gold answer in an answer field.

    Args:
        text: the field's value (a GSM8K rationale ending in ``#### 72``, a MATH solution, ...).
        answer_format: "gsm8k", "boxed", "plain" or "auto".

    Raises:
        ValueError: the value holds no answer in that format.
    """
    value = require_text(text, "the answer field")
    fmt = answer_format
    if fmt == "auto":
        fmt = "gsm8k" if "####" in value else "boxed" if last_boxed(value) is not None else "plain"
    if fmt == "gsm8k":
        if "####" not in value:
            raise ValueError("no '####' before the final answer (answer_format='gsm8k')")
        return require_text(value.rsplit("####", 1)[1].replace(",", ""), "the text after ####")
    if fmt == "boxed":
        boxed = last_boxed(value)
        if not boxed:
            raise ValueError("no \\boxed{...} answer (answer_format='boxed')")
        return boxed
    return value


def local_files(dataset: str) -> dict[str | None, list[str]] | None:
    """Local data files grouped by the split their names give (None: no split named).

    Returns None when ``dataset`` is not a local path (a hub name).

    Raises:
        TaskError: a path that does not exist or holds no readable data files.
    """
    path = Path(dataset).expanduser()
    if any(ch in dataset for ch in "*?["):
        files = sorted(glob.glob(str(path), recursive=True))
        if not files:
            raise TaskError(f"math/hf-v1: no files match {dataset!r}")
    elif path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in BUILDERS)
    elif path.exists():
        files = [str(path)]
    elif dataset.startswith(("/", ".", "~")) or path.suffix.lower() in BUILDERS:
        raise TaskError(f"math/hf-v1: no such file or directory: {dataset!r}")
    else:
        return None
    files = [f for f in files if Path(f).suffix.lower() in BUILDERS]
    if not files:
        raise TaskError(
            f"math/hf-v1: no data files in {dataset!r}; use {', '.join(sorted(BUILDERS))} files"
        )
    root = path if path.is_dir() else path.parent
    groups: dict[str | None, list[str]] = {}
    for f in files:
        rel = str(Path(f).relative_to(root)) if Path(f).is_relative_to(root) else Path(f).name
        match = _SPLIT_NAME_RE.search(rel.lower())
        groups.setdefault(match.group(1) if match else None, []).append(f)
    if None in groups and len(groups) > 1:
        raise TaskError(
            f"math/hf-v1: some files in {dataset!r} name a split (train-*, test-*) and some do "
            f"not ({groups[None][0]}); keep one layout, or pass the files you mean"
        )
    return groups


def _load_rows(
    dataset: str,
    config: str | None,
    hf_split: str | None,
    split: Split,
    cache_dir: str | None,
) -> tuple[list[dict[str, Any]], bool, str]:
    """(rows, pooled, source name) for one request; pooled rows get the hash split rule."""
    import datasets  # heavy; only data tasks need it

    files = local_files(dataset)
    if files is not None:
        if None in files:  # one pool of unnamed files
            if hf_split is not None:
                raise TaskError(
                    f"math/hf-v1: the files of {dataset!r} name no split, so hf_split="
                    f"{hf_split!r} has nothing to pick; leave it unset (they are one pool)"
                )
            chosen, pooled, name = files[None], True, dataset
        else:
            want = hf_split or split
            if want not in files:
                raise TaskError(
                    f"math/hf-v1: {dataset!r} has no {want!r} files (splits: "
                    f"{', '.join(sorted(str(k) for k in files))}); pass hf_split=NAME to read one "
                    "split as a pool"
                )
            chosen, pooled, name = files[want], hf_split is not None, f"{dataset} [{want}]"
        builders = {BUILDERS[Path(f).suffix.lower()] for f in chosen}
        if len(builders) > 1:
            raise TaskError(f"math/hf-v1: {dataset!r} mixes file types; use one of them")
        try:
            ds = datasets.load_dataset(
                builders.pop(), data_files={"data": chosen}, split="data", cache_dir=cache_dir
            )
        except Exception as exc:  # noqa: BLE001 - any reader failure is a data problem
            raise TaskError(
                f"math/hf-v1: cannot read {name}: {type(exc).__name__}: {exc}"
            ) from None
        return ds.to_list(), pooled, name
    want = hf_split or split
    where = f"{dataset!r} (config={config!r}, split={want!r})"
    try:
        ds = datasets.load_dataset(dataset, config, split=want, cache_dir=cache_dir)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise TaskError(
                f"math/hf-v1: {where}: {exc}; pass hf_split=NAME (and train_fraction=...)"
            ) from None
        raise TaskError(f"math/hf-v1: cannot load {where}: {exc}. {OFFLINE_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - hub, network and cache failures all land here
        raise TaskError(
            f"math/hf-v1: cannot load {where} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); {OFFLINE_HINT}"
        ) from None
    return ds.to_list(), hf_split is not None, f"{dataset} [{want}]"


def _field(row: dict[str, Any], given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given is not None:
        if given not in row:
            raise TaskError(f"math/hf-v1: no column {given!r} ({what}); columns: {sorted(row)}")
        return given
    for name in candidates:
        if name in row:
            return name
    raise TaskError(
        f"math/hf-v1: no {what} column among {list(candidates)}; pass {what}=NAME "
        f"(columns: {sorted(row)})"
    )


def load_items(
    dataset: str,
    *,
    split: Split,
    config: str | None = None,
    hf_split: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_format: str = "auto",
    id_field: str | None = None,
    level_field: str | None = None,
    cache_dir: str | None = None,
) -> tuple[tuple[Item, ...], str]:
    """The items one ``math/hf-v1`` request reads, cached per process; see the module docstring.

    Raises:
        TaskError: unreadable data, missing columns, or a row without a readable answer.
    """
    if answer_format not in ANSWER_FORMATS:
        raise TaskError(
            f"math/hf-v1: answer_format must be one of {', '.join(ANSWER_FORMATS)}, "
            f"got {answer_format!r}"
        )
    key = (dataset, split, config, hf_split, question_field, answer_field, answer_format,
           id_field, level_field, cache_dir, _stamp(dataset))  # fmt: skip
    if key in _CACHE:
        return _CACHE[key]
    rows, pooled, name = _load_rows(dataset, config, hf_split, split, cache_dir)
    if not rows:
        raise TaskError(f"math/hf-v1: {name} has no rows")
    q_col = _field(rows[0], question_field, QUESTION_FIELDS, "question_field")
    a_col = _field(rows[0], answer_field, ANSWER_FIELDS, "answer_field")
    id_col = _field(rows[0], id_field, ID_FIELDS, "id_field") if id_field else None
    if id_col is None:
        id_col = next((c for c in ID_FIELDS if c in rows[0]), None)
    lv_col = level_field or ("level" if "level" in rows[0] else None)
    if lv_col is not None:
        _field(rows[0], lv_col, (), "level_field")
    items = []
    for index, row in enumerate(rows):
        try:
            question = require_text(row.get(q_col), f"{q_col!r}")
            answer = gold_from(row.get(a_col), answer_format)
            # Without an id column, the question text is the id: stable under reordering, so
            # hash splits never move an item when the file is shuffled or extended.
            item_id = (
                require_text(row.get(id_col), f"{id_col!r}")
                if id_col
                else f"q-{derive_seed('question', question):016x}"
            )
        except ValueError as exc:
            raise TaskError(f"math/hf-v1: {name} row {index}: {exc}") from None
        level = parse_level(row.get(lv_col)) if lv_col else None
        items.append(Item(item_id, question, answer, None if pooled else split, level))
    result = (tuple(items), name)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = result
    return result


def _stamp(dataset: str) -> tuple[Any, ...]:
    """Modification stamp of a local path, so edited files are re-read (hub names: none)."""
    path = Path(dataset).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return ()
    if path.is_dir():
        return tuple(
            (str(f), f.stat().st_mtime_ns, f.stat().st_size)
            for f in sorted(path.rglob("*"))
            if f.suffix.lower() in BUILDERS
        )
    return (stat.st_mtime_ns, stat.st_size)


@register_task("math/hf-v1", help="GSM8K/MATH-style data via HF datasets: dataset=... (required).")
@register_task("math/hf", help="Alias of the latest math/hf version (v1).")
class HFTask(DataTask):
    """One question of a Hugging Face (or local parquet/JSONL/CSV) data set; seed = row index.

    Args:
        seed: index of the item within the split (and level).
        split: "train" or "test".
        difficulty: keep only rows whose level is this (MATH's "Level 3" is 3; None: all).
        dataset: hub name (``openai/gsm8k``) or local file, glob or directory (required).
        config: hub config name (``main`` for GSM8K).
        hf_split: read this split as one pool (None: the split named like ``split``).
        question_field: question column (None: question, problem, query or prompt).
        answer_field: answer column (None: answer, solution or final_answer).
        answer_format: "auto", "gsm8k", "boxed" or "plain" (see :func:`gold_from`).
        id_field: id column (None: id, unique_id or idx if present, else the question text).
        level_field: difficulty column (None: ``level`` if present).
        cache_dir: where ``datasets`` keeps its cache (None: its default).
        train_fraction: share of pooled rows that go to train, by a stable hash of the id.
        budget_s: default time budget per question.
    """

    task_id = "math/hf-v1"
    requires_extra = "data"  # read through HF datasets, local files too
    # A local file, glob or directory, or a hub name the server would download; and its cache.
    path_options: ClassVar[frozenset[str]] = frozenset({"dataset", "cache_dir"})

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        *,
        dataset: str | Path | None = None,
        config: str | None = None,
        hf_split: str | None = None,
        question_field: str | None = None,
        answer_field: str | None = None,
        answer_format: AnswerFormat = "auto",
        id_field: str | None = None,
        level_field: str | None = None,
        cache_dir: str | None = None,
        train_fraction: float = 0.0,
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        if dataset is None or not str(dataset).strip():
            raise TaskError(
                "math/hf-v1 needs dataset=: a hub name (dataset=openai/gsm8k config=main) or a "
                "local file (dataset=/data/gsm8k-test.parquet); with `timely run`, "
                "task_options.dataset=..."
            )
        pools_hub_splits = (
            hf_split is None
            and isinstance(train_fraction, int | float)
            and train_fraction > 0
            and local_files(str(dataset)) is None
        )
        if pools_hub_splits:
            raise TaskError(
                "math/hf-v1: train_fraction splits one pool of rows; with a hub data set, pass "
                "hf_split=NAME too (without it, train and test read the hub's own splits)"
            )
        self._options = {
            "dataset": str(dataset),
            "config": config,
            "hf_split": hf_split,
            "question_field": question_field,
            "answer_field": answer_field,
            "answer_format": answer_format,
            "id_field": id_field,
            "level_field": level_field,
            "cache_dir": cache_dir,
        }
        super().__init__(seed, split, difficulty, train_fraction=train_fraction, budget_s=budget_s)

    def load(self, split: Split) -> tuple[tuple[Item, ...], str]:
        """The rows ``split`` reads (items of one split, or one pool)."""
        return load_items(split=split, **self._options)
