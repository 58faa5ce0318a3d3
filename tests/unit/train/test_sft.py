"""SFT: masked loss, data order, schedule, and resuming a killed run exactly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.policies.hf_models import verify_adapter
from timely.train.checkpoint import latest_checkpoint
from timely.train.config import DataConfig, LoraSettings, SFTConfig
from timely.train.data import build_dataset
from timely.train.sft import (
    batch_indices,
    collate,
    load_examples,
    lr_factor,
    prepare_model,
    run_sft,
    summed_loss,
    turn_start_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random llama and its byte-level tokenizer, saved as an HF model directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer()
    tiny_model(len(tok), seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_rows(path, n: int, seed: int = 0) -> str:
    """``n`` random rows: a prompt (mask 0) then a reply (mask 1), like an SFT example."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        prompt, reply = int(rng.integers(8, 24)), int(rng.integers(4, 12))
        ids = rng.integers(3, 200, prompt + reply).tolist()
        rows.append({"input_ids": ids, "loss_mask": [0] * prompt + [1] * reply})
    rows.append({"input_ids": list(range(3, 500)), "loss_mask": [1] * 497})  # too long: dropped
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def config(model: str, **kw) -> SFTConfig:
    base = dict(model=model, lr=3e-2, warmup_steps=0, batch_size=4, micro_batch_size=2)
    return SFTConfig(**(base | {"max_length": 128, "save_every": 2} | kw))


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_loss_decreases_on_a_fixed_batch(tiny_dir, tmp_path):
    data = write_rows(tmp_path / "rows.parquet", 4)  # one batch: every step sees the same rows
    run = tmp_path / "run"
    out = run_sft(config(tiny_dir, epochs=5), data, run, threads=1, progress=False)
    curve = losses(run)
    assert len(curve) == 5 and curve[-1] < curve[0] - 0.5
    assert all(b < a for a, b in zip(curve, curve[1:], strict=False))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "tokens", "grad_norm", "seconds"} <= set(record)
    assert out == run / "adapter" and (run / "loss.png").stat().st_size > 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == tiny_dir
    assert json.loads((run / "sft.json").read_text())["dropped_long"] == 1
    verify_adapter(out, required=True)  # the adapter's weights are hashed where it is written


