"""The trainable policy of Timely-RL: a LoRA adapter (peft) on a private copy of the base model.

RL starts from the SFT stage's adapter or from a fresh one; the KL reference is the initial
policy, i.e. a frozen copy of the init adapter (loaded a second time under the name ``ref``) or
the base model with the adapter disabled. The trained adapter is saved with
``save_pretrained``, without the reference.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from timely.errors import ConfigError
from timely.policies.hf_models import verify_adapter, write_adapter_hashes
from timely.rng import derive_seed
from timely.train.config import LoraSettings


def load_trainable(
    base_model: str, init: str | None, lora: LoraSettings, *, seed: int
) -> tuple[Any, Any]:
    """``(peft model, tokenizer)``: ``init``'s adapter (trainable, plus a frozen copy named
    ``ref`` for the KL reference) or a fresh LoRA adapter seeded by ``seed``.

    The base model is a private copy: the process-wide one that :func:`load_model` shares stays
    untouched (peft injects its layers in place).
    """
    from peft import PeftModel, get_peft_model

    from timely.policies.hf_models import load_model

    shared, tokenizer = load_model(base_model)
    base = copy.deepcopy(shared)
    if init is None:
        settings = lora.peft_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            model = get_peft_model(base, settings)
    else:
        check_adapter_dir(init)
        model = PeftModel.from_pretrained(base, init, is_trainable=True)
        model.load_adapter(init, adapter_name="ref", is_trainable=False)
        model.set_adapter("default")
    return model, tokenizer


def check_adapter_dir(init: str | None) -> None:
    """Raise unless ``init`` is None or a peft adapter directory whose files match their
    recorded sha256 (where recorded: see :func:`timely.policies.hf_models.verify_adapter`).

    Raises:
        ConfigError: not an adapter directory.
        PolicyError: a file does not match its recorded hash.
    """
    if init is None:
        return
    if not (Path(init) / "adapter_config.json").is_file():
        raise ConfigError(
            f"init={init!r} is not a peft adapter directory (no adapter_config.json); pass the "
            "SFT stage's adapter, or a full model directory as base_model with init=None"
        )
    verify_adapter(init, required=False)


@contextlib.contextmanager
def reference_policy(model: Any) -> Iterator[None]:
    """Run the initial policy inside: the frozen ``ref`` adapter, or the base model."""
    if "ref" in model.peft_config:
        model.set_adapter("ref", inference_mode=True)
        try:
            yield
        finally:
            model.set_adapter("default")
    else:
        with model.disable_adapter():
            yield


def save_adapter(model: Any, target: Path, base_model: str) -> Path:
    """Save the trained adapter (not the reference) to ``target`` atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.peft_config["default"].base_model_name_or_path = base_model
    # save_embedding_layers=False: peft would otherwise look the base up on the hub.
    model.save_pretrained(str(tmp), selected_adapters=["default"], save_embedding_layers=False)
    write_adapter_hashes(tmp)  # the run records what it trained; loading checks it
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
