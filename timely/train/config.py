"""Typed configs of the training stages: cold-start data, SFT, Timely-RL, and the final eval.

``timely-rl --config configs/train/smollm2_cpu.yaml stage=all rl.steps=20`` resolves a
:class:`TrainConfig` (defaults < YAML < ``key=value`` overrides; unknown keys fail with a
did-you-mean). Every stage's run directory records the resolved config it ran with.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from timely.reward import RewardConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSettings(_Frozen):
    """LoRA through peft: the default, so the shipped artifact is a few MB."""

    r: int = Field(16, ge=1, description="Rank of the low-rank update.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (update x alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="Linear layers that get an adapter (names in the Llama family).",
    )

    def peft_config(self) -> Any:
        """These settings as a peft ``LoraConfig`` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


class DataConfig(_Frozen):
    """Cold-start data: budget-aware scripted experts played through ``run_episode``."""

    tasks: tuple[str, ...] = Field(
        ("math/arithmetic-v1", "math/word-problems-v1", "games/treasure-v1"),
        description="Task ids whose train split is played.",
    )
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"games/treasure-v1": {"difficulty": 1}},
        description="make_task options per task id. Treasure difficulty 1 (3-9 moves) keeps an "
        "episode near 1.6k-2.2k tokens; its nine tool schemas alone are about 1k.",
    )
    episodes_per_task: int = Field(160, ge=1, description="Expert episodes per task.")
    episodes: dict[str, int] = Field(
        default_factory=dict,
        description="Expert episodes by task id, overriding episodes_per_task (a game row is "
        "~3x the tokens of a math row, so a balanced SFT budget plays fewer games).",
    )
    expert: str = Field("scripted:budget-aware", description="The expert policy spec.")
    expert_options: dict[str, Any] = Field(
        default_factory=lambda: {"safety": 2.0},
        description="Options of the expert policy. safety=2.0 (the scripted default is 1.5) "
        "leaves a whole step for the answer turn, so short budgets end in early answers, not "
        "cut-offs.",
    )
    solution: Literal["reference", "direct"] = Field(
        "direct",
        description="What the expert replays: reference: the task's own solution (arithmetic: "
        "one calculator call per sub-expression); direct: one call with the whole expression "
        "where the task states one (the shortest route, which a 135M model can learn by "
        "copying; decomposing precedence it cannot), else the reference.",
    )
    clock_every: int = Field(
        2,
        ge=0,
        description="Pull mode: the expert calls get_duration after every N tool results, and "
        "before it answers early when a turn fits; 0: never.",
    )
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(variant="paper"),
        description="The reward recorded per example (the RL stage's shape); keep= ignores it.",
    )
    budget_multipliers: tuple[float, float] = Field(
        (0.5, 3.0),
        description="Budgets are drawn log-uniformly in this range times the expert's "
        "unconstrained time on the same instance.",
    )
    no_limit_share: float = Field(
        0.2, ge=0, le=1, description="Share of episodes with no time limit shown or enforced."
    )
    latencies: tuple[str, ...] = Field(
        ("constant:0.2", "constant:1.0", "lognormal:2.0,0.5"),
        description="Tool latency specs, one drawn per episode.",
    )
    time_modes: tuple[Literal["push", "pull", "both"], ...] = Field(
        ("push", "pull", "both"), description="Time-status modes, one drawn per episode."
    )
    speed: str = Field("smollm2-cpu", description="Speed profile charging generation time.")
    timing: Literal["tokenizer", "estimate"] = Field(
        "tokenizer",
        description="How expert turns are charged: tokenizer: the SFT model's token counts of "
        "the same prompt and reply (about twice the estimate), budgets scaled by the expert's "
        "time counted that way; estimate: the scripted policy's characters / 4.",
    )
    keep: Literal["on_time", "scored", "all"] = Field(
        "on_time",
        description="on_time: keep only answered, on-time episodes (what to imitate); scored: "
        "of those only the ones that score (an on-time answer worth 0, such as an arithmetic "
        "guess made with no time for a call, teaches answering without working); all: keep "
        "every episode.",
    )
    seed: int = Field(0, description="Seeds budgets, latencies, modes and instance order.")

    def episodes_for(self, task_id: str) -> int:
        """Expert episodes to play of ``task_id``."""
        return int(self.episodes.get(task_id, self.episodes_per_task))


