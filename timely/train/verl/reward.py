"""verl's reward entry point: ``custom_reward_function.path`` is this file, ``name`` compute_score.

verl's reward manager calls ``compute_score(data_source=, solution_str=, ground_truth=,
extra_info=)`` once per rollout, with the agent loop's ``extra_fields`` merged into
``extra_info``. The task's scorer already ran inside the episode (a game's result lives on the tool
server, not in the decoded text), so the reward here is recomputed from the recorded outcome and
timing with the same function the CPU trainer uses (:func:`timely.train.episodes.rl_reward`): the
budget-aware Timely-RL reward, or plain correctness for the ablation.

verl loads this file by path into its reward workers, so it imports only what it needs.
"""

from __future__ import annotations

from typing import Any

from timely.errors import TrainingDataError
from timely.train.episodes import rl_reward
from timely.train.verl.rollout import reward_config

_NEEDED = (
    "timely_score",
    "timely_elapsed_s",
    "timely_budget_s",
    "timely_compliant",
    "timely_answered",
    "timely_reward_config",
    "timely_time_reward",
)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The Timely-RL reward of one rollout, with its parts logged (verl averages each key).

    Returns:
        ``score`` (the reward verl trains on) and ``acc`` (task correctness), ``on_time``,
        ``answered``, ``budget_use`` (elapsed / budget), ``elapsed_s``, and
        ``failed_group_share`` (the share of failed prompt groups on the rollout's worker so
        far, :mod:`timely.train.verl.failures`).
    """
    info = extra_info or {}
    missing = [k for k in _NEEDED if k not in info]
    if missing:
        raise TrainingDataError(
            f"rollout of {data_source!r} has no {missing} in extra_info: it was not played by "
            "the timely agent loop; set actor_rollout_ref.rollout.agent.default_agent_loop="
            "timely_agent (or the rows' agent_name) and agent_loop_config_path to the run's "
            "agent_loops.yaml, as `timely-rl --backend verl` does"
        )
    score, elapsed, budget = (
        float(info["timely_score"]),
        float(info["timely_elapsed_s"]),
        float(info["timely_budget_s"]),
    )
    on_time, answered = bool(info["timely_compliant"]), bool(info["timely_answered"])
    reward = rl_reward(
        score,
        elapsed_s=elapsed,
        budget_s=budget,
        on_time=on_time,
        answered=answered,
        formatted=bool(info.get("timely_formatted", True)),
        reward=reward_config(info),
        time_reward=bool(info["timely_time_reward"]),
    )
    return {
        "score": reward,
        "acc": score,
        "on_time": float(on_time),
        "answered": float(answered),
        "budget_use": elapsed / budget if budget > 0 else 0.0,
        "elapsed_s": elapsed,
        "failed_group_share": float(info.get("timely_failed_group_share", 0.0)),
    }
