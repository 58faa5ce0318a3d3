"""Cold-start SFT data: budget-aware experts played through the one loop, tokenised exactly as
the local policy would have seen the same conversation.

:func:`build_dataset` plays the scripted expert (:func:`timely.train.experts.play_experts`) over
the train split of each task, one drawn setting per episode
(:func:`timely.train.episodes.draw_setting`: latency, time-status mode, a budget of 0.5x-3x the
expert's unconstrained time, or no limit), keeps the answered on-time episodes - early answers
with a partial result and cut-off episodes replayed into answers in time included - and turns
each into one training example. There is no second loop: the expert records text only, so
:func:`with_token_records` fills a copy's per-step token records the way
:class:`~timely.policies.hf.HFPolicy` would have recorded them - turn ``k``'s prompt ids are
:func:`~timely.prompting.prompt_token_ids` of the messages before it, its "sampled" ids the
tokenisation of :func:`~timely.prompting.assistant_text` plus the template's end-of-turn token -
and :func:`timely.train.view.training_view` derives the masked sequence from them, as it does
for the model's own rollouts (:func:`add_rejection_samples`). The ids of an expert example
decode to exactly ``render_prompt(messages, add_generation_prompt=False)``; the loss mask covers
the assistant contents, tool-call blocks and their ``<|im_end|>``.

A dataset directory holds ``train-*.parquet`` shards (one per source, same schema; the
``messages`` and ``tools`` columns let anyone re-tokenise for another model), the played
trajectories (``trajectories.jsonl``), ``config.yaml``, ``build.json`` and a card
(``README.md``, :mod:`timely.train.datacard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from timely.clock import wall_seconds
from timely.config import config_hash, dump_yaml
from timely.errors import TrainingDataError
from timely.policies.hf_models import EMBEDDED_MODEL
from timely.prompting import ToolFormat, assistant_text, prompt_token_ids, resolve_tool_format
from timely.rng import make_rng
from timely.rollout import NO_LIMIT_S
from timely.runrecord import CONFIG, TRAJECTORIES, append_trajectories, read_run
from timely.train.config import DataConfig
from timely.train.experts import clock_reads, play_experts
from timely.train.view import ViewForm, training_view
from timely.types import EndReason, Message, Trajectory

EXPERT_SHARD = "train-experts.parquet"
BUILD_FILE = "build.json"  # written last: its presence marks a complete build


# -- tokenisation ----------------------------------------------------------------------------
def load_tokenizer(model: str = EMBEDDED_MODEL) -> Any:
    """The tokenizer of ``model`` alone, without loading weights where a copy is on disk.

    The embedded model's converted copy (written by its first load) holds the tokenizer files;
    without it this falls back to :func:`~timely.policies.hf_models.load_model`.
    """
    from transformers import AutoTokenizer

    from timely.policies.hf_models import cache_root, load_model

    if model == EMBEDDED_MODEL:
        cached = cache_root() / "models" / EMBEDDED_MODEL
        if (cached / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(cached))
        return load_model(model)[1]
    if (Path(model).expanduser() / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(Path(model).expanduser()))
    return load_model(model)[1]


def end_of_turn_id(tokenizer: Any) -> int:
    """The id that ends an assistant turn: ChatML's ``<|im_end|>``, else the EOS token."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        return im_end
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token")
    return int(tokenizer.eos_token_id)


def with_token_records(
    trajectory: Trajectory, tokenizer: Any, *, tool_format: ToolFormat = "auto"
) -> Trajectory:
    """A copy of a text-only trajectory with the token records a local policy would have made.

    Step ``k`` gets the prompt ids of the messages before the ``k``-th assistant message, the ids
    of its :func:`~timely.prompting.assistant_text` followed by the end-of-turn id as its sampled
    ids, and 0.0 log-probs (the expert sampled nothing; SFT reads no log-probs). A trailing step
    without a message (cut at the deadline) samples nothing.
    """
    fmt = resolve_tool_format(tokenizer, tool_format)
    end = end_of_turn_id(tokenizer)
    filled = trajectory.model_copy(deep=True)
    positions = [i for i, m in enumerate(filled.messages) if m.role == "assistant"]
    for k, step in enumerate(filled.steps):
        if k >= len(positions):
            step.prompt_token_ids, step.token_ids, step.logprobs = None, [], []
            continue
        message = filled.messages[positions[k]]
        step.prompt_token_ids = prompt_token_ids(
            tokenizer, filled.messages[: positions[k]], filled.tools, tool_format=fmt
        )
        text = assistant_text(message.content, message.tool_calls)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [end]
        step.token_ids, step.logprobs = ids, [0.0] * len(ids)
    return filled


