"""Cold-start SFT: next-token loss on the assistant tokens of the cold-start data, LoRA by default.

A small loop that reads top to bottom (nanoGPT style) rather than TRL's ``SFTTrainer``. Read in
trl 1.16's source: ``assistant_only_loss=True`` needs ``{% generation %}`` markers, which
SmolLM2's ChatML template lacks, and ``get_training_chat_template`` raises for a template it
does not know; worse, TRL would render ``messages`` with the model's own template, which
ignores ``tools=`` and renders tool results as ``tool`` turns - not the prompts our renderer
(:mod:`timely.prompting`) gives the policy. TRL does accept pre-tokenised rows: with an
``input_ids`` column it skips tokenisation and builds ``labels`` (-100 where an
``assistant_masks`` or ``completion_mask`` column is 0), so our ids and masks would train
correctly there. What decided it: trl is only a dev/train extra, not a core dependency; its
checkpoints are the HF Trainer's (not :mod:`timely.train.checkpoint`, which the RL trainer
shares), and metrics, rich progress and the data order as a function of (seed, epoch) would
each need a callback or an override. The loop below is about 250 lines with all of that, and
computes the head's logits only at loss positions (a 49k-entry vocabulary makes full logits the
largest tensor of a step).

One optimizer step: ``batch_size`` sequences as ``batch_size / micro_batch_size`` right-padded
micro-batches (labels -100 outside the loss mask; the batch sorted by length first, so math rows
of ~700 tokens are not padded to a 2k-token game), loss = summed token cross-entropy / loss
tokens of the whole batch (so accumulation equals one big batch; with ``decision_weight`` or
``stop_weight`` a weighted sum over the summed weights), clip, AdamW, linear warmup
then cosine decay to 0. The data order is a fixed permutation per (seed, epoch), so a run
resumed from a checkpoint (step, trainable weights, optimizer, scheduler, RNG) continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import resource
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from timely.clock import wall_seconds
from timely.config import dump_yaml
from timely.errors import ConfigError, TrainingDataError
from timely.rng import make_rng
from timely.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from timely.train.config import SFTConfig

METRICS = "metrics.jsonl"
SUMMARY = "sft.json"  # written last: a finished run


@dataclass(frozen=True)
class Examples:
    """The training rows that fit: token ids and loss masks, and what was dropped."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    dropped_long: int
    dropped_empty: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for ids, mask in zip(self.input_ids, self.loss_mask, strict=True):
            h.update(np.asarray(ids, dtype=np.int32).tobytes())
            h.update(np.asarray(mask, dtype=np.int8).tobytes())
        return h.hexdigest()[:16]


def load_examples(dataset_path: str | Path, max_length: int, early_copies: int = 1) -> Examples:
    """Rows of a cold-start dataset (a directory of shards or one parquet file); rows longer
    than ``max_length`` are dropped, not cut (a cut episode would teach answers without their
    context), and so are rows without loss tokens. Rows whose expert answered early appear
    ``early_copies`` times (datasets without the ``early`` column have none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(dataset_path)
    files = sorted(path.glob("train-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise TrainingDataError(f"{path} holds no train-*.parquet shards")
    wanted = ["input_ids", "loss_mask"]
    if all("early" in pq.read_schema(f).names for f in files):
        wanted.append("early")
    table = pa.concat_tables([pq.read_table(f, columns=wanted) for f in files])
    ids_col, mask_col = table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()
    early_col = (
        table.column("early").to_pylist()
        if "early" in table.column_names
        else [False] * len(ids_col)
    )
    keep_ids, keep_mask, long, empty = [], [], 0, 0
    for ids, mask, early in zip(ids_col, mask_col, early_col, strict=True):
        if len(ids) > max_length:
            long += 1
        elif not any(mask):
            empty += 1
        else:
            copies = early_copies if early else 1
            keep_ids.extend([ids] * copies)
            keep_mask.extend([mask] * copies)
    if not keep_ids:
        raise TrainingDataError(
            f"no row of {path} fits sft.max_length={max_length} ({long} longer, {empty} "
            "without loss tokens); raise sft.max_length or shorten the episodes"
        )
    return Examples(keep_ids, keep_mask, long, empty)


def batch_indices(seed: int, n: int, step: int, batch_size: int) -> list[int]:
    """Rows of optimizer step ``step``: positions ``step*B .. step*B+B-1`` of the stream that
    walks one permutation per epoch, each a function of (seed, epoch) alone."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        out.append(int(_permutation(seed, epoch, n)[i]))
    return out


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _perm_cache:
        _perm_cache.clear()  # one epoch at a time (two at an epoch boundary)
        _perm_cache[key] = make_rng("sft-order", seed, epoch).permutation(n)
    return _perm_cache[key]


