"""The verl backend against verl 0.9.1 itself, on CPU (``make test-verl``; skipped without verl).

verl's trainer needs GPUs, but everything it does with our files runs here: Hydra composes
``ppo_trainer`` with the launcher's overrides and verl validates the result; verl's dataset class
reads the exported parquet; the agent loop is built from ``agent_loops.yaml`` the way verl's
``AgentLoopWorker`` builds it and plays a row on a scripted token server with real HTTP tool
calls; verl's reward loader loads ``compute_score`` by path and scores the rollout the way its
naive reward manager does.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest

verl = pytest.importorskip("verl")

import hydra  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    AgentLoopOutput,
    DictConfigWrap,
    ToolListWrap,
)
from verl.trainer.ppo.reward import get_custom_reward_fn  # noqa: E402
from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: E402
from verl.utils.config import validate_config  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402

from tests.helpers.tiny_model import tiny_tokenizer  # noqa: E402
from tests.helpers.token_server import CHATML_THINK, ScriptedTokenServer  # noqa: E402
from tests.helpers.verl_rows import small_config, solving_replies  # noqa: E402
from timely.config import load_config  # noqa: E402
from timely.train.verl.config import VerlConfig  # noqa: E402
from timely.train.verl.launch import launch, plan  # noqa: E402
from timely.train.verl.rollout import row_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"

pytestmark = pytest.mark.timeout(300)


class _Server:
    def __init__(self, inner: ScriptedTokenServer) -> None:
        self.inner, self.requests = inner, inner.requests

    async def generate(self, request_id, **kwargs):
        return await self.inner.generate(request_id, **kwargs)


def play_as_verl_does(entry, cfg, server, tok, item) -> AgentLoopOutput:
    """One dataset row played by the agent loop that ``entry`` (a line of the launcher's
    agent_loops.yaml) names, instantiated with the arguments verl's AgentLoopWorker passes."""

    async def rollout() -> AgentLoopOutput:
        loop = hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=server,
            tokenizer=tok,
            processor=None,
            hf_model_type=None,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),
        )
        kwargs = {k: v for k, v in item.items() if k not in ("agent_name", "dummy_tensor")}
        return await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)

    return asyncio.run(rollout())