def trajectory_rows(
    trajectory: Trajectory,
    tokenizer: Any = None,
    *,
    source: str = "expert",
    tool_format: ToolFormat = "auto",
) -> list[dict[str, Any]]:
    """Dataset rows of one trajectory: one whole-episode row, or one row per turn where the
    template does not keep each turn a prefix of the next.

    Args:
        trajectory: an episode; text-only (an expert) when ``tokenizer`` is given, else it must
            carry token records (an ``hf:`` rollout).
        tokenizer: re-tokenise a text-only trajectory with it (:func:`with_token_records`) and
            end the sequence with the template's text after the last turn (mask 0), so the ids
            decode to the full rendered conversation. None: use the recorded ids as they are.
        source: ``expert`` or ``rejection``, recorded per row.
        tool_format: how tools are rendered (as the policy that would play it renders them).
    """
    filled = trajectory
    if tokenizer is not None:
        filled = with_token_records(trajectory, tokenizer, tool_format=tool_format)
    view = training_view(filled)
    meta = _row_meta(trajectory, source)
    if view.form == ViewForm.SEQUENCE:
        assert view.sequence is not None
        ids, mask = list(view.sequence.token_ids), list(view.sequence.loss_mask)
        if tokenizer is not None:
            full = prompt_token_ids(
                tokenizer,
                filled.messages,
                filled.tools,
                tool_format=tool_format,
                add_generation_prompt=False,
            )
            if full[: len(ids)] == ids:
                mask += [0] * (len(full) - len(ids))
                ids = full
        return [_row(meta, filled.messages, ids, mask, turn=None)]
    positions = [i for i, m in enumerate(filled.messages) if m.role == "assistant"]
    rows = []
    for turn in view.turns:
        upto = positions[turn.step] + 1 if turn.step < len(positions) else len(filled.messages)
        ids = turn.prompt_ids + turn.completion_ids
        mask = [0] * len(turn.prompt_ids) + [1] * len(turn.completion_ids)
        rows.append(_row(meta, filled.messages[:upto], ids, mask, turn=turn.step))
    return rows


def _row_meta(t: Trajectory, source: str) -> dict[str, Any]:
    setting = t.metadata.get("setting") or {}
    limited = t.budget_s < NO_LIMIT_S
    return {
        "task_id": t.task_id,
        "family": t.task_id.split("/")[0],
        "seed": t.seed,
        "split": t.split,
        "source": source,
        "policy": t.policy,
        "sample": t.sample,
        "tools": json.dumps(t.tools),
        "budget_s": t.budget_s if limited else None,
        "multiplier": setting.get("multiplier") if limited else None,
        "latency": t.latency or setting.get("latency"),
        "time_mode": setting.get("time_mode", None if limited else "none"),
        "end_reason": t.end_reason.value,
        "score": t.score,
        "reward": t.reward,
        "elapsed_s": t.elapsed_s,
        "n_tool_calls": t.n_tool_calls,
        "n_clock_reads": clock_reads(t.messages),
        "early": t.metadata.get("early"),
    }


def _row(
    meta: dict[str, Any], messages: Sequence[Message], ids: list[int], mask: list[int], turn: Any
) -> dict[str, Any]:
    return {
        "messages": [message_row(m) for m in messages],
        "input_ids": ids,
        "loss_mask": mask,
        "n_tokens": len(ids),
        "n_loss_tokens": int(sum(mask)),
        "turn": turn,
        **meta,
    }


