"""Rows and scripted replies for the verl backend's tests (base env and verl env alike)."""

from __future__ import annotations

import json
from typing import Any

from timely.clock import speed_profile
from timely.task import make_task
from timely.train.config import RLConfig
from timely.train.episodes import Setting
from timely.train.experts import direct_solution
from timely.train.verl.config import VerlConfig, VerlSettings
from timely.train.verl.rollout import row_extra_info


def small_config(out: str = "runs/verl-test", **rl: Any) -> VerlConfig:
    """A run small enough to export and play on a CPU in seconds."""
    fields: dict[str, Any] = {
        "tasks": ("math/arithmetic-v1",),
        "latencies": ("constant:0.5", "constant:2.0"),
        "prompts_per_step": 4,
        "max_turns": 4,
        "max_new_tokens": 256,
        "speed": "smollm2-cpu",
        "speed_factor": (1.0, 1.0),
        **rl,
    }
    return VerlConfig(
        out=out,
        rl=RLConfig(**fields),
        verl=VerlSettings(
            model="tiny",
            train_prompts=6,
            val_prompts=3,
            ppo_mini_batch_size=2,
            prompt_length=4096,  # the byte-level tiny tokenizer spends ~1.4k on a prompt
            response_length=2048,
        ),
    )


def arithmetic_row(seed: int = 3, budget_s: float = 60.0, latency: str = "constant:0.5"):
    """(extra_info, task) of a train-split arithmetic instance."""
    task = make_task("math/arithmetic-v1", seed=seed, split="train")
    setting = Setting(latency, "push", budget_s, 2.0, speed_profile("smollm2-cpu"))
    return row_extra_info(task, {}, setting), task


def solution_of(task):
    """The route budgets are calibrated on (rl.calibration=direct): one calculator call with the
    whole expression where the task allows it, else the reference solution."""
    return direct_solution(task) or task.solution()


def solving_replies(task) -> list[str]:
    """The replies of a model that solves ``task``: its tool calls, then the answer."""
    solution = solution_of(task)
    calls = [
        "<tool_call>\n"
        + json.dumps({"name": c.name, "arguments": c.arguments})
        + "\n</tool_call><|im_end|>"
        for c in solution.calls
    ]
    return [*calls, f"{solution.answer}<|im_end|>"]  # the answer line: "Answer: 47"
