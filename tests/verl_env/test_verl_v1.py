"""The verl backend on verl 0.9.1's default (v1) trainer path, on CPU (``make test-verl``).

``trainer.use_v1`` is verl's default: its agent-loop worker (``AgentLoopWorkerTQ``) runs a
prompt's ``rollout.n`` sessions as one group, scores them through a reward worker, post-processes
each rollout into TransferQueue rows with tags (``min_global_steps``/``max_global_steps``, which
the trainer turns into an integer array every step), and marks a group failed when a session
raises. These tests run that worker's own code (``_run_prompt``, ``_run_agent_loop``,
``_agent_loop_postprocess``, ``_compute_score``) without Ray: the worker object is built
without its actor wrapper, TransferQueue's two write calls are recorded in memory, the reward
worker calls the run's ``compute_score`` as verl's naive reward manager does, and the token server
is scripted. Then the trainer's per-step bookkeeping runs on what the worker wrote.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")
tq = pytest.importorskip("transfer_queue")

from omegaconf import OmegaConf  # noqa: E402
from tensordict import NonTensorStack, TensorDict  # noqa: E402
from verl.experimental.agent_loop import agent_loop as verl_agent_loop  # noqa: E402
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage  # noqa: E402
from verl.trainer.ppo.reward import get_custom_reward_fn  # noqa: E402
from verl.trainer.ppo.v1 import agent_loop_tq  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402

from tests.helpers.tiny_model import tiny_tokenizer  # noqa: E402
from tests.helpers.token_server import ScriptedTokenServer  # noqa: E402
from tests.helpers.verl_rows import small_config, solving_replies  # noqa: E402
from tests.verl_env.test_verl_backend import verl_config  # noqa: E402
from timely.train.verl.launch import launch  # noqa: E402
from timely.train.verl.rollout import row_task  # noqa: E402

pytestmark = pytest.mark.timeout(300)


class _Server:
    """verl's LLMServerClient: tags each output with the weight version it was sampled under
    (``extra_fields``, as ``llm_server.py`` does); the version moves between calls.

    ``versions[i]`` is the version of a session's i-th call (the last one repeats), counted per
    request id: the sessions of a group run concurrently, so a global call count would give a
    session that happened to start late a later first version.
    """

    def __init__(self, inner: ScriptedTokenServer, versions: list[int] | None) -> None:
        self.inner, self.versions = inner, versions
        self.calls: dict[str, int] = {}

    async def generate(self, request_id, **kwargs):
        out = await self.inner.generate(request_id, **kwargs)
        n = self.calls.get(request_id, 0)
        if self.versions is not None:
            step = self.versions[min(n, len(self.versions) - 1)]
            out.extra_fields = {"global_steps": step, "min_global_steps": step}
            out.extra_fields["max_global_steps"] = step
        self.calls[request_id] = n + 1
        return out


class _RewardWorker:
    """verl's reward-loop worker with the naive manager: ``compute_score`` of the run's reward
    file, the rollout's ``extra_fields`` merged into the row's ``extra_info``."""

    def __init__(self, score) -> None:
        self.score = score
        self.compute_score = SimpleNamespace(remote=self._remote)

    async def _remote(self, data):
        info = dict(data.non_tensor_batch["extra_info"][-1])
        info.update(data.non_tensor_batch["tool_extra_fields"][-1])
        result = self.score(
            data_source=data.non_tensor_batch["data_source"][-1],
            solution_str="",
            ground_truth=data.non_tensor_batch["reward_model"][-1]["ground_truth"],
            extra_info=info,
        )
        return {"reward_score": result["score"], "reward_extra_info": result}


class _Queue:
    """TransferQueue's two writes of the v1 worker, kept in memory."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.rows: dict[str, dict] = {}
        self.tags: dict[str, dict] = {}

    async def kv_put(self, key, partition_id, tag):
        self.status[key] = tag["status"]

    async def kv_batch_put(self, keys, fields, tags, partition_id):
        for i, key in enumerate(keys):
            self.rows[key] = fields[i]
            self.tags[key] = tags[i]


def v1_worker(cfg, tok, server, reward):
    """``AgentLoopWorkerTQ`` as verl builds it, less Ray and the model download."""
    cls = agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class
    worker = object.__new__(cls)
    worker.config = cfg
    worker.llm_client = server
    worker.tokenizer, worker.processor, worker.hf_model_type = tok, None, None
    worker.dataset_cls, worker.tools, worker.mm_processor_kwargs = RLHFDataset, [], {}
    worker.distillation_enabled = False
    worker.reward_loop_worker_handles = [_RewardWorker(reward)]
    worker.background_tasks = set()
    for entry in OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path):
        verl_agent_loop._agent_loop_registry[entry.name] = entry
    return worker


