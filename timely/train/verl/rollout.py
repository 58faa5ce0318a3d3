"""One verl rollout of a Timely task: a parquet row in, verl's agent-loop output fields out.

verl's agent-loop worker hands each rollout a dataset row and a token-in/token-out server. The
row's ``extra_info`` names the task instance and its drawn setting (:func:`row_extra_info`, what
:mod:`timely.train.verl.data` writes); :func:`play_row` rebuilds both, plays the episode with the
one loop (:func:`timely.loop.run_episode`) on a :class:`~timely.policies.token_server.
TokenServerPolicy` and real HTTP tool calls, and returns :class:`RolloutTokens`: the episode as
one token sequence with tool, observation and time-status tokens masked, and the timing the
reward needs in ``extra_fields``.

Two things verl's default (v1) trainer needs of every rollout: the weight versions it was sampled
under (``min_global_steps`` / ``max_global_steps`` in ``extra_fields``, from the server's first
and last output, else the step verl started the rollout at), and at least one response token
(verl writes the reward at the last response position): a rollout cut before its first sample
gets one end-of-turn token, masked 0, so it counts in its group's baseline and trains nothing.

What stays different from the CPU trainer's rollouts: verl batches requests itself, so there is
no lockstep batcher; the per-rollout speed factor is drawn from fresh entropy (verl does not tell
a rollout which of the ``n`` it is) and recorded in ``extra_fields`` instead.

Nothing here imports verl; :mod:`timely.train.verl.agent_loop` is the thin verl class around it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from timely.clock import make_clock, wall_seconds
from timely.errors import ConfigError, ToolServerUnavailable, TrainingDataError
from timely.loop import opening_messages, run_episode
from timely.policies.token_server import TokenServer, TokenServerPolicy
from timely.prompting import prompt_token_ids
from timely.reward import RewardConfig
from timely.rollout import draw_speed_factor, scaled_speed
from timely.task import Task, make_task
from timely.toolclient import ToolBackend
from timely.train.config import RLConfig, _Frozen
from timely.train.episodes import Setting, episode_budget
from timely.train.verl.failures import FailureRule
from timely.train.view import ViewForm, training_view
from timely.types import EndReason, Trajectory

# extra_info keys of a row; all present, or the row was not written by timely.train.verl.data.
ROW_KEYS = ("task_id", "seed", "split", "task_options", "latency", "time_mode", "budget_s")


class AgentSettings(_Frozen):
    """What every rollout of a run shares, written by the launcher as ``timely_verl.json``."""

    rl: RLConfig = Field(default_factory=RLConfig)
    tool_servers: dict[str, str] = Field(
        default_factory=dict, description="latency spec -> tool server URL (one per latency)."
    )
    max_failed_share: float = Field(1.0, ge=0, le=1, description="verl.max_failed_share.")
    failed_min_groups: int = Field(16, ge=1, description="verl.failed_min_groups.")
    abort_file: str | None = Field(
        None, description="Written when failed groups stop the run (the launcher watches it)."
    )
    failure_log: str | None = Field(None, description="Failed groups, one JSON line each.")

    def failure_rule(self) -> FailureRule:
        return FailureRule(
            self.max_failed_share, self.failed_min_groups, self.abort_file, self.failure_log
        )

    def tool_server(self, latency: str) -> str:
        try:
            return self.tool_servers[latency]
        except KeyError:
            raise ConfigError(
                f"no tool server for latency {latency!r} (have {sorted(self.tool_servers)}); "
                "the row was exported with other rl.latencies than this run serves"
            ) from None


def row_extra_info(task: Task, options: Mapping[str, Any], setting: Setting) -> dict[str, Any]:
    """The ``extra_info`` of a parquet row: the task instance and its drawn setting.

    ``task_options`` is JSON text: parquet needs one struct type per column, and options differ
    between tasks.
    """
    return {
        "task_id": task.id,
        "seed": task.spec.seed,
        "split": task.spec.split,
        "task_options": json.dumps(dict(options), sort_keys=True),
        "latency": setting.latency,
        "time_mode": setting.time_mode,
        "budget_s": setting.budget_s,
        "multiplier": setting.multiplier if setting.multiplier is not None else -1.0,
    }


def row_task(extra_info: Mapping[str, Any]) -> tuple[Task, Setting]:
    """The task instance and setting a row names (speed at the base profile, factor 1)."""
    missing = [k for k in ROW_KEYS if k not in extra_info]
    if missing:
        raise TrainingDataError(
            f"the row's extra_info lacks {missing}: it was not exported by `timely-rl --backend "
            "verl` (timely.train.verl.data); re-export the parquet files"
        )
    options = json.loads(extra_info["task_options"] or "{}")
    task = make_task(
        str(extra_info["task_id"]),
        seed=int(extra_info["seed"]),
        split=str(extra_info["split"]),
        **options,
    )
    multiplier = float(extra_info.get("multiplier", -1.0))
    setting = Setting(
        latency=str(extra_info["latency"]),
        time_mode=str(extra_info["time_mode"]),
        budget_s=float(extra_info["budget_s"]),
        multiplier=None if multiplier < 0 else multiplier,
        speed=scaled_speed("instant", 1.0),  # replaced per rollout
    )
    return task, setting


@dataclass
class RolloutTokens:
    """verl's ``AgentLoopOutput`` fields of one rollout, plus the trajectory they came from."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    num_turns: int
    extra_fields: dict[str, Any]
    gen_wall_s: float  # measured time in server calls (verl's generate_sequences metric)
    tool_wall_s: float  # measured time in tool calls
    trajectory: Trajectory