_perm_cache: dict[tuple[int, int, int], np.ndarray] = {}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def turn_start_weights(
    mask: Sequence[int], decision_weight: float, stop_weight: float | None = None
) -> list[float]:
    """Per-token loss weights: 1 on loss tokens, ``decision_weight`` on the first loss token of
    each assistant turn, ``stop_weight`` (default: ``decision_weight``) on the first token of
    the row's last turn, 0 elsewhere.

    A turn's first token is where the model chooses between another tool call ("Step ...")
    and the final answer ("Answer: ..."): one token among hundreds of predictable ones, so under
    a plain token mean the choice hardly moves the loss. And an episode stops once but
    continues at every other turn, so the stop is the rare side of that choice. (A per-turn row,
    made where an episode's turns do not extend each other, has one turn: it gets the stop
    weight whatever that turn does.)
    """
    stop = decision_weight if stop_weight is None else stop_weight
    starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
    weights = [float(bool(m)) for m in mask]
    for i in starts:
        weights[i] = decision_weight
    if starts:
        weights[starts[-1]] = stop
    return weights


def collate(
    ids: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    pad_id: int,
    weights: Sequence[Sequence[float]] | None = None,
) -> Any:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 outside the mask) and
    per-token loss ``weights`` (each row's :func:`turn_start_weights`; default the mask itself,
    the plain mean; 0 on padding)."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    loss_weights = torch.zeros((len(ids), width), dtype=torch.float32)
    for row, (x, m) in enumerate(zip(ids, masks, strict=True)):
        t = torch.tensor(x, dtype=torch.long)
        input_ids[row, : len(x)] = t
        attention[row, : len(x)] = 1
        labels[row, : len(x)] = torch.where(torch.tensor(m, dtype=torch.bool), t, -100)
        w = m if weights is None else weights[row]
        loss_weights[row, : len(x)] = torch.tensor(w, dtype=torch.float32)
    return input_ids, attention, labels, loss_weights


def summed_loss(
    model: Any, input_ids: Any, attention: Any, labels: Any, weights: Any = None
) -> Any:
    """Sum of the token cross-entropies at label positions (``labels[t]`` predicted from
    position ``t - 1``), each times its ``weights[t]`` when given; the head runs only there."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
    targets = labels[:, 1:]
    where = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][where])
    if weights is None:
        return F.cross_entropy(logits.float(), targets[where], reduction="sum")
    token_loss = F.cross_entropy(logits.float(), targets[where], reduction="none")
    return (token_loss * weights[:, 1:][where]).sum()


def use_bf16(precision: str) -> bool:
    """Whether to autocast to bf16: asked for, or ``auto`` on a CPU with native bf16."""
    if precision != "auto":
        return precision == "bf16"
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def prepare_model(config: SFTConfig) -> tuple[Any, Any]:
    """A trainable copy of the base model (the shared, cached one stays untouched): LoRA
    adapters initialised from ``config.seed``, or every weight for full fine-tuning."""
    import torch

    from timely.policies.hf_models import load_model

    base, tokenizer = load_model(config.model)
    model = copy.deepcopy(base)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(config.seed)
    if config.lora is None:
        model.requires_grad_(True)
    else:
        from peft import get_peft_model

        lora = config.lora
        settings = lora.peft_config()
        model = get_peft_model(model, settings)
    model.train()
    return model, tokenizer


def run_sft(
    config: SFTConfig,
    dataset_path: str | Path,
    run_dir: str | Path,
    *,
    threads: int = 2,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train, or continue training, the SFT stage in ``run_dir``; return the output directory.

    Calling it again on the same ``run_dir`` resumes from the latest checkpoint (and returns at
    once when the run is finished).

    Args:
        config: the SFT config.
        dataset_path: a cold-start dataset directory (or one parquet file).
        run_dir: where checkpoints, ``metrics.jsonl``, ``loss.png`` and the output go.
        threads: torch CPU threads while training.
        max_steps: stop after this many optimizer steps in all (with a checkpoint), keeping the
            full run's schedule and data order, so a later call continues it; None: finish.
        progress: show a rich progress bar.

    Returns:
        ``run_dir/adapter`` (peft ``save_pretrained``; the base model's name is its
        ``base_model_name_or_path``) or, for full fine-tuning, ``run_dir/model``.
    """
    import torch

    if config.batch_size % config.micro_batch_size:
        raise ConfigError("sft.batch_size must be a multiple of sft.micro_batch_size")
    run = Path(run_dir)
    output = run / ("adapter" if config.lora is not None else "model")
    examples = load_examples(dataset_path, config.max_length, config.early_copies)
    total = max(1, math.ceil(config.epochs * len(examples) / config.batch_size))
    if _finished(run, total, output):
        return output
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    with _torch_threads(threads):
        model, tokenizer = prepare_model(config)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, config.warmup_steps)
        )
        start = 0
        ckpt_path = latest_checkpoint(run)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler)
            if ckpt.extra.get("data") != examples.fingerprint():
                raise TrainingDataError(
                    f"{run} was trained on other data than {dataset_path}; use a new run_dir"
                )
            start = ckpt.step
        _truncate_metrics(run / METRICS, start)
        stop = total if max_steps is None else min(total, max_steps)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        extra = {"data": examples.fingerprint(), "total_steps": total}
        with _bar(progress, total, start) as advance:
            for step in range(start, stop):
                record = _train_step(model, optimizer, params, examples, config, step, pad)
                scheduler.step()
                record["epoch"] = round((step + 1) * config.batch_size / len(examples), 3)
                with (run / METRICS).open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                done = step + 1
                if done % config.save_every == 0 or done == stop:
                    save_checkpoint(
                        run,
                        done,
                        model=model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        extra=extra,
                    )
                advance(record)
        plot_loss(run / METRICS, run / "loss.png")
        if stop < total:
            return output
        _save_output(model, tokenizer, config, output)
    summary = {
        "steps": total,
        "examples": len(examples),
        "dropped_long": examples.dropped_long,
        "dropped_no_loss": examples.dropped_empty,
        "data": examples.fingerprint(),
        "output": output.name,
        "peak_rss_mb": peak_rss_mb(),
    }
    (run / SUMMARY).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return output