def message_row(m: Message) -> dict[str, Any]:
    """One message in the OpenAI chat shape with every key present (a fixed parquet schema);
    tool-call arguments are a JSON string, as in the OpenAI API."""
    return {
        "role": m.role,
        "content": m.content,
        "tool_calls": [c.to_openai() for c in m.tool_calls] if m.tool_calls else None,
        "tool_call_id": m.tool_call_id,
        "name": m.name,
    }


# -- the dataset files -----------------------------------------------------------------------
@functools.cache
def features() -> Any:
    """The ``datasets.Features`` every shard is written with (so shards concatenate)."""
    from datasets import Features, List, Value

    call = {"id": Value("string"), "type": Value("string")}
    call["function"] = {"name": Value("string"), "arguments": Value("string")}  # type: ignore[assignment]
    message = {
        "role": Value("string"),
        "content": Value("string"),
        "tool_calls": List(call),
        "tool_call_id": Value("string"),
        "name": Value("string"),
    }
    columns: dict[str, Any] = {"messages": List(message), "tools": Value("string")}
    columns |= {"input_ids": List(Value("int32")), "loss_mask": List(Value("int8"))}
    columns |= {"n_tokens": Value("int32"), "n_loss_tokens": Value("int32"), "turn": Value("int32")}
    strings = ("task_id", "family", "split", "source", "policy", "latency", "time_mode")
    floats = ("budget_s", "multiplier", "score", "reward", "elapsed_s")
    columns |= {k: Value("string") for k in strings} | {k: Value("float64") for k in floats}
    columns |= {"seed": Value("int64"), "sample": Value("int32"), "end_reason": Value("string")}
    columns |= {"n_tool_calls": Value("int32"), "n_clock_reads": Value("int32")}
    columns |= {"early": Value("bool")}
    return Features(columns)


