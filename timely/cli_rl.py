"""The ``timely-rl`` launcher: cold-start SFT and Timely-RL on the embedded model, one command.

    timely-rl --config smollm2_cpu [stage=sft|rl|all] [key=value ...]   # a shipped config
    timely-rl --config configs/train/smollm2_cpu.yaml --dry-run rl.steps=5   # or a YAML path
    timely-rl reward --variant paper          # print the reward curve
    timely-rl ship runs/train                 # ship the RL adapter as hf:smollm2-135m-timely
    timely-rl export-gguf --adapter DIR --out model.gguf   # merged, for llamacpp:FILE
    timely-rl results runs/train              # rewrite results.md (and docs/) from the eval
    timely-rl decisions runs/train/eval/run --model smollm2-135m-timely   # P(answer) by time

The training command is the composition root of :mod:`timely.train`; it holds no logic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from timely.errors import ConfigError
from timely.extras import MissingExtra

app = typer.Typer(
    name="timely-rl",
    help="Timely-RL tools: the reward curve, shipping an adapter, the results page. Training "
    "itself is `timely-rl --config FILE [key=value ...]` (see `timely-rl --help`).",
    no_args_is_help=True,
    add_completion=False,
)

SUBCOMMANDS = ("reward", "ship", "results", "export-gguf", "decisions")

TRAIN_HELP = """\
Train a budget-aware agent: cold-start data -> SFT -> Timely-RL -> held-out eval.

Each stage writes a run directory under OUT (data/, sft/, rl/, rl-notime/, eval/) with the
resolved config, versions, seeds, checkpoints, metrics.jsonl and PNG curves; a killed run
continues where it stopped when the same command is run again.

Keys that matter (key=value overrides; dotted paths into the config):
  stage=all|data|sft|rl|ablation|eval   what to run (all: every stage in order)
  out=runs/train                        root of the stage directories
  data.tasks=[math/arithmetic-v1,...]   train-split tasks the experts play
  data.episodes_per_task=160            expert episodes per task
  data.budget_multipliers=[0.5,3.0]     budgets x the expert's unconstrained time
  sft.epochs=2  sft.lr=3e-4  sft.lora.r=8  sft.lora=null (full fine-tuning)
  rl.steps=40  rl.group_size=8  rl.prompts_per_step=2  rl.loss=grpo|dr_grpo|dapo
  rl.reward.bonus_shape=sin|linear|step  rl.time_reward=false (the ablation)
  rl.beta=0.0 (KL to the reference)  rl.updates_per_batch=2  rl.clock=virtual|wall
  eval.seeds=20  eval.budget_multipliers=[0.75,1,2]  eval.latencies=[...]
  ablation=true                         stage=all also trains RL without the time reward