def test_a_resumed_run_equals_the_uninterrupted_one(tiny_dir, tmp_path):
    data = write_rows(tmp_path / "rows.parquet", 6)  # 4 steps of 4 cross an epoch boundary
    cfg = config(tiny_dir, epochs=2.5, lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_sft(cfg, data, straight, threads=1, progress=False)
    run_sft(cfg, data, killed, threads=1, max_steps=2, progress=False)
    assert latest_checkpoint(killed).name == "step-000002" and not (killed / "adapter").exists()
    run_sft(cfg, data, killed, threads=1, progress=False)  # a fresh call continues at step 3
    assert len(losses(straight)) == 4 and losses(killed) == losses(straight)
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_sft(cfg, data, killed, threads=1, progress=False) == killed / "adapter"  # done


def test_full_fine_tuning_saves_the_model(tiny_dir, tmp_path):
    data = write_rows(tmp_path / "rows.parquet", 4)
    out = run_sft(config(tiny_dir, epochs=1, lora=None), data, tmp_path / "run", progress=False)
    assert out.name == "model" and (out / "config.json").is_file()
    assert (out / "tokenizer_config.json").is_file()


def test_the_loss_counts_only_masked_tokens():
    model = tiny_model(64, seed=2)
    ids, attention, labels, _ = collate([[5, 6, 7, 8], [9, 10]], [[0, 0, 1, 1], [0, 1]], pad_id=2)
    assert labels.tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert attention.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    logits = model(input_ids=ids, attention_mask=attention).logits
    expected = F.cross_entropy(
        logits[0, 1:3], torch.tensor([7, 8]), reduction="sum"
    ) + F.cross_entropy(logits[1, 0:1], torch.tensor([10]), reduction="sum")
    assert torch.allclose(summed_loss(model, ids, attention, labels), expected, atol=1e-5)


def test_the_first_token_of_each_turn_carries_the_decision_weight():
    # Two assistant turns: tokens 1-2 and 4-5 (token 3 is a tool result).
    assert turn_start_weights([0, 1, 1, 0, 1, 1], 5.0) == [0, 5, 1, 0, 5, 1]
    assert turn_start_weights([1, 1, 0], 3.0) == [3, 1, 0]
    assert turn_start_weights([0, 1, 1], 1.0) == [0, 1, 1]
    # The last turn's first token (the answer) has the stop weight.
    assert turn_start_weights([0, 1, 1, 0, 1, 1], 5.0, 9.0) == [0, 5, 1, 0, 9, 1]
    assert turn_start_weights([0, 1, 0], 5.0, 9.0) == [0, 9, 0]


def test_the_weighted_loss_weights_each_token_cross_entropy():
    model = tiny_model(64, seed=2)
    mask = [0, 1, 1, 0, 1, 1]
    ids, attention, labels, weights = collate(
        [[5, 6, 7, 8, 9, 10]], [mask], pad_id=2, weights=[turn_start_weights(mask, 4.0)]
    )
    assert weights.tolist() == [[0, 4, 1, 0, 4, 1]]
    logits = model(input_ids=ids, attention_mask=attention).logits
    each = F.cross_entropy(logits[0, [0, 1, 3, 4]], torch.tensor([6, 7, 9, 10]), reduction="none")
    expected = (each * torch.tensor([4.0, 1.0, 4.0, 1.0])).sum()
    assert torch.allclose(summed_loss(model, ids, attention, labels, weights), expected, atol=1e-5)
    # Weight 1 is the plain summed loss.
    *_, ones = collate([[5, 6, 7, 8, 9, 10]], [mask], pad_id=2)
    assert ones.tolist() == [mask]
    plain = summed_loss(model, ids, attention, labels)
    assert torch.allclose(summed_loss(model, ids, attention, labels, ones), plain, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    ids, attention, labels, _ = collate(
        [[5, 6, 7, 8, 9], [9, 10, 11]], [[0, 0, 1, 1, 1], [0, 1, 1]], 2
    )
    grads = []
    for checkpointing in (False, True):
        model, _ = prepare_model(config(tiny_dir, gradient_checkpointing=checkpointing))
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        summed_loss(model, ids, attention, labels).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_rows_answered_early_are_repeated_early_copies_times(tmp_path):
    rows = [
        {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1], "early": True},
        {"input_ids": [8, 9], "loss_mask": [0, 1], "early": False},
        {"input_ids": [10, 11], "loss_mask": [0, 0], "early": True},  # no loss: dropped
    ]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    once = load_examples(path, max_length=64)
    assert once.input_ids == [[5, 6, 7], [8, 9]] and once.dropped_empty == 1
    three = load_examples(path, max_length=64, early_copies=3)
    assert three.input_ids == [[5, 6, 7]] * 3 + [[8, 9]]
    assert three.loss_mask == [[0, 1, 1]] * 3 + [[0, 1]]
    # A dataset without the column (older builds) has no early rows.
    plain = tmp_path / "plain.parquet"
    pq.write_table(
        pa.Table.from_pylist([{k: r[k] for k in ("input_ids", "loss_mask")} for r in rows]), plain
    )
    assert len(load_examples(plain, max_length=64, early_copies=3)) == 2


def test_data_order_is_one_permutation_per_epoch_from_the_seed():
    n, b = 10, 4
    stream = [i for step in range(5) for i in batch_indices(7, n, step, b)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new order every epoch
    assert batch_indices(7, n, 3, b) == stream[12:16]  # any step alone: same rows
    assert batch_indices(8, n, 0, b) != stream[:4]


def test_warmup_then_cosine_to_zero():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


@pytest.mark.slow
def test_two_lora_steps_on_the_embedded_model(tmp_path):
    data = DataConfig(tasks=("math/arithmetic-v1",), episodes_per_task=2, no_limit_share=0.0)
    build_dataset(data, tmp_path / "data", progress=False)
    run = tmp_path / "run"
    cfg = SFTConfig(lr=1e-3, warmup_steps=0, epochs=1, batch_size=1, micro_batch_size=1)
    out = run_sft(cfg, tmp_path / "data", run, threads=1, progress=False)  # robust on busy cores
    curve = losses(run)
    assert len(curve) == 2 and all(np.isfinite(curve))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "smollm2-135m"