class SFTConfig(_Frozen):
    """Supervised fine-tuning on the cold-start data, loss on sampled (assistant) tokens only."""

    model: str = Field("smollm2-135m", description="Base model: the embedded one or a directory.")
    lora: LoraSettings | None = Field(
        default_factory=LoraSettings, description="LoRA settings; null for full fine-tuning."
    )
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (linear warmup, cosine decay).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    epochs: float = Field(2.0, gt=0, description="Passes over the data.")
    batch_size: int = Field(8, ge=1, description="Sequences per optimizer step (micro x accum).")
    micro_batch_size: int = Field(
        1,
        ge=1,
        description="Sequences per forward pass. 1 on CPU: LoRA training holds ~2.5 MB of "
        "activations per token (a 2.4k-token game: ~6 GB), and a wider micro-batch only adds "
        "padding and memory.",
    )
    max_length: int = Field(
        2560,
        ge=64,
        description="Longer examples are dropped, not cut (treasure at difficulty 1 reaches "
        "~2.4k tokens; math rows stay under 1.2k).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: measured on 1.2k tokens, "
        "3.0 -> 1.3 GB of activations for 1.3-1.7x the time (for micro_batch_size > 1 on long "
        "episodes, or little memory).",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Forward/backward precision: bf16 autocast (weights and optimizer stay "
        "fp32) measured 2.6x faster per token on a CPU with AVX512-BF16; auto picks it where "
        "the CPU has native bf16, else fp32.",
    )
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")
    early_copies: int = Field(
        1,
        ge=1,
        description="Times each row whose expert answered early (the `early` column) appears "
        "in an epoch. Stopping is one token in a row of continues, and only short budgets "
        "have it: more copies weight that decision against the many calls around it.",
    )
    decision_weight: float = Field(
        1.0,
        ge=1.0,
        description="Loss weight of the first token of each assistant turn, where the model "
        "chooses between another tool call and the answer (the loss stays a weighted token "
        "mean). 1: a plain token mean, under which that choice is one token in hundreds.",
    )
    stop_weight: float | None = Field(
        None,
        ge=1.0,
        description="Loss weight of the first token of each row's last turn (the answer: an "
        "episode stops once and continues at every other turn); None: decision_weight.",
    )
    save_every: int = Field(25, ge=1, description="Checkpoint every N optimizer steps.")
    seed: int = Field(0, description="Seeds data order and adapter init.")


class RLConfig(_Frozen):
    """Timely-RL: GRPO-family RL with the budget-aware reward, rollouts through the one loop."""

    tasks: tuple[str, ...] = Field(
        ("math/arithmetic-v1", "games/treasure-v1"),
        description="Train-split tasks, taking turns over the run's prompts.",
    )
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"games/treasure-v1": {"difficulty": 1}},
        description="make_task options per task id (as for the cold-start data: treasure "
        "difficulty 1 keeps episodes near the SFT data's length).",
    )
    steps: int = Field(40, ge=1, description="Optimizer batches (rollout + update rounds).")
    prompts_per_step: int = Field(2, ge=1, description="Task instances per batch.")
    group_size: int = Field(8, ge=2, description="Rollouts per instance (G; 8 in the paper).")
    budget_multipliers: tuple[float, float] = Field(
        (0.5, 3.0),
        description="Per-prompt budget range, times the expert's unconstrained time.",
    )
    stratify_budgets: bool = Field(
        True,
        description="Split the budget range into prompts_per_step equal log-space slices and "
        "give each of a batch's prompts one (in a random order), so every batch holds short "
        "and long budgets; false draws each prompt's budget from the whole range.",
    )
    no_limit_share: float = Field(0.1, ge=0, le=1, description="Share of prompts without limit.")
    speed_factor: tuple[float, float] = Field(
        (0.7, 1.5),
        description="Per-rollout generation slow-down, drawn log-uniformly in this range "
        "(virtual clock): the rollouts of a group share prompt and budget but not the clock, "
        "so the policy must read the clock rather than count turns.",
    )
    latencies: tuple[str, ...] = Field(
        ("constant:0.2", "constant:1.0", "lognormal:2.0,0.5"),
        description="Tool latency specs; each prompt draws one (its group shares it).",
    )
    time_modes: tuple[Literal["push", "pull", "both"], ...] = Field(
        ("push", "pull", "both"),
        description="How the time status reaches the model; each prompt draws one.",
    )
    speed: str = Field("smollm2-cpu", description="Base speed profile of the virtual clock.")
    clock: Literal["virtual", "wall"] = Field("virtual", description="Rollout clock.")
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(variant="paper"),
        description="The reward: the paper shape with the sin budget-use bonus by default "
        "(reward.bonus_shape=linear or step for the ablation).",
    )
    time_reward: bool = Field(
        True,
        description="False: the paper's ablation, plain correctness with no time term: the "
        "budget is still shown, but rollouts run with overrun=late and no cut-off, and the "
        "reward is the score of an answered episode, late answers included.",
    )
    calibration: Literal["reference", "direct"] = Field(
        "direct",
        description="The expert solution whose unconstrained time relative budgets multiply "
        "(as data.solution: the route the SFT data taught).",
    )
    max_turns: int = Field(8, ge=1, description="Model turns per rollout.")
    max_new_tokens: int = Field(96, ge=1, description="Tokens per model turn.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus threshold of rollouts (1: the full distribution)."
    )
    rollout_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Precision rollouts are sampled in. fp32: the recorded sampling log-probs "
        "are the trainer's own and serve as the old policy. bf16: autocast decoding (faster on "
        "a CPU with native bf16); the trainer then recomputes the old log-probs in its own "
        "precision before the update, so the first update's ratio is exactly 1, and logs the "
        "rollout-vs-trainer gap (rollout_logprob_diff_mean / _max).",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "fp32",
        description="The trainer's forward/backward precision (updates, the old and reference "
        "log-prob passes): bf16 autocast as SFT's (weights, optimizer and LoRA stay fp32; "
        "auto: bf16 on a CPU with native bf16). Any precision but fp32 on either side makes "
        "the trainer recompute the old log-probs in its own before the update, so the first "
        "ratio stays exactly 1.",
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="LoRA settings of a fresh adapter (no init); an init adapter keeps its own.",
    )
    lr: float = Field(5e-5, gt=0, description="Learning rate (constant after warmup).")
    warmup_steps: int = Field(
        2, ge=0, description="Optimizer steps of linear warmup: lr x (t + 1) / (warmup + 1)."
    )
    updates_per_batch: int = Field(2, ge=1, description="Optimizer passes over each batch (mu).")
    micro_batch_size: int = Field(
        4, ge=1, description="Sequences per forward pass (gradients accumulate over a batch)."
    )
    micro_batch_tokens: int = Field(
        2048,
        ge=1,
        description="Most padded tokens (rows x longest) per forward pass: LoRA training holds "
        "~2.5 MB of activations a token, and 4 rows of a 2k-token rollout (a model that rambled "
        "to its turn limit) took an RL update past 19 GB.",
    )
    loss: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "grpo",
        description="grpo: std-normalised advantages, per-sequence mean; dr_grpo: no std "
        "normalisation, sum over tokens / a constant; dapo: token-level mean, asymmetric clip.",
    )
    adv_std_floor: float = Field(
        0.1,
        ge=0,
        description="grpo and dapo: the least group std advantages are divided by. The paper "
        "reward moves by ~1 per unit of score, by ~0.25 per chain part (level 1) and by ~0.01 "
        "between on-time runs that differ only in the budget-use bonus; without a floor those "
        "0.01 differences become +-1 advantages. 0.1 leaves them under 0.1 and leaves a group "
        "with a real score spread (std > 0.1) as plain std normalisation. dr_grpo has no std.",
    )
    clip_low: float = Field(0.2, gt=0, description="Lower clip epsilon of the ratio.")
    clip_high: float = Field(0.28, gt=0, description="Upper clip epsilon (dapo; others: low).")
    beta: float = Field(0.0, ge=0, description="KL weight to the reference (k3); 0: off.")
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")
    save_every: int = Field(5, ge=1, description="Checkpoint every N batches.")
    seed: int = Field(0, description="Seeds the data order, settings, adapter and sampling.")