Unknown keys fail with a did-you-mean. Other commands: timely-rl reward | ship | results.
"""


def train_main(argv: list[str]) -> int:
    """``timely-rl [--config FILE] [--dry-run] [--backend local] [key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="timely-rl",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="A shipped train config (smollm2_cpu, verl_smoke, verl_qwen3_1p7b, verl_qwen3_8b) "
        "or a YAML path.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the resolved config.")
    parser.add_argument(
        "--backend",
        choices=("local", "verl"),
        default=None,
        help="local: the CPU trainer here (default); verl: GRPO on verl with vLLM rollouts on "
        "GPUs (default when the config says backend: verl; see docs/scale.md).",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # options may sit between overrides
    console = Console(stderr=True)
    from timely.config import dump_yaml, load_config
    from timely.configs import resolve_config
    from timely.train.config import TrainConfig

    try:
        config_path = resolve_config("train", args.config) if args.config else None
        for item in args.overrides:
            if "=" not in item:
                raise ConfigError(
                    f"{item!r} is neither a command ({', '.join(SUBCOMMANDS)}) nor a key=value "
                    "override; see `timely-rl --help`"
                )
        backend = args.backend or _config_backend(config_path)
        if backend == "verl":
            return verl_main(config_path, args.overrides, dry_run=args.dry_run, console=console)
        config = load_config(TrainConfig, config_path, args.overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    if args.dry_run:
        print(dump_yaml(config), end="")
        return 0
    from timely.train.pipeline import run_chain

    try:
        done = run_chain(config)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to continue")
        return 130
    except MissingExtra as exc:  # checked before any stage runs
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    for stage, path in done.items():
        console.print(f"{stage}: {path}")
    return 0


def _config_backend(path: Path | None) -> str:
    """The ``backend:`` a YAML config names (``local`` when it names none)."""
    if not path:
        return "local"
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "local"  # load_config reports the problem
    return str(data.get("backend", "local")) if isinstance(data, dict) else "local"


def verl_main(
    config_path: str | Path | None,
    overrides: list[str],
    *,
    dry_run: bool,
    console: Console,
) -> int:
    """``timely-rl --backend verl``: print the plan (``--dry-run``) or run it."""
    from timely.config import load_config
    from timely.progress import Bar, ProgressDisplay
    from timely.train.verl.config import VerlConfig
    from timely.train.verl.launch import dry_run_text, launch, plan

    config = load_config(VerlConfig, config_path, overrides)
    if dry_run:
        print(dry_run_text(plan(config)), end="")
        return 0
    with ProgressDisplay(console, transient=True) as bars:
        tasks: dict[str, Bar] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bars.bar(split, total, unit="rows")
            tasks[split].update(done, total)

        try:
            code = launch(config, progress=progress, say=lambda s: console.print(s))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: run the same command again to continue")
            return 130
    if code != 0:
        console.print(f"[red]verl exited with {code}[/]: see {plan(config).logs / 'verl.log'}")
    return code


@app.callback()
def _root() -> None:
    """Timely-RL launcher."""


@app.command()
def reward(
    variant: Annotated[str, typer.Option(help="compliance or paper.")] = "paper",
    bonus_shape: Annotated[str, typer.Option(help="sin, linear or step.")] = "sin",
    budget: Annotated[float, typer.Option(help="Budget T in seconds.")] = 60.0,
) -> None:
    """Print the reward of a right and a wrong answer across t/T, so shaping can be checked."""
    from timely.reward import RewardConfig, compute_reward

    cfg = RewardConfig(variant=variant, bonus_shape=bonus_shape)
    table = Table(title=f"reward · variant={variant} · bonus={bonus_shape} · T={budget:g}s")
    for col in ("t/T", "right answer", "wrong answer", "right, late", "cut off"):
        table.add_column(col, justify="right")

    def r(score: float, t: float, on_time: bool, answered: bool = True) -> str:
        value = compute_reward(
            score, elapsed_s=t, budget_s=budget, on_time=on_time, answered=answered, config=cfg
        )
        return f"{value:.3f}"

    for frac in (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        t, on_time = frac * budget, frac <= 1.0
        table.add_row(
            f"{frac:.2f}",
            r(1.0, t, on_time),
            r(0.0, t, on_time),
            r(1.0, t, False) if not on_time else "-",
            r(1.0, t, False, answered=False),
        )
    Console().print(table)


@app.command()
def ship(
    run: Annotated[Path, typer.Argument(help="The training root (holds rl/adapter).")],
    stage: Annotated[str, typer.Option(help="Which stage's adapter: rl, sft, rl-notime.")] = "rl",
    name: Annotated[str, typer.Option(help="Shipped adapter name.")] = "smollm2-135m-timely",
) -> None:
    """Copy a trained adapter into the package (float16), as policy ``hf:NAME``."""
    from timely.train.ship import ship_adapter

    path = ship_adapter(run / stage / "adapter", name)
    Console().print(f"shipped {run / stage / 'adapter'} → {path} (policy hf:{name})")


@app.command()
def results(
    run: Annotated[Path, typer.Argument(help="The training root (holds eval/run).")],
    docs: Annotated[
        Path | None, typer.Option(help="Also copy results.md and figure3.png here.")
    ] = None,
    min_points: Annotated[
        int, typer.Option(help="Episodes wanted per (policy, family, budget) point.")
    ] = 24,
) -> None:
    """Rewrite ``eval/results.md`` and ``eval/figure3.png`` from the eval's trajectories."""
    from timely.registry import load_object

    write = load_object("timely_eval.training:write_results")
    try:
        path = write(run / "eval", min_points=min_points)
    except FileNotFoundError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if docs is not None:
        import shutil

        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs)
        shutil.copyfile(path.with_name("figure3.png"), docs.with_name("figure3.png"))
    Console().print(f"wrote {path}" + (f" and {docs}" if docs else ""))


@app.command("export-gguf")
def export_gguf(
    adapter: Annotated[
        Path, typer.Option(help="A peft adapter directory (e.g. runs/train/rl/adapter).")
    ],
    out: Annotated[Path, typer.Option(help="The GGUF file to write.")],
    dtype: Annotated[
        str, typer.Option(help="How merged weights are stored: f16, q8_0 or f32.")
    ] = "f16",
) -> None:
    """Merge an adapter into the embedded base and write a GGUF for ``llamacpp:FILE``."""
    from timely.errors import PolicyError
    from timely.policies.gguf_export import export_adapter_gguf

    try:
        path = export_adapter_gguf(adapter, out, dtype=dtype)  # type: ignore[arg-type]
    except (ConfigError, PolicyError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    Console().print(
        f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB); run it as llamacpp:{path}"
    )


@app.command()
def decisions(
    run: Annotated[
        Path, typer.Argument(help="A run directory or trajectories file (eval run, data/).")
    ],
    model: Annotated[
        str, typer.Option(help="The model: smollm2-135m, a shipped adapter name, or a path.")
    ] = "smollm2-135m",
    adapter: Annotated[
        Path | None, typer.Option(help="A peft adapter directory merged into --model.")
    ] = None,
    task: Annotated[str, typer.Option(help="Only tasks whose id starts with this.")] = "math/batch",
    answer_prefix: Annotated[
        str, typer.Option(help="How an answering turn starts (its first token is measured).")
    ] = "Answer",
    limit: Annotated[
        int, typer.Option(help="Decision points measured per steps-left bucket at most.")
    ] = 50,
) -> None:
    """P(the next turn answers) by the steps the time status said were left, beside what the
    recorded turns did: whether a model has learned to answer when time is short."""
    from timely.errors import PolicyError
    from timely.policies.hf_models import load_model
    from timely.runrecord.trajectories import read_run
    from timely.train.decisions import (
        answer_probabilities,
        decision_points,
        decision_table,
        per_bucket,
    )

    try:
        points = per_bucket(decision_points(read_run(run), task), limit)
        if not points:
            raise ConfigError(
                f"{run} has no tool result with a step count on {task!r} tasks: pass a run "
                "played with the pushed time status (time: push or both)"
            )
        lm, tokenizer = load_model(model, adapter=adapter)
    except (ConfigError, PolicyError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    lm.eval()
    rows = decision_table(points, answer_probabilities(lm, tokenizer, points, answer_prefix))
    table = Table(title=f"{model}{f' + {adapter}' if adapter else ''} on {run} ({task})")
    for col in ("steps left shown", "points", "recorded answered", "cut off", "P(answer)"):
        table.add_column(col, justify="right")
    for r in rows:
        answered = r["recorded_answered"]
        table.add_row(
            r["steps_left"],
            str(r["points"]),
            "-" if answered is None else f"{answered:.2f}",
            str(r["cut_off"]),
            f"{r['p_answer']:.2f}",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    from timely.heap import fix_heap_threshold

    fix_heap_threshold()  # training's many-MiB tensors would otherwise leave GBs of heap holes
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        app(argv)
    else:
        sys.exit(train_main(argv))


if __name__ == "__main__":
    main()
