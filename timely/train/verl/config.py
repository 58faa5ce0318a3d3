"""The typed config of ``timely-rl --backend verl`` and its translation into verl's Hydra overrides.

One YAML holds what Timely-RL means (``rl:``, the same :class:`~timely.train.config.RLConfig` the
CPU trainer reads: tasks, settings, reward, GRPO loss and clipping) and what the cluster needs
(``verl:``: model, GPUs, lengths, batch sizes). :func:`verl_overrides` maps both onto verl 0.9.1's
``ppo_trainer`` keys, so a user who knows verl finds every knob under its own name in the printed
command, and ``verl.overrides`` passes anything else through verbatim.

Nothing here imports verl: the launcher's ``--dry-run`` and the tests run on the base install.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from timely.train.config import RLConfig, _Frozen

AGENT_NAME = "timely_agent"


class VerlSettings(_Frozen):
    """The cluster side: model, GPUs, token lengths, batch sizes, logging."""

    model: str = Field(
        "Qwen/Qwen3-1.7B", description="actor_rollout_ref.model.path: a hub id or a local dir."
    )
    nnodes: int = Field(1, ge=1, description="trainer.nnodes.")
    n_gpus_per_node: int = Field(8, ge=1, description="trainer.n_gpus_per_node.")
    tensor_parallel: int = Field(
        1, ge=1, description="rollout.tensor_model_parallel_size (vLLM shards per replica)."
    )
    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="rollout.gpu_memory_utilization (vLLM's KV cache share)."
    )
    prompt_length: int = Field(
        4096, ge=64, description="data.max_prompt_length: the first prompt, tools included."
    )
    response_length: int = Field(
        8192,
        ge=64,
        description="data.max_response_length: every token after the first prompt, sampled and "
        "not (tool results and time status count).",
    )
    train_prompts: int = Field(4096, ge=1, description="Rows exported from the train split.")
    val_prompts: int = Field(256, ge=1, description="Rows exported from the test split.")
    val_budget_multipliers: tuple[float, ...] = Field(
        (0.75, 1.0, 2.0),
        description="Validation rows take turns over these relative budgets (the eval's "
        "reference protocol), so validation curves are comparable across runs.",
    )
    ppo_mini_batch_size: int = Field(
        32, ge=1, description="actor.ppo_mini_batch_size, in prompts (x rollout.n sequences)."
    )
    max_token_len_per_gpu: int = Field(
        24576,
        ge=1024,
        description="actor.ppo_max_token_len_per_gpu with use_dynamic_bsz (packs sequences).",
    )
    lora: bool = Field(
        False, description="Train a LoRA adapter (rank rl.lora.r) instead of the full model."
    )
    attention: Literal["sdpa", "flash_attention_2"] = Field(
        "sdpa",
        description="The trained model's attention in verl's FSDP actor and reference. sdpa "
        "(PyTorch's own) needs nothing more and trains on padded micro-batches "
        "(use_remove_padding off); flash_attention_2 packs sequences (use_remove_padding on) "
        "but needs flash-attn built against the GPU environment's torch (docs/scale.md).",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="data.apply_chat_template_kwargs: extra arguments of every chat-template "
        "render, in rollouts as in verl's own loops (Qwen3: {enable_thinking: false}).",
    )
    max_failed_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Stop the run when more than this share of the prompt groups an agent-loop "
        "worker has run failed (a rollout or its reward raised: a dead tool server, a row the "
        "reward cannot score). verl drops a failed group and trains on the rest; 1: never stop.",
    )
    failed_min_groups: int = Field(
        16,
        ge=1,
        description="Groups a worker must have run before max_failed_share is judged (one "
        "early failure is no trend).",
    )
    agent_workers: int = Field(8, ge=1, description="rollout.agent.num_workers.")
    total_epochs: int = Field(
        1, ge=1, description="trainer.total_epochs (rl.steps caps total_training_steps)."
    )
    test_freq: int = Field(10, description="trainer.test_freq (-1: no validation).")
    val_before_train: bool = Field(True, description="trainer.val_before_train.")
    logger: tuple[str, ...] = Field(("console",), description="trainer.logger (console, wandb).")
    project: str = Field("timely-rl", description="trainer.project_name.")
    experiment: str = Field("qwen3-1.7b", description="trainer.experiment_name.")
    tool_host: str = Field(
        "127.0.0.1",
        description="Where started tool servers bind and are reached. On several nodes, bind "
        "an address the other nodes reach (the head node's) or pass tool_servers.",
    )
    tool_servers: dict[str, str] = Field(
        default_factory=dict,
        description="latency spec -> URL of a running `timely tool-server --latency SPEC`; "
        "every rl.latencies entry needs one. Empty: the launcher starts one per latency.",
    )
    python: str | None = Field(
        None, description="Interpreter that runs verl (default: the launcher's own)."
    )
    overrides: tuple[str, ...] = Field(
        (), description="Extra Hydra overrides, appended last (they win)."
    )


class VerlConfig(_Frozen):
    """``timely-rl --backend verl --config configs/train/verl_<model>.yaml``."""

    backend: Literal["verl"] = Field("verl", description="The backend this config is for.")
    out: str = Field("runs/verl", description="Run directory: data, configs, logs, checkpoints.")
    rl: RLConfig = Field(
        default_factory=lambda: RLConfig(
            tasks=("math/arithmetic-v1", "math/word-problems-v1", "games/treasure-v1"),
            task_options={"games/treasure-v1": {"difficulty": 2}},
            steps=200,
            prompts_per_step=32,
            max_turns=20,
            max_new_tokens=1024,
            speed="small-fast",
            lr=1e-6,
            beta=0.001,
        ),
        description="What Timely-RL trains on and how (shared with the CPU trainer).",
    )
    verl: VerlSettings = Field(default_factory=VerlSettings)

    @model_validator(mode="after")
    def _check(self) -> VerlConfig:
        missing = [
            lat
            for lat in self.rl.latencies
            if self.verl.tool_servers and lat not in self.verl.tool_servers
        ]
        if missing:
            raise ValueError(
                f"verl.tool_servers has no URL for latencies {missing}; give one per "
                "rl.latencies entry, or leave tool_servers empty to start them"
            )
        if self.rl.prompts_per_step % self.verl.ppo_mini_batch_size:
            raise ValueError(
                f"rl.prompts_per_step ({self.rl.prompts_per_step}) must be a multiple of "
                f"verl.ppo_mini_batch_size ({self.verl.ppo_mini_batch_size})"
            )
        if self.rl.max_new_tokens > self.verl.response_length:
            raise ValueError("rl.max_new_tokens cannot exceed verl.response_length")
        if self.verl.lora and self.rl.lora.dropout > 0:
            # verl 0.9.1's FSDP engine builds peft's LoraConfig without lora_dropout.
            raise ValueError(
                f"rl.lora.dropout={self.rl.lora.dropout}: verl's FSDP LoRA has no dropout; "
                "set it to 0 (or train with the CPU backend)"
            )
        if self.verl.nnodes > 1:
            self._check_reachable_from_every_node()
        return self

    def _check_reachable_from_every_node(self) -> None:
        """Agent-loop workers run on every node: a loopback tool server is on one of them."""
        v = self.verl
        if not v.tool_servers and is_loopback(v.tool_host):
            raise ValueError(
                f"verl.nnodes={v.nnodes} with tool servers bound to {v.tool_host}: agent-loop "
                "workers on the other nodes cannot reach them; set verl.tool_host=0.0.0.0 (the "
                "head node's hostname is advertised) or pass verl.tool_servers with addresses "
                "every node reaches"
            )
        local = {lat: u for lat, u in v.tool_servers.items() if is_loopback(urlsplit(u).hostname)}
        if local:
            raise ValueError(
                f"verl.nnodes={v.nnodes} but verl.tool_servers {local} are loopback addresses "
                "that only their own node reaches; give each server's address on the network"
            )


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# GRPO-family losses of the CPU trainer -> verl's names (verl's own docs call these the same).
_LOSS_AGG = {
    "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
}


def verl_overrides(
    config: VerlConfig,
    *,
    train_file: str,
    val_file: str,
    agent_loop_config: str,
    reward_file: str,
    checkpoint_dir: str,
    hydra_dir: str | None = None,
) -> list[str]:
    """The ``key=value`` overrides of ``python -m verl.trainer.main_ppo`` for ``config``.

    The paper's recipe: GRPO (std-normalised group advantages), ``rl.group_size`` rollouts per
    prompt on vLLM, each rollout played by the ``timely_agent`` loop (its own turn limit,
    ``rl.max_turns``), scored by :func:`timely.train.verl.reward.compute_score`.

    Only keys that verl 0.9.1 reads on this path are emitted (``make test-verl`` reads each
    back from verl's resolved config): ``rollout.multi_turn.*`` is read by verl's own
    ToolAgentLoop only, and ``rollout.mode``, ``data.return_raw_chat``, ``data.truncation`` and
    ``data.filter_overlong_prompts`` would restate verl's defaults.
    """
    rl, v = config.rl, config.verl
    clip_high = rl.clip_high if rl.loss == "dapo" else rl.clip_low
    model = "actor_rollout_ref.model"
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    out = [
        "algorithm.adv_estimator=grpo",
        f"algorithm.norm_adv_by_std_in_grpo={rl.loss != 'dr_grpo'}",
        f"data.train_files={train_file}",
        f"data.val_files={val_file}",
        f"data.train_batch_size={rl.prompts_per_step}",
        f"data.max_prompt_length={v.prompt_length}",
        f"data.max_response_length={v.response_length}",
        f"data.seed={rl.seed}",
        *(
            f"+data.apply_chat_template_kwargs.{key}={_hydra_value(value)}"
            for key, value in sorted(v.chat_template_kwargs.items())
        ),
        f"{model}.path={v.model}",
        # flash_attention_2 is verl's default; set explicitly, so no run depends on it silently.
        f"+{model}.override_config.attn_implementation={v.attention}",
        # Packed sequences need varlen attention, which only flash-attn gives here.
        f"{model}.use_remove_padding={v.attention == 'flash_attention_2'}",
        f"{actor}.optim.lr={rl.lr}",
        f"{actor}.optim.lr_warmup_steps={rl.warmup_steps}",
        f"{actor}.ppo_mini_batch_size={v.ppo_mini_batch_size}",
        f"{actor}.ppo_epochs={rl.updates_per_batch}",
        f"{actor}.data_loader_seed={rl.seed}",
        f"{actor}.use_dynamic_bsz=True",
        f"{actor}.ppo_max_token_len_per_gpu={v.max_token_len_per_gpu}",
        f"{actor}.clip_ratio_low={rl.clip_low}",
        f"{actor}.clip_ratio_high={clip_high}",
        f"{actor}.loss_agg_mode={_LOSS_AGG[rl.loss]}",
        f"{actor}.use_kl_loss={rl.beta > 0}",
        f"{actor}.kl_loss_coef={rl.beta}",
        f"{actor}.kl_loss_type=low_var_kl",  # k3, as the CPU trainer
        f"{actor}.grad_clip={rl.grad_clip}",
        f"{rollout}.name=vllm",
        f"{rollout}.n={rl.group_size}",
        f"{rollout}.temperature={rl.temperature}",
        f"{rollout}.top_p={rl.top_p}",
        f"{rollout}.tensor_model_parallel_size={v.tensor_parallel}",
        f"{rollout}.gpu_memory_utilization={v.gpu_memory_utilization}",
        f"{rollout}.agent.num_workers={v.agent_workers}",
        f"{rollout}.agent.agent_loop_config_path={agent_loop_config}",
        f"{rollout}.agent.default_agent_loop={AGENT_NAME}",
        f"reward.custom_reward_function.path={reward_file}",
        "reward.custom_reward_function.name=compute_score",
        f"trainer.nnodes={v.nnodes}",
        f"trainer.n_gpus_per_node={v.n_gpus_per_node}",
        f"trainer.total_epochs={v.total_epochs}",
        f"trainer.total_training_steps={rl.steps}",
        f"trainer.save_freq={rl.save_every}",
        f"trainer.test_freq={v.test_freq}",
        f"trainer.val_before_train={v.val_before_train}",
        f"trainer.project_name={v.project}",
        f"trainer.experiment_name={v.experiment}",
        "trainer.logger=[" + ",".join(v.logger) + "]",
        f"trainer.default_local_dir={checkpoint_dir}",
    ]
    if rl.loss == "dr_grpo":
        # Dr. GRPO divides each sequence's token sum by one constant; unset, verl divides by the
        # micro-batch's padded width, which dynamic batching changes from batch to batch.
        out.append(f"{actor}.loss_scale_factor={v.response_length}")
    if hydra_dir is not None:  # else Hydra writes outputs/DATE/ wherever verl was started
        out.append(f"hydra.run.dir={hydra_dir}")
    if v.lora:
        out += [
            f"{model}.lora_rank={rl.lora.r}",
            f"{model}.lora_alpha={rl.lora.alpha}",
            f"{model}.target_modules=[" + ",".join(rl.lora.target_modules) + "]",
        ]
    return [*out, *v.overrides]


def _hydra_value(value: Any) -> str:
    """A literal Hydra's override grammar reads back as ``value`` (JSON's are, for scalars)."""
    return json.dumps(value)