def run_group(worker, item, *, uid: str, global_steps: int, queue: _Queue, monkeypatch):
    """One prompt group through the worker's ``_run_prompt``, as ``generate_sequences`` spawns."""
    monkeypatch.setattr(tq, "async_kv_put", queue.kv_put)
    monkeypatch.setattr(tq, "async_kv_batch_put", queue.kv_batch_put)
    prompt = {k: v for k, v in item.items() if k != "dummy_tensor"}
    prompt.update(uid=uid, global_steps=global_steps)
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    trajectory = {"step": global_steps, "sample_index": 0, "rollout_n": 0, "validate": False}
    asyncio.run(worker._run_prompt(prompt, sampling, trajectory=trajectory))


def step_metrics(cfg, queue: _Queue, keys, *, global_steps: int, monkeypatch) -> dict:
    """``PPOTrainer._compute_metrics`` of verl's v1 trainer on the rows the worker wrote, read
    back as TransferQueue returns them (jagged tensors per field)."""
    from verl.trainer.ppo.metric_utils import RolloutMoELoadBalanceMetricsAccumulator
    from verl.trainer.ppo.v1 import trainer_base

    def kv_batch_get(keys, partition_id, select_fields):
        rows = [queue.rows[k] for k in keys]
        fields = {}
        for name in select_fields:
            values = [r[name] for r in rows if name in r]
            if len(values) < len(rows):
                continue  # a field this step did not write (values: no critic)
            if isinstance(values[0], torch.Tensor):
                fields[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            else:
                fields[name] = NonTensorStack(*values)
        return TensorDict(fields, batch_size=[len(rows)])

    monkeypatch.setattr(trainer_base.tq, "kv_batch_get", kv_batch_get)
    trainer = SimpleNamespace(
        config=cfg,
        use_critic=False,
        _rollout_moe_lb_metrics_accumulator=RolloutMoELoadBalanceMetricsAccumulator(),
        _get_n_gpus_for_throughput=lambda: 1,
    )
    batch = SimpleNamespace(keys=keys, partition_id="train", tags=[queue.tags[k] for k in keys])
    metrics: dict = {}
    trainer_base.PPOTrainer._compute_metrics(
        trainer, batch, metrics, {"step": 1.0, "gen": 0.5}, global_steps=global_steps, epoch=0
    )
    return metrics


def launched(tmp_path: Path, check, expect: int = 0, **verl_settings) -> None:
    """Launch a small run whose "verl" is ``check(cfg, tok, item)`` (tool servers running)."""
    tok = tiny_tokenizer()
    config = small_config(out=str(tmp_path / "run"), group_size=2)
    config = config.model_copy(update={"verl": config.verl.model_copy(update=verl_settings)})

    def verl_on_cpu(command: list[str], log: Path) -> int:
        cfg = verl_config(command[3:])
        item = RLHFDataset(cfg.data.train_files, tok, cfg.data)[0]
        check(cfg, tok, item)
        return 0

    said: list[str] = []
    assert launch(config, tokenizer=tok, runner=verl_on_cpu, say=said.append) == expect, said


def test_v1_worker_writes_rows_the_trainer_steps_on(tmp_path, monkeypatch):
    queue = _Queue()
    cfg_seen = {}

    def check(cfg, tok, item):
        cfg_seen["cfg"] = cfg
        task, _ = row_task(item["extra_info"])
        # The weights move from version 3 to 4 during each episode (an async weight sync).
        server = _Server(ScriptedTokenServer(tok, solving_replies(task) * 2), [3, 4])
        worker = v1_worker(cfg, tok, server, get_custom_reward_fn(cfg))
        run_group(worker, item, uid="g0", global_steps=3, queue=queue, monkeypatch=monkeypatch)

    launched(tmp_path, check)
    assert queue.status == {"g0": "finished"}
    assert sorted(queue.rows) == ["g0_0_0", "g0_1_0"]  # rollout.n=2 sessions
    tags = [queue.tags[k] for k in sorted(queue.tags)]
    assert all(t["status"] == "success" for t in tags)
    assert [t["min_global_steps"] for t in tags] == [3, 3]  # the first call's version
    assert {t["max_global_steps"] for t in tags} <= {3, 4}  # the last call's
    assert 4 in {t["max_global_steps"] for t in tags}

    # The trainer's step on what the worker wrote: GRPO's advantage over the group, then its
    # per-step bookkeeping (PPOTrainer._compute_metrics: token counts, turns, and the integer
    # arrays of weight versions that a missing min/max_global_steps broke).
    keys = sorted(queue.rows)
    for key in keys:
        row = queue.rows[key]
        row["token_level_rewards"] = row["rm_scores"]
    scores = [queue.rows[k]["rm_scores"] for k in keys]
    mask = [queue.rows[k]["response_mask"] for k in keys]
    padded = torch.nn.utils.rnn.pad_sequence
    groups = np.array(["g0"] * len(keys))
    adv, ret = compute_grpo_outcome_advantage(
        padded(scores, batch_first=True), padded(mask, batch_first=True).float(), groups
    )
    for i, key in enumerate(keys):
        width = len(mask[i])
        queue.rows[key]["advantages"], queue.rows[key]["returns"] = adv[i, :width], ret[i, :width]
    metrics = step_metrics(cfg_seen["cfg"], queue, keys, global_steps=4, monkeypatch=monkeypatch)
    assert metrics["training/off_policy/trajectory_spans/max"] == 2  # versions 3..4
    assert metrics["training/off_policy/trajectory_staleness_worst/max"] == 0  # (4 - 1) - 3
    assert metrics["training/num_turns/min"] >= 2  # the prompt and an answer, at least
    assert metrics["critic/score/mean"] > 1.0  # solved on time: the budget bonus on top
    extra = queue.rows[keys[0]]["extra_fields"]
    assert extra["timely_failed_group_share"] == 0.0
    assert extra["reward_extra_info"]["acc"] == 1.0


def test_a_rollout_cut_before_its_first_sample_is_one_masked_token(tmp_path, monkeypatch):
    queue = _Queue()
    cfg_seen = {}

    def check(cfg, tok, item):
        cfg_seen["cfg"] = cfg
        # A budget that is gone before the first token: nothing is ever sampled.
        item = dict(item)
        item["extra_info"] = {**item["extra_info"], "budget_s": 1e-6}
        server = _Server(ScriptedTokenServer(tok, ["never<|im_end|>"]), None)
        worker = v1_worker(cfg, tok, server, get_custom_reward_fn(cfg))
        run_group(worker, item, uid="g1", global_steps=5, queue=queue, monkeypatch=monkeypatch)
        assert server.inner.requests == []

    launched(tmp_path, check)
    assert queue.status == {"g1": "finished"}  # not an IndexError in as_dict()
    for key, row in queue.rows.items():
        assert row["responses"].shape == (1,) and row["response_mask"].tolist() == [0], key
        assert row["rm_scores"].shape == (1,)  # the reward sits on the one token
        assert row["rollout_log_probs"].tolist() == [0.0]
        # No server output: the weight version is the step the rollout started at.
        assert queue.tags[key]["min_global_steps"] == queue.tags[key]["max_global_steps"] == 5
        row["token_level_rewards"] = row["rm_scores"]
        row["advantages"] = row["returns"] = torch.zeros(1)  # a group without spread
    metrics = step_metrics(
        cfg_seen["cfg"], queue, sorted(queue.rows), global_steps=6, monkeypatch=monkeypatch
    )
    assert metrics["response_length/mean"] == 1.0
    assert metrics["training/off_policy/trajectory_staleness/max"] == 0  # (6 - 1) - 5


def test_failed_groups_are_counted_and_stop_the_run_past_the_share(tmp_path, monkeypatch):
    queue = _Queue()
    run_dir = tmp_path / "run"

    def check(cfg, tok, item):
        task, _ = row_task(item["extra_info"])
        settings_path = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
        settings = json.loads(Path(settings_path[0].settings_path).read_text())
        assert settings["max_failed_share"] == 0.25 and settings["failed_min_groups"] == 2
        ok = _Server(ScriptedTokenServer(tok, solving_replies(task) * 2), [1])
        good = v1_worker(cfg, tok, ok, get_custom_reward_fn(cfg))
        run_group(good, item, uid="ok", global_steps=1, queue=queue, monkeypatch=monkeypatch)

        def no_score(**_):  # the reward refuses the rollout (its missing-key error)
            raise KeyError("timely_score")

        bad = v1_worker(cfg, tok, ok, no_score)
        run_group(bad, item, uid="bad", global_steps=1, queue=queue, monkeypatch=monkeypatch)
        assert (run_dir / "ABORTED").is_file()  # 1 of 2 groups failed: over 25%
        # Every later rollout is refused, so the run cannot go on training on what is left.
        run_group(good, item, uid="later", global_steps=2, queue=queue, monkeypatch=monkeypatch)

    # The launcher exits non-zero with the reason once the abort file is there.
    launched(tmp_path, check, expect=1, max_failed_share=0.25, failed_min_groups=2)
    assert queue.status == {"ok": "finished", "bad": "failure", "later": "failure"}
    assert "1 of 2 prompt groups failed" in (run_dir / "ABORTED").read_text()
    logged = [json.loads(line) for line in (run_dir / "logs" / "failed-groups.jsonl").open()]
    assert logged[0]["uid"] == "bad" and "timely_score" in logged[0]["error"]
