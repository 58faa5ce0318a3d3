"""Shipping a trained adapter inside the package, so ``hf:smollm2-135m-timely`` needs no training.

The adapter is stored in float16 (half the size; LoRA updates lose nothing that matters at this
scale) under ``timely/adapters/NAME/`` with peft's ``adapter_config.json`` and a short card
saying where it came from, and ``SHA256SUMS`` (the sha256 of the weights and config) which
loading checks, so a truncated or edited file is refused instead of evaluated under the name.
:func:`timely.policies.hf_models.load_model` merges it into a copy of
the embedded base model when the policy is built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from timely.policies.hf_models import _ADAPTER_ROOT, verify_adapter, write_adapter_hashes


def ship_adapter(adapter_dir: str | Path, name: str, *, root: Path | None = None) -> Path:
    """Copy ``adapter_dir`` (a peft adapter) to ``timely/adapters/NAME`` in float16.

    Raises:
        FileNotFoundError: ``adapter_dir`` holds no peft adapter.
        PolicyError: its files do not match the sha256 its run recorded.
    """
    from safetensors.torch import load_file, save_file

    src = Path(adapter_dir)
    weights = src / "adapter_model.safetensors"
    if not (src / "adapter_config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{src} holds no peft adapter (adapter_config.json + adapter_model.safetensors); "
            "train one first: timely-rl --config smollm2_cpu"
        )
    verify_adapter(src, required=False)  # never ship a run's adapter that no longer matches
    dest = (root or _ADAPTER_ROOT) / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.half().contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(src / "adapter_config.json", tmp / "adapter_config.json")
    # The sha256 of what ships, checked whenever the adapter is loaded by name.
    hashes = write_adapter_hashes(tmp)
    # The run-relative name only: an absolute path would record the training machine's layout.
    source = f"{src.parent.name}/{src.name}"
    provenance = {"source": source, "tensors": len(tensors), "dtype": "float16"}
    # The run's resolved config, manifest (versions, seed) and per-batch metrics ship with it.
    for record in ("manifest.json", "config.yaml", "metrics.jsonl"):
        path = src.parent / record
        if path.is_file():
            shutil.copyfile(path, tmp / f"training-{record}")
    (tmp / "README.md").write_text(
        f"# {name}\n\nA LoRA adapter for the embedded SmolLM2-135M-Instruct, trained with "
        f"`timely-rl` ({_how_trained(src.parent / 'config.yaml')}). Use it as policy "
        f"`hf:{name}`. The training run's config, manifest and per-batch metrics are in "
        "`training-*`; docs/results.md has its evaluation. "
        f"`{hashes.name}` holds the sha256 of the weights and config; loading checks it.\n\n"
        f"```json\n{json.dumps(provenance, indent=1)}\n```\n"
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _how_trained(config: Path) -> str:
    """One phrase for the card: which stage made the adapter, read from its run config."""
    import yaml

    data = yaml.safe_load(config.read_text()) if config.is_file() else None
    if not isinstance(data, dict) or "time_reward" not in data:
        return "cold-start SFT on time-aware expert trajectories"
    if data["time_reward"]:
        return (
            "cold-start SFT on time-aware expert trajectories, then Timely-RL with the "
            "budget-aware reward"
        )
    return (
        "cold-start SFT on time-aware expert trajectories, then the same RL with plain "
        "correctness as the reward and no time in it: the paper's ablation"
    )