async def play_row(
    server: TokenServer,
    tokenizer: Any,
    extra_info: Mapping[str, Any],
    settings: AgentSettings,
    tools: ToolBackend,
    *,
    sampling_params: dict[str, Any],
    prompt_length: int,
    response_length: int,
    rng: np.random.Generator | None = None,
    global_steps: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    generation_config: Any = None,
) -> RolloutTokens:
    """Play the episode ``extra_info`` names on ``server`` and return its token sequence.

    Args:
        server: verl's server manager (or anything with its ``generate`` shape).
        tokenizer: the trained model's tokenizer.
        extra_info: the row's ``extra_info`` (:func:`row_extra_info`).
        settings: the run's shared settings.
        tools: a tool backend for the row's latency (HTTP to the run's tool server).
        sampling_params: verl's per-rollout sampling params (temperature, top_p, logprobs).
        prompt_length: ``rollout.prompt_length``: the first prompt must fit.
        response_length: ``rollout.response_length``: everything after it is cut there.
        rng: draws the generation speed factor (default: fresh entropy).
        global_steps: the trainer step verl started this rollout at (its ``global_steps``
            kwarg): the weight version when the server reports none.
        chat_template_kwargs: verl's ``data.apply_chat_template_kwargs``.
        generation_config: the model's generation config (its EOS ids end a turn).
    """
    rl = settings.rl
    task, setting = row_task(extra_info)
    factor = draw_speed_factor(rng or np.random.default_rng(), rl.speed_factor)
    setting = dataclasses.replace(setting, speed=scaled_speed(rl.speed, factor))
    policy = TokenServerPolicy(
        server,
        tokenizer,
        sampling_params=sampling_params,
        max_new_tokens=rl.max_new_tokens,
        response_length=response_length,
        context_length=prompt_length + response_length,
        prompt_length=prompt_length,
        generation_config=generation_config,
        chat_template_kwargs=chat_template_kwargs,
        name="verl",
    )
    timed = _TimedTools(tools)
    options = setting.options(rl.reward, rl.max_turns)
    traj = await run_episode(
        policy,
        task,
        timed,
        make_clock(rl.clock),
        episode_budget(setting, rl),
        options=options,
        latency=setting.latency,
    )
    if traj.end_reason == EndReason.TOOL_SERVER_ERROR:
        # A dead tool server would make a batch of zero-reward rollouts that train on nothing.
        raise ToolServerUnavailable(
            f"{task.id}: the tool server for latency {setting.latency!r} failed: {traj.error}; "
            "check it (`curl URL/health`) and restart the run (it resumes from its checkpoint)"
        )
    prompt = policy.tokens.initial_ids or prompt_token_ids(
        policy.tokens.tokenizer, opening_messages(task, options.time, setting.budget_s), []
    )
    if len(prompt) > prompt_length:  # the policy refused it before sampling
        raise TrainingDataError(
            f"{task.id} seed {task.spec.seed}: the first prompt is {len(prompt)} tokens, over "
            f"rollout.prompt_length={prompt_length}; raise verl.prompt_length (the exporter "
            "reports the longest prompt)"
        )
    ids, mask, logprobs = _response(traj, prompt)
    if len(ids) > response_length:  # the policy caps every request by what is left
        raise TrainingDataError(f"a rollout overran response_length: {len(ids)} tokens")
    sampled = [s for s in traj.steps if s.token_ids]
    has_logprobs = all(s.logprobs is not None for s in sampled)
    if not ids:  # nothing sampled: one end-of-turn token that trains nothing
        ids, mask, logprobs = [min(policy.stop_ids)], [0], [0.0]
        has_logprobs = bool(sampling_params.get("logprobs"))
    fields = episode_fields(traj, rl, factor)
    oldest = policy.min_global_steps if policy.min_global_steps is not None else global_steps
    newest = policy.max_global_steps if policy.max_global_steps is not None else global_steps
    if oldest is not None and newest is not None:
        fields["min_global_steps"], fields["max_global_steps"] = int(oldest), int(newest)
    return RolloutTokens(
        prompt_ids=prompt,
        response_ids=ids,
        response_mask=mask,
        response_logprobs=logprobs if has_logprobs else None,
        num_turns=1 + sum(1 + len(s.tool_results) for s in traj.steps),
        extra_fields=fields,
        gen_wall_s=policy.server_s,
        tool_wall_s=timed.seconds,
        trajectory=traj,
    )


