"""Atomic checkpoints, so a killed training run resumes exactly where it stopped.

A checkpoint is a directory ``checkpoints/step-000040/`` holding ``state.pt``: the trainable
parameters (the LoRA adapter, or every weight for full fine-tuning), the optimizer and scheduler
states, the RNG states (torch, and the numpy Generators the trainer passes in ``rngs``), the
step count and whatever else the trainer needs to continue its data order (``extra``). It is
written to a temporary directory and renamed into place, then ``checkpoints/latest`` is
replaced the same way, so a kill at any moment leaves either the old or the new checkpoint,
never half of one. Resuming restores all of it, so an interrupted run and an uninterrupted one
produce the same metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
LATEST = "latest"


@dataclass
class Checkpoint:
    """What a checkpoint restores."""

    step: int
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (the adapter under LoRA), detached copies on CPU."""
    return {
        name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad
    }


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    rngs: dict[str, np.random.Generator] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it.

    Args:
        run_dir: the stage's run directory (checkpoints go in ``run_dir/checkpoints``).
        step: the number of optimizer batches done.
        model: the model being trained (only trainable parameters are stored).
        optimizer: its optimizer.
        scheduler: its LR scheduler, if any.
        rngs: numpy Generators whose states must continue (data order, budgets).
        extra: JSON-serialisable trainer state (e.g. the data cursor).
        keep: how many checkpoints to keep (older ones are removed).

    Returns:
        The checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    state = {
        "step": step,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "numpy_rngs": {k: g.bit_generator.state for k, g in (rngs or {}).items()},
        "extra": extra or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        torch.save(state, tmp / STATE_FILE)
        (tmp / "meta.json").write_text(json.dumps({"step": step, **(extra or {})}, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(root / LATEST, final.name)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``latest`` points at, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rngs: dict[str, np.random.Generator] | None = None,
) -> Checkpoint:
    """Restore a checkpoint into the given objects (in place) and return its step and extra.

    Raises:
        ValueError: the checkpoint's parameters do not match the model's trainable ones (a
            different model, or LoRA settings that changed).
    """
    path = Path(path)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    stored = state["model"]
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(stored) != trainable:
        missing, unexpected = sorted(trainable - set(stored)), sorted(set(stored) - trainable)
        raise ValueError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); resume with the config the run was started with"
        )
    with torch.no_grad():
        for name, tensor in stored.items():
            params[name].copy_(tensor)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    for key, generator in (rngs or {}).items():
        if key in state["numpy_rngs"]:
            generator.bit_generator.state = state["numpy_rngs"][key]
    return Checkpoint(step=int(state["step"]), path=path, extra=dict(state["extra"]))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