def verl_config(overrides: list[str]):
    """What ``python -m verl.trainer.main_ppo OVERRIDES`` composes, validated as it validates."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    validate_config(
        cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
    )
    return cfg


@pytest.mark.parametrize("name", ["verl_qwen3_1p7b.yaml", "verl_qwen3_8b.yaml"])
def test_shipped_configs_compose_and_validate_in_verl(name, tmp_path):
    config = load_config(VerlConfig, str(ROOT / "configs" / "train" / name), [])
    config = config.model_copy(update={"out": str(tmp_path / "run")})
    cfg = verl_config(plan(config).command[3:])
    rollout = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and rollout.n == 8
    assert rollout.agent.default_agent_loop == "timely_agent"
    assert rollout.prompt_length == config.verl.prompt_length
    assert rollout.response_length == config.verl.response_length
    assert cfg.trainer.n_gpus_per_node == config.verl.n_gpus_per_node


def test_a_launched_run_plays_and_scores_a_row_through_verls_own_machinery(tmp_path):
    tok = tiny_tokenizer()
    config = small_config(out=str(tmp_path / "run"))
    seen = {}

    def verl_on_cpu(command: list[str], log: Path) -> int:
        cfg = verl_config(command[3:])
        dataset = RLHFDataset(cfg.data.train_files, tok, cfg.data)
        item = dataset[0]
        task, _ = row_task(item["extra_info"])
        # A plain object, as verl's LLMServerClient is: hydra would turn a dataclass into a config.
        server = _Server(ScriptedTokenServer(tok, solving_replies(task)))
        # AgentLoopWorker: the registry entry from agent_loop_config_path, instantiated per row.
        entries = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
        entry = {e.name: e for e in entries}[item["agent_name"]]

        out = play_as_verl_does(entry, cfg, server, tok, item)
        seen["out"], seen["server"], seen["as_dict"] = out, server, out.as_dict()
        # verl's naive reward manager: extra_info with the loop's extra_fields merged in.
        score = get_custom_reward_fn(cfg)
        extra_info = dict(item["extra_info"])
        extra_info.update(out.extra_fields.items())
        seen["reward"] = score(
            data_source=item["data_source"],
            solution_str=tok.decode(out.response_ids, skip_special_tokens=True),
            ground_truth=item["reward_model"]["ground_truth"],
            extra_info=extra_info,
        )
        seen["command"] = command
        return 0

    assert launch(config, tokenizer=tok, runner=verl_on_cpu, say=lambda s: None) == 0
    out, server = seen["out"], seen["server"]
    assert server.requests, (
        out.extra_fields["timely_error"],
        out.extra_fields["timely_end_reason"],
    )
    assert out.prompt_ids == server.requests[0]["prompt_ids"]
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    assert 0 < sum(out.response_mask) < len(out.response_mask)  # tool tokens masked
    f = out.extra_fields
    assert f["timely_score"] == 1.0 and f["timely_compliant"], f["timely_end_reason"]
    assert f["timely_tool_s"] > 0
    assert out.metrics.tool_calls > 0  # measured around the real HTTP calls
    assert seen["as_dict"]["responses"].shape[0] == len(out.response_ids)
    assert seen["reward"]["acc"] == 1.0 and seen["reward"]["score"] > 1.0
    assert seen["reward"]["on_time"] == 1.0
    assert (
        shlex.split((plan(config).dir / "command.sh").read_text().splitlines()[1])
        == seen["command"]
    )


# Keys verl 0.9.1 has but does not read on our path, or that would restate its defaults.
INERT = (
    "actor_rollout_ref.rollout.multi_turn.",  # verl's ToolAgentLoop only
    "actor_rollout_ref.rollout.mode",
    "data.return_raw_chat",
    "data.truncation",
    "data.filter_overlong_prompts",
)


def _dr_grpo_lora_qwen3(tmp_path):
    config = load_config(
        VerlConfig,
        str(ROOT / "configs" / "train" / "verl_qwen3_1p7b.yaml"),
        ["rl.loss=dr_grpo", "verl.lora=true"],
    )
    return config.model_copy(update={"out": str(tmp_path / "run")})


def test_every_emitted_override_is_read_back_from_verls_resolved_config(tmp_path):
    from verl.utils.config import omega_conf_to_dataclass

    config = _dr_grpo_lora_qwen3(tmp_path)
    overrides = [o for o in plan(config).command[3:] if not o.startswith("hydra.")]
    # verl validates the whole (its LoRA check imports vLLM, so that part is left out here).
    verl_config([o for o in overrides if ".lora_" not in o and ".target_modules" not in o])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
        default = compose(config_name="ppo_trainer")
        for override in overrides:
            key = override.split("=", 1)[0]
            assert not key.lstrip("+").startswith(INERT), override
            if not key.startswith("+"):  # verl has the key (a '+' one adds to a dict it reads)
                parent, _, leaf = key.rpartition(".")
                assert leaf in OmegaConf.select(default, parent).keys(), key
            alone = compose(config_name="ppo_trainer", overrides=[override])
            # What verl resolves with every override is what this one sets: nothing later
            # (another key, an interpolation, validate_config) replaces it.
            assert OmegaConf.select(cfg, key.lstrip("+")) == OmegaConf.select(
                alone, key.lstrip("+")
            ), override
    # Read through verl's typed configs, as its workers read them.
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.loss_agg_mode == "seq-mean-token-sum-norm"
    assert actor.loss_scale_factor == config.verl.response_length  # dr_grpo's constant
    rollout = cfg.actor_rollout_ref.rollout  # its dataclass wants vLLM installed
    assert rollout.n == 8 and rollout.calculate_log_probs is True  # verl's default, relied on
    model = cfg.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "sdpa"
    assert model.use_remove_padding is False
    assert model.lora_rank == 16 and list(model.target_modules) == list(
        config.rl.lora.target_modules
    )
    assert dict(cfg.data.apply_chat_template_kwargs) == {"enable_thinking": False}
    assert cfg.algorithm.norm_adv_by_std_in_grpo is False


def test_the_actor_loads_the_model_with_sdpa_where_verls_default_needs_flash_attn(tmp_path):
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.model import get_hf_auto_model_class

    from tests.helpers.tiny_model import tiny_model

    tok = tiny_tokenizer()
    model_dir = tmp_path / "model"
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    config = small_config(out=str(tmp_path / "run"))
    config = config.model_copy(
        update={"verl": config.verl.model_copy(update={"model": str(model_dir)})}
    )
    ours = [o for o in plan(config).command[3:] if ".model." in o]

    def actor_module(overrides):
        """What verl's FSDP engine loads (transformer_impl._build_module), on CPU."""
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=overrides)
        hf = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
        auto = get_hf_auto_model_class(hf_config=hf.hf_config)
        return auto.from_pretrained(hf.local_path, config=hf.hf_config)

    assert actor_module(ours).config._attn_implementation == "sdpa"
    default = [o for o in ours if o.startswith("actor_rollout_ref.model.path=")]
    with pytest.raises(ImportError, match="(?i)flash"):  # verl's default, no flash-attn here
        actor_module(default)


def test_the_chat_template_kwargs_reach_every_prompt_of_the_rollout(tmp_path):
    tok = tiny_tokenizer(CHATML_THINK)
    config = small_config(out=str(tmp_path / "run"))
    config = config.model_copy(
        update={
            "verl": config.verl.model_copy(
                update={"chat_template_kwargs": {"enable_thinking": False}}
            )
        }
    )
    seen = {}

    def verl_on_cpu(command, log):
        cfg = verl_config(command[3:])
        item = RLHFDataset(cfg.data.train_files, tok, cfg.data)[0]
        task, _ = row_task(item["extra_info"])
        server = _Server(ScriptedTokenServer(tok, solving_replies(task)))
        entry = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)[0]

        seen["out"] = play_as_verl_does(entry, cfg, server, tok, item)
        seen["requests"] = server.requests
        return 0

    assert launch(config, tokenizer=tok, runner=verl_on_cpu, say=lambda s: None) == 0
    prompts = [tok.decode(r["prompt_ids"]) for r in seen["requests"]]
    assert len(prompts) >= 2
    for prompt in prompts:  # the first prompt and every later turn's
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), prompt[-80:]
    assert seen["out"].extra_fields["timely_score"] == 1.0