def _response(traj: Trajectory, prompt: list[int]) -> tuple[list[int], list[int], list[float]]:
    """Everything after the first prompt as (ids, mask, logprobs): sampled ids 1, the rest 0."""
    if not any(s.token_ids for s in traj.steps):  # cut before the first sample, or it failed
        return [], [], []
    view = training_view(traj)
    if view.form != ViewForm.SEQUENCE or view.sequence is None:
        # ContinuousTokens extends every prompt by construction; this is a bug, not data.
        raise TrainingDataError(f"a token-server rollout lost the prefix property: {view.reason}")
    seq = view.sequence
    if seq.token_ids[: seq.prompt_length] != prompt:
        raise TrainingDataError("the rollout's first prompt differs from the policy's")
    start = seq.prompt_length
    return seq.token_ids[start:], seq.loss_mask[start:], seq.logprobs[start:]


def episode_fields(traj: Trajectory, rl: RLConfig, speed_factor: float) -> dict[str, Any]:
    """The rollout's ``extra_fields``: what :func:`timely.train.verl.reward.compute_score`
    recomputes the reward from, and the step timings (verl merges them into ``extra_info``)."""
    return {
        "timely_task_id": traj.task_id,
        "timely_score": float(traj.score),
        "timely_elapsed_s": float(traj.elapsed_s),
        "timely_budget_s": float(traj.budget_s),
        "timely_compliant": bool(traj.compliant),
        "timely_answered": traj.end_reason == EndReason.ANSWERED,
        "timely_formatted": bool(traj.metadata.get("formatted", True)),
        "timely_end_reason": str(traj.end_reason),
        "timely_clock": traj.clock,
        "timely_gen_s": float(traj.gen_s),
        "timely_tool_s": float(traj.tool_s),
        "timely_tool_calls": traj.n_tool_calls,
        "timely_speed_factor": float(speed_factor),
        "timely_step_gen_s": [float(s.gen_s) for s in traj.steps],
        "timely_step_tool_s": [float(s.tool_s) for s in traj.steps],
        "timely_step_tokens": [int(s.completion_tokens) for s in traj.steps],
        "timely_time_reward": rl.time_reward,
        "timely_reward_config": rl.reward.model_dump_json(),
        "timely_error": traj.error or "",
    }


def reward_config(fields: Mapping[str, Any]) -> RewardConfig:
    return RewardConfig.model_validate_json(fields["timely_reward_config"])


class _TimedTools:
    """A tool backend that measures the wall time of its calls (verl logs it per rollout)."""

    def __init__(self, inner: ToolBackend) -> None:
        self.inner, self.seconds = inner, 0.0

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        started = wall_seconds()
        try:
            return await self.inner.call(*args, **kwargs)
        finally:
            self.seconds += wall_seconds() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
