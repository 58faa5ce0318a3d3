"""verl's RL parquet files from the tasks' train and test splits.

Each row is one task instance with its drawn setting (latency, time mode, budget), in verl's RL
row format (``data_source``, ``agent_name``, ``prompt``, ``ability``, ``reward_model``,
``extra_info``). Settings come from :func:`timely.train.episodes.draw_setting` with the CPU
trainer's calibration (the oracle's time with the trained model's token counts), so a budget of
``2x`` means the same on both backends. ``prompt`` holds the exact opening messages the agent loop
sends and ``extra_info.prompt_tokens`` their length with the tools rendered, so a prompt that
would not fit ``verl.prompt_length`` is refused here, not on the cluster.

Validation rows come from the test split and take turns over fixed relative budgets
(``verl.val_budget_multipliers``), always with a limit and at the base speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from timely.continuous_tokens import with_template_kwargs
from timely.errors import ConfigError
from timely.prompting import prompt_token_ids
from timely.rng import derive_seed
from timely.rollout import Runtime, opening
from timely.task import Task, make_task
from timely.train.config import RLConfig
from timely.train.episodes import Setting, draw_setting
from timely.train.experts import tokenized_calibrator
from timely.train.verl.config import AGENT_NAME, VerlConfig
from timely.train.verl.rollout import row_extra_info
from timely.types import Message

Progress = Callable[[str, int, int], None]  # (split, rows done, rows)


async def export_split(
    config: VerlConfig,
    tokenizer: Any,
    split: str,
    n_rows: int,
    *,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """``n_rows`` rows of ``split`` (train: drawn settings; test: fixed relative budgets)."""
    rl = config.rl
    rng = np.random.default_rng(derive_seed(rl.seed, "verl-data", split))
    rows: list[dict[str, Any]] = []
    # Count the prompt as rollouts render it (e.g. Qwen3's empty think block), so a prompt that
    # passes export is never refused at rollout.
    rendering = with_template_kwargs(tokenizer, config.verl.chat_template_kwargs)
    async with Runtime(seed=rl.seed) as runtime:
        calibrate = tokenized_calibrator(runtime, rl.speed, rendering, rl.calibration)
        for i in range(n_rows):
            task_id = rl.tasks[i % len(rl.tasks)]
            options = rl.task_options.get(task_id, {})
            task = make_task(task_id, seed=int(rng.integers(2**31)), split=split, **options)
            if split == "train":
                draw = dict(
                    multipliers=rl.budget_multipliers,
                    no_limit_share=rl.no_limit_share,
                    speed_factor=rl.speed_factor,
                )
            else:
                m = config.verl.val_budget_multipliers[i % len(config.verl.val_budget_multipliers)]
                draw = dict(multipliers=(m, m), no_limit_share=0.0)
            setting = await draw_setting(
                rng,
                runtime,
                task,
                latencies=rl.latencies,
                time_modes=rl.time_modes,
                speed=rl.speed,
                unconstrained=calibrate,
                **draw,  # type: ignore[arg-type]
            )
            messages, tools = await first_prompt(runtime, task, setting, rl)
            n_tokens = len(prompt_token_ids(rendering, messages, tools))
            if n_tokens > config.verl.prompt_length:
                raise ConfigError(
                    f"{task_id} seed {task.spec.seed}: the first prompt is {n_tokens} tokens "
                    f"with its {len(tools)} tools, over verl.prompt_length="
                    f"{config.verl.prompt_length}; raise it or lower the task's difficulty"
                )
            rows.append(row(task, options, setting, messages, n_tokens, index=i))
            if progress is not None:
                progress(split, i + 1, n_rows)
    return rows


def row(
    task: Task,
    options: dict[str, Any],
    setting: Any,
    messages: list[Message],
    prompt_tokens: int,
    *,
    index: int,
) -> dict[str, Any]:
    """One verl RL row."""
    return {
        "data_source": f"timely/{task.id}",
        "agent_name": AGENT_NAME,
        "prompt": [{"role": m.role, "content": m.content or ""} for m in messages],
        "ability": task.id.split("/", 1)[0],
        # Informational (the scorer runs inside the episode): the gold answer where the task
        # has one, else the reference solution's final message.
        "reward_model": {"style": "rule", "ground_truth": _ground_truth(task)},
        "extra_info": {
            **row_extra_info(task, options, setting),
            "index": index,
            "prompt_tokens": prompt_tokens,
        },
    }


def _ground_truth(task: Task) -> str:
    gold = getattr(task, "gold_answer", None)
    return str(gold) if gold is not None else task.solution().answer


async def first_prompt(
    runtime: Runtime, task: Task, setting: Setting, rl: RLConfig
) -> tuple[list[Message], list[dict[str, Any]]]:
    """The messages and tools of the episode's first model call, as the loop builds them
    (:func:`timely.rollout.opening`: system prompt, budget line, tools offered)."""
    tools = await runtime.tools(setting.latency) if task.spec.tools else None
    return await opening(task, setting.options(rl.reward, rl.max_turns), setting.budget_s, tools)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows with HF ``datasets`` (what verl's RLHFDataset reads them back with)."""
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def export_data(
    config: VerlConfig, tokenizer: Any, out_dir: Path, *, progress: Progress | None = None
) -> dict[str, Path]:
    """Write ``train.parquet`` and ``test.parquet`` under ``out_dir``; return their paths."""
    paths = {}
    for split, n_rows in (("train", config.verl.train_prompts), ("test", config.verl.val_prompts)):
        rows = asyncio.run(export_split(config, tokenizer, split, n_rows, progress=progress))
        paths[split] = write_parquet(rows, out_dir / f"{split}.parquet")
    return paths
