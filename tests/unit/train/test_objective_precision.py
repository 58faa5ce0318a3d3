"""bf16 rollouts: the trainer recomputes the old log-probs in fp32, so the first update's ratio is
exactly 1, and logs how far the rollout's own log-probs were (tiny random models only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.unit.train.test_grpo import (  # noqa: F401  (fixtures)
    _lora_tiny,
    calculator_model,
    scripted_base,
    tiny_config,
)
from timely.train.config import RLConfig
from timely.train.objective import (
    ROLLOUT_MISMATCH_FIELDS,
    build_batch,
    policy_step,
    sample_logprobs,
    with_trainer_logprobs,
)
from timely.train.rl_record import TIMING_FIELDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lora(tok):
    return _lora_tiny(tok, seed=3)


def _bf16_batch(model, n=4, length=48, prompt=20):
    """Rows whose recorded log-probs were computed under bf16 autocast, as bf16 rollouts record."""
    generator = torch.Generator().manual_seed(7)
    ids = [torch.randint(3, 250, (length,), generator=generator).tolist() for _ in range(n)]
    masks = [[0] * prompt + [1] * (length - prompt) for _ in range(n)]
    rows = build_batch(ids, masks, [[0.0] * length] * n, [1.0, -1.0, 0.5, -0.5][:n],
                       loss="grpo", max_tokens=length)  # fmt: skip
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        flat, _ = sample_logprobs(model, rows, 1.0)
    recorded = []
    for row, values in zip(rows, flat.float().split([r.n_tokens for r in rows]), strict=True):
        it = iter(values.tolist())
        recorded.append([next(it) if m else 0.0 for m in row.mask])
    return build_batch(ids, masks, recorded, [1.0, -1.0, 0.5, -0.5][:n], loss="grpo",
                       max_tokens=length)  # fmt: skip


def test_recomputed_old_logprobs_make_the_first_ratio_exactly_one(tok):
    model = _lora(tok)
    net = model.get_base_model()
    config = RLConfig(micro_batch_size=2, rollout_precision="bf16")
    samples = _bf16_batch(net)
    # Against the bf16 records the ratio is off by the precision gap...
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    raw = policy_step(net, optimizer, samples, config)
    assert raw.ratio_dev > 0
    # ...against the trainer's recompute it is exactly 1, and the gap is what is logged.
    fixed, metrics = with_trainer_logprobs(net, samples, config)
    assert set(metrics) == set(ROLLOUT_MISMATCH_FIELDS)
    stats = policy_step(net, optimizer, fixed, config)
    assert stats.ratio_dev == 0.0 and stats.ratio_dev_max == 0.0
    mean, most = metrics["rollout_logprob_diff_mean"], metrics["rollout_logprob_diff_max"]
    assert 0 < mean <= most
    gaps = [
        abs(a - b)
        for s, f in zip(samples, fixed, strict=True)
        for a, b, m in zip(s.old_logprobs, f.old_logprobs, s.mask, strict=True)
        if m
    ]
    assert mean == pytest.approx(sum(gaps) / len(gaps), rel=1e-5) and most == max(gaps)
    assert all(
        f.mask == s.mask and f.token_ids == s.token_ids for f, s in zip(fixed, samples, strict=True)
    )


def test_an_empty_batch_has_no_mismatch(tok):
    net = _lora(tok).get_base_model()
    samples, metrics = with_trainer_logprobs(net, [], RLConfig(rollout_precision="bf16"))
    assert samples == [] and set(metrics.values()) == {None}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_bf16_rollout_run_logs_the_mismatch_and_the_throughput(tmp_path, request):
    from timely.train.grpo import run_rl

    base = request.getfixturevalue("scripted_base")
    config = tiny_config(steps=1, prompts_per_step=1, group_size=3, rollout_precision="bf16")
    run_rl(config, tmp_path, init=None, base_model=base, threads=1)
    (row,) = _lines(tmp_path / "metrics.jsonl")
    assert row["trained_tokens"] > 0  # the seeded tiny episodes sample something to train
    assert row["ratio_dev"] == 0.0 and row["ratio_dev_max"] == 0.0
    assert 0 < row["rollout_logprob_diff_mean"] <= row["rollout_logprob_diff_max"]
    assert row["rollout_unique_tokens"] > 0 and row["episodes_per_s"] > 0
    for key in ("processed_tokens", "reuse_share", "work_ratio", "processed_tokens_per_s"):
        assert f"rollout_{key}" in row
    assert "rollout_processed_tokens_per_s" in TIMING_FIELDS


def test_fp32_rollouts_keep_their_recorded_logprobs(tmp_path, request):
    from timely.train.grpo import run_rl

    base = request.getfixturevalue("scripted_base")
    config = tiny_config(steps=1, prompts_per_step=1, group_size=3)
    assert config.rollout_precision == "fp32"
    run_rl(config, tmp_path, init=None, base_model=base, threads=1)
    (row,) = _lines(tmp_path / "metrics.jsonl")
    assert row["rollout_logprob_diff_mean"] is None and row["rollout_logprob_diff_max"] is None


def test_a_bf16_trainer_recomputes_fp32_rollouts_and_starts_at_ratio_one(tmp_path, request):
    # rl.precision=bf16 autocasts the updates: fp32 rollouts' log-probs are no longer the
    # trainer's, so they are recomputed (a mismatch is logged) and the first ratio is exactly 1.
    from timely.train.grpo import run_rl

    base = request.getfixturevalue("scripted_base")
    config = tiny_config(steps=1, prompts_per_step=1, group_size=3, precision="bf16")
    run_rl(config, tmp_path, init=None, base_model=base, threads=1)
    (row,) = _lines(tmp_path / "metrics.jsonl")
    assert row["trained_tokens"] > 0
    assert row["ratio_dev"] == 0.0 and row["ratio_dev_max"] == 0.0
    assert 0 < row["rollout_logprob_diff_mean"] <= row["rollout_logprob_diff_max"]


def test_the_bf16_trainer_keeps_the_logits_in_fp32_and_restores_the_head():
    """bf16 logits resolve 0.125 at |logit| ~ 20, so a peaked policy's log-probs would not
    move after a step; the trainer's head runs in fp32 and a small change shows."""
    from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
    from timely.train.objective import trainer_autocast

    model = tiny_model(len(tiny_tokenizer()))
    rows = _bf16_batch(model)
    head = model.get_output_embeddings()
    ids = torch.tensor([rows[0].token_ids])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16  # what plain autocast gives
    with torch.no_grad(), trainer_autocast(model, True):
        assert model(input_ids=ids).logits.dtype == torch.float32
        before, _ = sample_logprobs(model, rows, 1.0)
        head.weight.mul_(1.0 + 1e-4)
        after, _ = sample_logprobs(model, rows, 1.0)
        head.weight.div_(1.0 + 1e-4)
    assert not torch.equal(before, after)
    assert "forward" not in vars(head)  # the module's own forward again
    with torch.no_grad(), trainer_autocast(model, False):
        assert model(input_ids=ids).logits.dtype == torch.float32