def write_shard(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as one parquet shard, atomically (temp file, then rename)."""
    from datasets import Dataset

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet_datasets():
        Dataset.from_list(rows, features=features()).to_parquet(str(tmp))
    os.replace(tmp, path)
    return path


def load_sft_dataset(dataset_dir: str | Path) -> Any:
    """All shards of a dataset directory as one in-memory ``datasets.Dataset`` (no cache files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    shards = sorted(Path(dataset_dir).glob("train-*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"{dataset_dir} holds no train-*.parquet shards; build it with `timely-rl stage=data`"
        )
    dataset = Dataset(pa.concat_tables([pq.read_table(p) for p in shards]))
    if dataset.features != features():  # shards written by an older schema
        with _quiet_datasets():
            dataset = dataset.cast(features())
    return dataset


# -- building --------------------------------------------------------------------------------
def build_dataset(
    config: DataConfig,
    out_dir: str | Path,
    *,
    model: str = EMBEDDED_MODEL,
    tokenizer: Any = None,
    progress: bool = True,
) -> Path:
    """Play the experts, keep what ``config.keep`` says, and write the dataset directory.

    A complete directory built with the same config and model is left as it is (returned at
    once); an incomplete one is rebuilt.

    Args:
        config: the data stage config.
        out_dir: the dataset directory.
        model: whose tokenizer (and prompt rendering) the ids are for.
        tokenizer: that tokenizer, if already loaded.
        progress: show a rich progress bar.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    stamp = {"config_hash": config_hash(config), "model": model}
    if _complete(out, stamp):
        return out
    started = wall_seconds()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
    played = asyncio.run(play_experts(config, tokenizer=tokenizer, progress=progress))
    # Cut-off expert episodes arrive already replayed into answers in time where one fits
    # (timely.train.experts.salvage): short budgets give "answer with what you have" examples
    # instead of holes. What is still unanswered or late is no behaviour to imitate.
    kept = [t for t in played if _keep(t, config.keep)]
    if not kept:
        raise TrainingDataError(
            f"data.keep={config.keep} kept none of the {len(played)} expert episodes (none "
            "answered in time, or none scored): give the budgets more room "
            "(data.budget_multipliers, data.no_limit_share) or keep more (data.keep)"
        )
    rows = [row for t in kept for row in trajectory_rows(t, tokenizer, source="expert")]
    order = make_rng("cold-start-rows", config.seed).permutation(len(rows))
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / BUILD_FILE, out / TRAJECTORIES, *out.glob("train-*.parquet")]:
        old.unlink(missing_ok=True)
    append_trajectories(out / TRAJECTORIES, played)
    write_shard(out / EXPERT_SHARD, [rows[int(i)] for i in order])
    (out / CONFIG).write_text(dump_yaml(config), encoding="utf-8")
    build = {
        **stamp,
        "tool_format": resolve_tool_format(tokenizer, "auto"),
        "played": len(played),
        "kept": len(kept),
        "early": sum(1 for t in kept if t.metadata.get("early")),
        "salvaged": sum(1 for t in kept if t.metadata.get("salvaged")),
        "rows": len(rows),
        "seconds": round(wall_seconds() - started, 1),
        "versions": _versions(),
    }
    from timely.train.datacard import write_card

    write_card(out, build)
    (out / BUILD_FILE).write_text(json.dumps(build, indent=1), encoding="utf-8")
    return out


# -- rejection sampling ----------------------------------------------------------------------
def add_rejection_samples(
    dataset_dir: str | Path, trajectories: Iterable[Trajectory], min_reward: float
) -> int:
    """Append the model's own good rollouts (after a first SFT round) to a dataset directory.

    Kept: episodes answered on time with ``reward >= min_reward``. They must carry token
    records (an ``hf:`` policy); their recorded ids are used as they are, through
    :func:`~timely.train.view.training_view` (whole episodes, or one row per turn where the
    prefix property broke). They become a new shard named by their content, so adding the same
    rollouts twice adds them once; the trajectories are appended to ``trajectories.jsonl`` and
    the card is rewritten.

    Returns:
        The number of rows added.

    Raises:
        TrainingDataError: a kept trajectory has no token records.
    """
    out = Path(dataset_dir)
    kept = [t for t in trajectories if _on_time(t) and t.reward >= min_reward]
    if not kept:
        return 0
    digest = hashlib.sha256("".join(t.to_json() for t in kept).encode()).hexdigest()[:12]
    shard = out / f"train-rejection-{digest}.parquet"
    if shard.exists():
        return 0
    rows = [row for t in kept for row in trajectory_rows(t, None, source="rejection")]
    write_shard(shard, rows)
    append_trajectories(out / TRAJECTORIES, kept)
    build = json.loads((out / BUILD_FILE).read_text()) if (out / BUILD_FILE).is_file() else {}
    from timely.train.datacard import write_card

    write_card(out, build)
    return len(rows)


def read_trajectories(dataset_dir: str | Path) -> list[Trajectory]:
    """The trajectories a dataset directory was made from (the run record's reader).

    Raises:
        ConfigError: the directory holds no trajectories file.
    """
    return read_run(dataset_dir, calibration=True)


def _on_time(t: Trajectory) -> bool:
    return t.end_reason == EndReason.ANSWERED and t.compliant


def _keep(t: Trajectory, keep: str) -> bool:
    """Whether the data keeps ``t`` under ``DataConfig.keep``."""
    if keep == "all":
        return True
    return _on_time(t) and (keep == "on_time" or (t.score or 0.0) > 0.0)


def _complete(out: Path, stamp: dict[str, Any]) -> bool:
    try:
        build = json.loads((out / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(build.get(k) == v for k, v in stamp.items()) and (out / EXPERT_SHARD).is_file()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("timely-machine", "transformers", "datasets", "tokenizers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets draws a tqdm bar for every write and cast; the stage has its own progress."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def dataset_path(data_dir: str | Path) -> Path:
    """The dataset a data stage directory holds (what :func:`timely.train.sft.run_sft` reads).

    Raises:
        TrainingDataError: the directory holds no complete build.
    """
    path = Path(data_dir)
    if not (path / EXPERT_SHARD).is_file():
        raise TrainingDataError(
            f"{path} holds no cold-start dataset ({EXPERT_SHARD}); run `timely-rl stage=data`"
        )
    return path