def _train_step(
    model: Any,
    optimizer: Any,
    params: list[Any],
    examples: Examples,
    config: SFTConfig,
    step: int,
    pad: int,
) -> dict[str, Any]:
    import torch

    started = wall_seconds()
    # Micro-batches of similar lengths pad less; the step's loss is the same either way.
    rows = sorted(
        batch_indices(config.seed, len(examples), step, config.batch_size),
        key=lambda i: len(examples.input_ids[i]),
    )
    loss_tokens = sum(sum(examples.loss_mask[i]) for i in rows)
    # The loss is a weighted token mean: with both weights 1 the plain mean over loss tokens.
    row_weights = {
        i: turn_start_weights(examples.loss_mask[i], config.decision_weight, config.stop_weight)
        for i in rows
    }
    loss_weight = sum(sum(w) for w in row_weights.values())
    total_loss, tokens = 0.0, 0
    for k in range(0, len(rows), config.micro_batch_size):
        part = rows[k : k + config.micro_batch_size]
        ids, attention, labels, weights = collate(
            [examples.input_ids[i] for i in part],
            [examples.loss_mask[i] for i in part],
            pad,
            [row_weights[i] for i in part],
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(config.precision)):
            loss = summed_loss(model, ids, attention, labels, weights) / loss_weight
        loss.backward()
        total_loss += float(loss.detach())
        tokens += int(attention.sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "step": step + 1,
        "loss": total_loss,
        "lr": lr,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "grad_norm": float(grad_norm),
        "seconds": round(wall_seconds() - started, 3),
        "rss_mb": peak_rss_mb(),
    }


def _save_output(model: Any, tokenizer: Any, config: SFTConfig, output: Path) -> None:
    """Write the adapter (or the full model and its tokenizer) atomically."""
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if config.lora is not None:
        # The run dir must not record where this machine keeps the base model: name it instead.
        model.peft_config["default"].base_model_name_or_path = config.model
        # save_embedding_layers=False: peft would otherwise look the base up on the hub.
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        from timely.policies.hf_models import write_adapter_hashes

        write_adapter_hashes(tmp)  # loading the adapter checks its weights against these
    else:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    meta = {"base_model": config.model, "lora": config.lora is not None}
    (tmp / "timely-sft.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)


def plot_loss(metrics: str | Path, png: str | Path) -> Path | None:
    """Loss (and learning rate) per step from ``metrics.jsonl`` as a PNG (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(metrics)
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="C0")
    ax.set(xlabel="optimizer step", ylabel="loss (assistant tokens)", title="cold-start SFT")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in records], [r["lr"] for r in records], color="C1", alpha=0.5)
    lr_ax.set_ylabel("learning rate", color="C1")
    fig.tight_layout()
    fig.savefig(str(png), dpi=100)
    return Path(png)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _finished(run: Path, total: int, output: Path) -> bool:
    try:
        summary = json.loads((run / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return summary.get("steps") == total and output.is_dir()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics after the checkpoint a run resumes from (a kill can leave a few)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, path)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _bar(enabled: bool, total: int, start: int) -> Iterator[Any]:
    from timely.progress import ProgressDisplay

    with ProgressDisplay(enabled=enabled) as display:
        bar = display.bar("SFT", total, done=start, unit="steps")

        def advance(r: dict[str, Any]) -> None:
            text = f"loss {r['loss']:.3f} · lr {r['lr']:.1e} · {r['seconds']:.1f} s/step"
            bar.advance(note=text)

        yield advance
