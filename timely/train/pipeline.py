"""The training chain ``timely-rl`` runs: cold-start data -> SFT -> Timely-RL -> held-out eval.

Each stage writes its own run directory under ``TrainConfig.out`` (``data/``, ``sft/``, ``rl/``,
``eval/``) with the resolved config, package versions and seeds, and is resumable: a stage whose
output exists is skipped, a stage that was killed continues from its last checkpoint. The SFT
adapter feeds RL; the final eval plays the base model and every trained adapter on the tasks'
test split at relative budgets (the reference protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from timely.extras import require_extra
from timely.registry import load_object
from timely.runrecord import write_run_record
from timely.train.config import TrainConfig

# The held-out eval uses Timely-Eval's runner, which sits above the core: resolved lazily.
EVAL_ENTRY = "timely_eval.training:evaluate_policies"

console = Console(stderr=True)


def stage_dirs(config: TrainConfig) -> dict[str, Path]:
    root = Path(config.out)
    return {name: root / name for name in ("data", "sft", "rl", "rl-notime", "eval")}


def run_chain(config: TrainConfig) -> dict[str, Path]:
    """Run the stages ``config.stage`` names and return their output paths.

    ``stage=all`` runs data, sft, rl, the no-time-reward ablation (``ablation=true``) and the
    eval in order; ``stage=rl`` starts RL from ``config.init`` or the SFT adapter under
    ``out/sft`` if there is one.

    Raises:
        MissingExtra: the [train] extra (torch, transformers, peft, datasets) is not installed;
            checked before any stage starts.
    """
    require_extra("train", "timely-rl training")
    import torch

    torch.set_num_threads(config.threads)
    dirs = stage_dirs(config)
    done: dict[str, Path] = {}
    if config.stage == "all":
        wanted = ["data", "sft", "rl", *(["ablation"] if config.ablation else []), "eval"]
    else:
        wanted = [config.stage]
    for name in wanted:
        console.rule(f"[bold]timely-rl · {name}")
        done[name] = _STAGES[name](config, dirs, done)
        console.print(f"[green]{name}[/green] → {done[name]}")
    return done


def _data(config: TrainConfig, dirs: dict[str, Path], done: dict[str, Path]) -> Path:
    from timely.train.data import build_dataset

    out = dirs["data"]
    write_run_record(out, config.data, seeds=[config.data.seed], extra={"stage": "data"})
    return build_dataset(config.data, out, model=config.sft.model)


def _sft(config: TrainConfig, dirs: dict[str, Path], done: dict[str, Path]) -> Path:
    from timely.train.data import dataset_path
    from timely.train.sft import run_sft

    out = dirs["sft"]
    data = done.get("data") or dataset_path(dirs["data"])
    write_run_record(out, config.sft, seeds=[config.sft.seed], extra={"stage": "sft"})
    return run_sft(config.sft, data, out, threads=config.threads)


def _rl(config: TrainConfig, dirs: dict[str, Path], done: dict[str, Path]) -> Path:
    return _run_rl(config, dirs, done, config.rl, dirs["rl"])


def _ablation(config: TrainConfig, dirs: dict[str, Path], done: dict[str, Path]) -> Path:
    """The paper's ablation: the same RL with plain correctness, no time in the reward."""
    rl = config.rl.model_copy(update={"time_reward": False})
    return _run_rl(config, dirs, done, rl, dirs["rl-notime"])


def _run_rl(config: TrainConfig, dirs, done, rl: Any, out: Path) -> Path:
    from timely.train.grpo import run_rl

    init = config.init or _existing(done.get("sft") or dirs["sft"] / "adapter")
    write_run_record(out, rl, seeds=[rl.seed], extra={"stage": out.name, "init": str(init)})
    return run_rl(
        rl, out, init=str(init) if init else None, base_model=config.sft.model,
        threads=config.threads,
    )  # fmt: skip


def _eval(config: TrainConfig, dirs: dict[str, Path], done: dict[str, Path]) -> Path:
    """Base model and every adapter found under ``out/`` on held-out test seeds."""
    spec = f"hf:{config.sft.model}"
    decoding = {"precision": config.eval.precision, "max_new_tokens": config.eval.max_new_tokens}
    policies: dict[str, dict[str, Any]] = {"base": {"spec": spec, **decoding}}
    root = Path(config.out)
    for label in ("sft", "rl", "rl-notime"):
        adapter = root / label / "adapter"
        if (adapter / "adapter_config.json").is_file():
            policies[label] = {"spec": spec, "adapter": str(adapter), **decoding}
    evaluate: Callable[..., Path] = load_object(EVAL_ENTRY)
    return evaluate(policies, config.eval, dirs["eval"], speed=config.rl.speed)


def _existing(path: Path) -> Path | None:
    return path if (path / "adapter_config.json").is_file() else None


_STAGES: dict[str, Callable[[TrainConfig, dict[str, Path], dict[str, Path]], Path]] = {
    "data": _data,
    "sft": _sft,
    "rl": _rl,
    "ablation": _ablation,
    "eval": _eval,
}
