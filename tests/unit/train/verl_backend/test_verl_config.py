"""The verl backend's config: its Hydra overrides and the CLI's --dry-run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.helpers.verl_rows import small_config
from timely.cli_rl import train_main as main
from timely.config import load_config
from timely.errors import ConfigError
from timely.train.verl.config import VerlConfig, verl_overrides
from timely.train.verl.launch import plan

ROOT = Path(__file__).resolve().parents[4]


def override_list(config: VerlConfig) -> list[str]:
    return verl_overrides(
        config,
        train_file="T",
        val_file="V",
        agent_loop_config="L",
        reward_file="R",
        checkpoint_dir="C",
    )


def overrides(config: VerlConfig) -> dict[str, str]:
    return dict(p.split("=", 1) for p in override_list(config))


def test_the_paper_recipe_in_verl_names():
    o = overrides(VerlConfig())
    assert (
        o["algorithm.adv_estimator"] == "grpo" and o["algorithm.norm_adv_by_std_in_grpo"] == "True"
    )
    assert o["actor_rollout_ref.rollout.n"] == "8"
    assert o["actor_rollout_ref.rollout.name"] == "vllm"
    assert o["actor_rollout_ref.rollout.agent.default_agent_loop"] == "timely_agent"
    assert o["actor_rollout_ref.rollout.agent.agent_loop_config_path"] == "L"
    assert o["reward.custom_reward_function.path"] == "R"
    assert o["reward.custom_reward_function.name"] == "compute_score"
    # The attention is chosen, not left to verl's flash_attention_2 default.
    assert o["+actor_rollout_ref.model.override_config.attn_implementation"] == "sdpa"
    assert o["actor_rollout_ref.model.use_remove_padding"] == "False"


def test_only_keys_that_act_are_emitted():
    keys = set(overrides(VerlConfig()))
    inert = {
        "actor_rollout_ref.rollout.multi_turn.enable",  # verl's ToolAgentLoop reads these
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns",
        "actor_rollout_ref.rollout.mode",  # verl's defaults, restated
        "data.return_raw_chat",
        "data.truncation",
        "data.filter_overlong_prompts",
    }
    assert not keys & inert


def test_flash_attention_packs_sequences():
    config = small_config()
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"attention": "flash_attention_2"})}
    )
    o = overrides(config)
    assert o["+actor_rollout_ref.model.override_config.attn_implementation"] == (
        "flash_attention_2"
    )
    assert o["actor_rollout_ref.model.use_remove_padding"] == "True"


def test_dr_grpo_divides_by_the_response_length():
    o = overrides(small_config(loss="dr_grpo"))
    assert o["actor_rollout_ref.actor.loss_scale_factor"] == "2048"  # verl.response_length
    assert "actor_rollout_ref.actor.loss_scale_factor" not in overrides(small_config())


def test_chat_template_kwargs_become_verls_data_key():
    config = small_config()
    config = config.model_copy(
        update={
            "verl": config.verl.model_copy(
                update={"chat_template_kwargs": {"enable_thinking": False}}
            )
        }
    )
    assert overrides(config)["+data.apply_chat_template_kwargs.enable_thinking"] == "false"


def test_several_nodes_refuse_tool_servers_only_one_node_reaches():
    with pytest.raises(ConfigError, match="verl.nnodes=2 with tool servers bound to 127.0.0.1"):
        load_config(VerlConfig, None, ["verl.nnodes=2"])
    with pytest.raises(ValidationError, match="loopback"):
        VerlConfig.model_validate(
            {
                "rl": {"latencies": ["constant:1.0"], "prompts_per_step": 32},
                "verl": {"nnodes": 2, "tool_servers": {"constant:1.0": "http://localhost:8701"}},
            }
        )
    ok = load_config(VerlConfig, None, ["verl.nnodes=2", "verl.tool_host=0.0.0.0"])
    assert ok.verl.nnodes == 2
    assert load_config(VerlConfig, None, []).verl.tool_host == "127.0.0.1"  # one node: fine


def test_lora_dropout_is_refused_where_verl_has_none():
    with pytest.raises(ConfigError, match="verl's FSDP LoRA has no dropout"):
        overrides = ["verl.lora=true", "rl.lora.dropout=0.1", "rl.prompts_per_step=32"]
        load_config(VerlConfig, None, overrides)


@pytest.mark.parametrize(
    ("loss", "agg", "norm", "clip_high"),
    [
        ("grpo", "seq-mean-token-mean", "True", "0.2"),
        ("dr_grpo", "seq-mean-token-sum-norm", "False", "0.2"),
        ("dapo", "token-mean", "True", "0.28"),
    ],
)
def test_losses_map_onto_verls_aggregation(loss, agg, norm, clip_high):
    o = overrides(small_config(loss=loss))
    assert o["actor_rollout_ref.actor.loss_agg_mode"] == agg
    assert o["algorithm.norm_adv_by_std_in_grpo"] == norm
    assert o["actor_rollout_ref.actor.clip_ratio_high"] == clip_high


def test_kl_lora_and_passthrough_overrides():
    config = small_config(beta=0.0).model_copy(
        update={
            "verl": small_config().verl.model_copy(
                update={"lora": True, "overrides": ("trainer.logger=[console,wandb]",)}
            )
        }
    )
    pairs = override_list(config)
    o = dict(p.split("=", 1) for p in pairs)
    assert o["actor_rollout_ref.actor.use_kl_loss"] == "False"
    assert o["actor_rollout_ref.model.lora_rank"] == "16"
    assert o["actor_rollout_ref.model.target_modules"].startswith("[q_proj,k_proj,")
    assert pairs[-1] == "trainer.logger=[console,wandb]"  # appended last: it wins


def test_inconsistent_settings_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="multiple of verl.ppo_mini_batch_size"):
        load_config(VerlConfig, None, ["rl.prompts_per_step=5", "verl.ppo_mini_batch_size=2"])
    with pytest.raises(ValidationError, match=r"no URL for latencies \['constant:1.0'"):
        VerlConfig.model_validate({"verl": {"tool_servers": {"constant:0.2": "http://h:1"}}})


@pytest.mark.parametrize("name", ["verl_qwen3_1p7b.yaml", "verl_qwen3_8b.yaml"])
def test_shipped_configs_dry_run(name, capsys):
    path = ROOT / "configs" / "train" / name
    assert main(["--config", str(path), "--dry-run"]) == 0  # backend: verl in the file
    text = capsys.readouterr().out
    command = shlex.split(text.splitlines()[1])
    assert command[1:3] == ["-m", "verl.trainer.main_ppo"]
    assert "actor_rollout_ref.rollout.n=8" in command
    assert "+data.apply_chat_template_kwargs.enable_thinking=false" in command  # Qwen3: no thinking
    config = load_config(VerlConfig, str(path), [])
    assert f"actor_rollout_ref.model.path={config.verl.model}" in command
    assert "_target_: timely.train.verl.agent_loop.TimelyAgentLoop" in text


def test_dry_run_applies_overrides_and_rejects_unknown_keys(capsys):
    path = str(ROOT / "configs" / "train" / "verl_qwen3_1p7b.yaml")
    assert main(["--config", path, "rl.steps=3", "--dry-run", "rl.group_size=4"]) == 0
    out = capsys.readouterr().out  # an option between overrides is fine
    assert "actor_rollout_ref.rollout.n=4" in out and "trainer.total_training_steps=3" in out
    assert main(["--config", path, "--dry-run", "verl.n_gpu=2"]) == 2
    assert "n_gpus_per_node" in capsys.readouterr().err  # did you mean


def test_paths_are_absolute_for_workers_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = small_config(out="r")
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"model": "models/m"})}
    )
    run = plan(config)
    assert all(Path(p).is_absolute() for p in (run.train_file, run.agent_loops, run.settings))
    assert f"actor_rollout_ref.model.path={tmp_path / 'models' / 'm'}" in run.command
    hub = plan(
        small_config(out="r").model_copy(
            update={"verl": config.verl.model_copy(update={"model": "Qwen/Qwen3-1.7B"})}
        )
    )
    assert "actor_rollout_ref.model.path=Qwen/Qwen3-1.7B" in hub.command  # a hub id as given


def test_docs_key_table_names_every_emitted_key():
    """docs/scale.md's "keys that matter" names every key the launcher emits (with the
    ``actor.``/``rollout.`` short forms it uses), so the table cannot fall behind the code."""
    text = (ROOT / "docs" / "scale.md").read_text()
    section = text[text.index("### The keys that matter") : text.index("### GPUs")]
    section = section.replace("`+", "`")
    config = small_config(loss="dr_grpo").model_copy(
        update={
            "verl": small_config().verl.model_copy(
                update={"lora": True, "chat_template_kwargs": {"enable_thinking": False}}
            )
        }
    )
    short = {"actor_rollout_ref.actor.": "actor.", "actor_rollout_ref.rollout.": "rollout."}
    for key in overrides(config):
        name = key.lstrip("+").removeprefix("data.apply_chat_template_kwargs.")
        for long, abbrev in short.items():
            name = name.replace(long, abbrev)
        name = {"enable_thinking": "data.apply_chat_template_kwargs"}.get(name, name)
        assert f"`{name}" in section or f"`{name.rsplit('.', 1)[-1]}`" in section, key