class EvalStageConfig(_Frozen):
    """The held-out evaluation each stage ends with (test split, Timely-Eval's runner).

    The defaults are issue 20's result protocol: partial-credit math (``math/chain``,
    ``math/arithmetic``) and ``games/treasure``, test seeds only, two tool latencies, budgets at
    0.5 / 0.75 / 1 / 2 x a reference time under both protocols (the scripted oracle's time on
    the same instance and latency, shared by every row, and each policy's own time), at least
    ``min_points`` episodes per (policy, family, budget) point, and the base and SFT rows also
    played with the budget-tracker prompt.
    """

    tasks: tuple[str, ...] = Field(
        ("math/chain-v1", "math/arithmetic-v1", "games/treasure-v1"),
        description="Test tasks (partial credit: time buys score).",
    )
    task_options: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "math/chain-v1": {"difficulty": 1},
            "games/treasure-v1": {"difficulty": 1},
        },
        description="make_task options per task id: the difficulty the policies were trained "
        "at (the test split still holds unseen instances). Level 1 keeps chain (7 steps) and "
        "treasure (4 moves) inside max_turns with room to spare; chain's default level takes "
        "15 steps, more than 12 turns.",
    )
    seeds: int = Field(
        12,
        ge=1,
        description="Test instances per task: 12 x 2 latencies = 24 episodes a game point "
        "(math, two tasks, gets 48).",
    )
    task_seeds: dict[str, int] = Field(
        default_factory=dict,
        description="Test instances by task id, overriding seeds (a trained model's game "
        "episode re-reads 1.3k-2.5k-token prompts for up to max_turns turns).",
    )
    min_points: int = Field(
        24,
        ge=1,
        description="Episodes wanted per (policy, family, budget) point, pooled over tasks and "
        "latencies; the results page flags points below it.",
    )
    max_turns: int | None = Field(
        12, ge=1, description="Model turns per episode (None: each task's own limit)."
    )
    budget_multipliers: tuple[float, ...] = Field(
        (0.5, 0.75, 1.0, 2.0), description="Relative budgets, multiples of the reference time."
    )
    reference: Literal["policy", "oracle", "both"] = Field(
        "both",
        description="What the multipliers multiply: oracle = the scripted oracle's time on the "
        "same instance and latency with the eval prompt (one shared reference, the same "
        "seconds for every row; labels x2@oracle); policy = each policy's own time (the "
        "paper's protocol; labels x2); both side by side.",
    )
    latencies: tuple[str, ...] = Field(
        ("constant:0.2", "constant:2.0"), description="Tool latencies (fast and slow tools)."
    )
    adapters: dict[str, str | None] = Field(
        default_factory=dict,
        description="Row label -> peft adapter directory, overriding the adapters found under "
        "the training root (sft, rl, rl-notime; e.g. the shipped ones), or None to drop a row.",
    )
    tracker_rows: tuple[str, ...] = Field(
        ("base", "sft"),
        description="Rows also played with the budget-tracker prompt (tracker:<spec>) as "
        "LABEL+tracker: the training-free baseline the trained rows must beat.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "bf16",
        description="Decoding precision of the evaluated policies: bf16 autocast is 2-3x "
        "faster on a CPU with native bf16 (game prompts of 1.3k-2k tokens are re-read every "
        "turn); every policy, base included, is played the same way.",
    )
    max_new_tokens: int = Field(96, ge=1, description="Tokens per model turn (as in RL).")
    time: str = Field(
        "push",
        description="Time-awareness preset of every episode (timely.budget's presets): push, "
        "the status after every tool result that the data and RL showed (`auto` would let math "
        "pull the time through a get_duration tool the trained policy has never been shown).",
    )
    concurrency: int = Field(
        16, ge=1, description="Episodes in flight (a local model micro-batches their turns)."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Processes that play the eval: 1 plays it in this process; N > 1 starts a "
        "private local Ray with N worker actors of one CPU (one torch thread) each, every one "
        "holding its own copy of each row's model, writing into the same run directory (the "
        "episodes are the same on the virtual clock; a local run resumes under Ray and back).",
    )
    enabled: bool = Field(True, description="Run it at the end of each stage.")


class TrainConfig(_Frozen):
    """``timely-rl``: the whole chain. ``stage=all`` runs data -> sft -> rl -> eval."""

    stage: Literal["data", "sft", "rl", "ablation", "eval", "all"] = Field(
        "all",
        description="What to run: one stage, or all of them in order (data, sft, rl, the "
        "ablation when enabled, eval).",
    )
    ablation: bool = Field(
        True, description="stage=all also trains RL without the time reward (rl-notime/)."
    )
    out: str = Field("runs/train", description="Root directory; each stage writes a subdir.")
    init: str | None = Field(
        None,
        description="RL only: an adapter/model directory to start from (default: the SFT "
        "stage's output under out/, else the base model).",
    )
    threads: int = Field(2, ge=1, description="torch CPU threads.")
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalStageConfig = Field(default_factory=EvalStageConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.sft.batch_size % self.sft.micro_batch_size:
            raise ValueError("sft.batch_size must be a multiple of sft.micro_batch_size")
        return self
