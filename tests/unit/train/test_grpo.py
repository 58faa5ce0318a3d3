"""Timely-RL: advantages, the aggregated clipped loss, the first-update ratio on real rollouts,
learning direction, whole runs on tiny models and kill-and-resume equivalence.

The run tests use a tiny random llama that leans toward a scripted calculator call and an
answer (``tests.helpers.scripted_model``): untrained, it plays real multi-turn tool episodes
whose outcomes vary (the digits are sampled with visible uncertainty, budgets cut some
rollouts), so groups have reward variance and the updates have something to learn from.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.scripted_model import ScriptedLM, scripted_model, tool_then_answer
from tests.helpers.tiny_model import tiny_model
from timely.clock import VirtualClock
from timely.errors import ConfigError
from timely.policies.base import Deadline
from timely.policies.hf import HFPolicy
from timely.rollout import Runtime
from timely.runrecord import iter_trajectories
from timely.train.config import LoraSettings, RLConfig
from timely.train.grpo import (
    batch_samples,
    episode_budget,
    episode_reward,
    rollout_batch,
    run_rl,
    trajectory_rows,
)
from timely.train.objective import (
    Sample,
    build_batch,
    group_advantages,
    policy_step,
    sample_logprobs,
    token_loss,
)
from timely.train.rl_record import TIMING_FIELDS
from timely.train.view import ViewForm
from timely.types import WALL_STAMPS, EndReason, Message

SCRIPTED = "test:scripted-tiny"
TINY_LORA = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Scripted(ScriptedLM):
    """The helper's scripted model with its lift written as one out-of-place ``index_put`` per
    assistant turn: the same values and the same gradients (the lifted logit is the best other
    logit plus the margin), but a few autograd nodes instead of one in-place write per lifted
    token, which costs seconds per backward over long multi-turn rows. A cache repeated for
    several rows (the trainer's shared-prefix pass) gets its seen ids repeated too."""

    def forward(self, input_ids, past_key_values=None, **kwargs):
        seen = getattr(past_key_values, "timely_seen_ids", None)
        if seen is not None and len(seen) != len(input_ids):  # a shared prefix's cache, repeated
            past_key_values.timely_seen_ids = seen.repeat_interleave(len(input_ids), dim=0)
        return super().forward(input_ids, past_key_values=past_key_values, **kwargs)

    def _lift(self, seen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        width, n_positions, h = seen.shape[1], logits.shape[1], len(self.header)
        by_turn: dict[int, list[tuple[int, int, int, float]]] = {}
        for row, ids in enumerate(seen.tolist()):
            ends = [
                i + h - 1
                for i, token in enumerate(ids)
                if token == self.header[0] and ids[i : i + h] == self.header
            ]
            for turn, end in enumerate(ends):
                script = self.scripts[min(turn, len(self.scripts) - 1)]
                for k, (target, margin) in enumerate(script[: max(0, width - end)]):
                    col = end + k - (width - n_positions)
                    if col >= 0:
                        by_turn.setdefault(turn, []).append((row, col, target, margin))
        for turn in sorted(by_turn):  # later turns overwrite earlier ones, as in the helper
            rows, cols, targets, margins = zip(*by_turn[turn], strict=True)
            rows, cols, targets = (torch.tensor(v) for v in (rows, cols, targets))
            others = logits[rows, cols].scatter(1, targets[:, None], float("-inf"))
            lifted = others.max(dim=1).values + torch.tensor(margins, dtype=logits.dtype)
            logits = logits.index_put((rows, cols, targets), lifted)
        return logits


def _scripted(tok, scripts):
    helper = scripted_model(tiny_model(len(tok)), tok, scripts)
    model = _Scripted(helper.inner, helper.header, helper.scripts).eval()
    # peft's causal-LM wrapper wants this; the scripted wrapper generates through HFPolicy only.
    model.prepare_inputs_for_generation = model.inner.prepare_inputs_for_generation
    return model


@pytest.fixture(scope="module")
def calculator_model(tok):
    return _scripted(tok, tool_then_answer("412 + 635", answer="1047"))


def scripted_loader(model, tok):
    """A ``load_model`` that answers ``SCRIPTED`` with the scripted tiny model."""
    import timely.policies.hf_models as hf_models

    real = hf_models.load_model

    def load(name, **kw):
        return (model, tok) if name == SCRIPTED else real(name, **kw)

    return load


@pytest.fixture
def scripted_base(monkeypatch, calculator_model, tok):
    """``base_model=SCRIPTED`` loads the scripted tiny model (run_rl copies it)."""
    import timely.policies.hf_models as hf_models

    monkeypatch.setattr(hf_models, "load_model", scripted_loader(calculator_model, tok))
    return SCRIPTED


RESUME = {"steps": 3, "prompts_per_step": 1, "save_every": 1}


def tiny_config(**overrides) -> RLConfig:
    settings = dict(
        tasks=("math/arithmetic-v1",),
        steps=2,
        prompts_per_step=2,
        group_size=4,
        budget_multipliers=(0.5, 1.5),
        no_limit_share=0.0,
        speed_factor=(0.5, 2.0),
        latencies=("constant:1.0",),
        time_modes=("push",),  # no get_duration schema: shorter byte-level prompts
        max_turns=2,
        max_new_tokens=96,
        temperature=0.7,
        lr=2e-3,
        warmup_steps=0,
        updates_per_batch=1,
        micro_batch_size=4,
        lora=TINY_LORA,
        save_every=1,
    )
    return RLConfig(**{**settings, **overrides})


# --- advantages -----------------------------------------------------------------------------------
def test_group_advantages_normalise_within_each_group():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3], [0.2, 0.5, 1.1, 0.0]])
    adv = group_advantages(rewards, "grpo")
    for g in (0, 2):
        r = rewards[g]
        std = math.sqrt(((r - r.mean()) ** 2).sum() / (len(r) - 1))  # unbiased, like TRL/verl
        np.testing.assert_allclose(adv[g], (r - r.mean()) / (std + 1e-4))
    np.testing.assert_allclose(adv[0], [0.866, -0.866, -0.866, 0.866], atol=1e-3)
    assert (adv[1] == 0.0).all()  # all equal: exactly zero, not float noise / eps
    np.testing.assert_array_equal(group_advantages(rewards, "dapo"), adv)
    dr = group_advantages(rewards, "dr_grpo")
    np.testing.assert_allclose(dr[0], [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_allclose(dr[2], rewards[2] - rewards[2].mean())
    assert (dr[1] == 0.0).all()


# --- the aggregated, masked loss ------------------------------------------------------------------
def _hand_batch():
    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor(
        [[0, 1, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    )
    old = -torch.rand(mask.shape, generator=gen) * 3 * mask
    new = (old + torch.randn(mask.shape, generator=gen) * 0.4) * mask  # ratios well past the clip
    ref = (old + torch.randn(mask.shape, generator=gen) * 0.2) * mask
    adv = torch.tensor([1.5, -0.7, 0.4, -1.2])
    return mask, old, new, ref, adv


def _direct_loss(loss, mask, old, new, ref, adv, clip_low, clip_high, beta, max_tokens):
    ratio = torch.exp(new - old)
    a = adv[:, None]
    per = -torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    per = per + beta * (torch.exp(ref - new) - (ref - new) - 1)
    m = mask.float()
    if loss == "grpo":
        return ((per * m).sum(1) / m.sum(1)).mean()
    if loss == "dapo":
        return (per * m).sum() / m.sum()
    return (per * m).sum() / (mask.shape[0] * max_tokens)


def _weighted_loss(samples, new, ref, clip_low, clip_high, beta):
    def flat(t, s, row):
        return torch.tensor([v for v, m in zip(t[row].tolist(), s.mask, strict=True) if m])

    total = torch.tensor(0.0)
    for row, s in enumerate(samples):
        old = torch.tensor([v for v, m in zip(s.old_logprobs, s.mask, strict=True) if m])
        adv = torch.full_like(old, s.advantage)
        per, _, _ = token_loss(
            flat(new, s, row), old, adv, clip_low=clip_low, clip_high=clip_high, beta=beta,
            ref=flat(ref, s, row),
        )  # fmt: skip
        total = total + (s.weight * per).sum()
    return total


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_weighted_token_loss_is_the_direct_aggregation(loss, beta):
    mask, old, new, ref, adv = _hand_batch()
    clip_low, clip_high, max_tokens = 0.2, (0.28 if loss == "dapo" else 0.2), 8
    ratio = torch.exp(new - old)[mask.bool()]
    assert ((ratio > 1 + clip_high) | (ratio < 1 - clip_low)).any()  # the clip is exercised
    samples = build_batch(
        mask.tolist(), mask.tolist(), old.tolist(), adv.tolist(), loss=loss, max_tokens=max_tokens
    )
    ours = _weighted_loss(samples, new, ref, clip_low, clip_high, beta)
    direct = _direct_loss(loss, mask, old, new, ref, adv, clip_low, clip_high, beta, max_tokens)
    torch.testing.assert_close(ours, direct)


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo"])
def test_an_episode_split_into_turn_rows_keeps_its_loss(loss):
    """The turns form (one row per turn) weighs an episode's tokens as the sequence form does."""
    mask, old, new, ref, adv = _hand_batch()
    whole = build_batch(
        mask.tolist(), mask.tolist(), old.tolist(), adv.tolist(), loss=loss, max_tokens=8
    )
    first, second = mask[0].clone(), mask[0].clone()
    first[3:], second[:3] = 0, 0  # row 0 as two turns: its tokens 1-2, then 3 and 5
    masks = [first.tolist(), second.tolist(), *mask[1:].tolist()]
    olds = [old[0].tolist(), old[0].tolist(), *old[1:].tolist()]
    split = build_batch(
        masks, masks, olds, [adv[0].item(), *adv.tolist()], loss=loss, max_tokens=8,
        episodes=[0, 0, 1, 2, 3],
    )  # fmt: skip
    new_rows = torch.cat([new[:1], new])
    ref_rows = torch.cat([ref[:1], ref])
    torch.testing.assert_close(
        _weighted_loss(split, new_rows, ref_rows, 0.2, 0.2, 0.0),
        _weighted_loss(whole, new, ref, 0.2, 0.2, 0.0),
    )


def test_clip_is_asymmetric_and_pessimistic():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, ratio, k3 = token_loss(new, old, adv, clip_low=0.2, clip_high=0.28)
    assert k3 is None
    # A > 0 gains at most up to 1 + clip_high; A < 0 is never clipped in its favour.
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8]))


# --- the optimizer step ---------------------------------------------------------------------------
def _lora_tiny(tok, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        tiny_model(len(tok), seed=seed),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    return model


def _fixed_rows(tok, n=4, length=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, len(tok), (length + 3 * i,), generator=gen).tolist() for i in range(n)]
    masks = [[0] * 10 + [1] * (len(r) - 10) for r in rows]
    return rows, masks


def _recorded(model, rows, masks, temperature):
    """The log-probs a sampler would have recorded with these weights."""
    probe = build_batch(rows, masks, [[0.0] * len(r) for r in rows], [1.0] * len(rows),
                        loss="dapo", max_tokens=1)  # fmt: skip
    out = []
    with torch.no_grad():
        for s in probe:
            flat, _ = sample_logprobs(model, [s], temperature)
            values = iter(flat.tolist())
            out.append([next(values) if m else 0.0 for m in s.mask])
    return out


def test_micro_batching_does_not_change_the_step(tok):
    config = RLConfig(lr=1e-2, micro_batch_size=1, temperature=0.8, loss="grpo")
    rows, masks = _fixed_rows(tok)
    results = []
    for micro, tokens in ((1, 2048), (3, 2048), (4, 2048), (4, 20)):  # 20: a token-bound split
        model = _lora_tiny(tok)
        recorded = _recorded(model, rows, masks, 0.8)  # off by 0.1: ratios != 1, gradients clip
        old = [
            [v - 0.1 * m for v, m in zip(r, mk, strict=True)]
            for r, mk in zip(recorded, masks, strict=True)
        ]
        samples = build_batch(rows, masks, old, [1.0, -0.5, 0.3, -1.0], loss="grpo", max_tokens=1)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        cfg = config.model_copy(update={"micro_batch_size": micro, "micro_batch_tokens": tokens})
        stats = policy_step(model, optimizer, samples, cfg)
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((stats, trained))
    (base, weights), *others = results
    for stats, trained in others:
        assert stats.loss == pytest.approx(base.loss, rel=1e-5)
        assert stats.grad_norm == pytest.approx(base.grad_norm, rel=1e-4)
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, weights[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", ["lora", "scripted"])
def test_a_shared_prefix_pass_gives_the_per_row_values_and_gradients(tok, which):
    """Rows sharing a prompt run it once; log-probs and gradients are those of separate rows."""
    if which == "lora":
        model = _lora_tiny(tok)
    else:
        model = _scripted(tok, tool_then_answer("1 + 2", answer="3"))
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, len(tok), (40,), generator=gen).tolist()
    if which == "scripted":  # an assistant header in the prompt: the lift acts on the rows
        prompt += tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    rows = [prompt + torch.randint(3, len(tok), (n,), generator=gen).tolist() for n in (9, 14, 5)]
    masks = [[0] * len(prompt) + [1] * (len(r) - len(prompt)) for r in rows]
    masks[1][len(prompt) + 2] = 0  # a gap, as a tool result would leave
    samples = build_batch(rows, masks, [[0.0] * len(r) for r in rows], [1.0, 1.0, 1.0],
                          loss="dapo", max_tokens=1)  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]

    def run(chunks):
        values = torch.cat([sample_logprobs(model, c, 0.8)[0] for c in chunks])
        grads = torch.autograd.grad(values.sum(), params, allow_unused=True)
        return values.detach(), [g for g in grads if g is not None]

    together, grads_together = run([samples])
    apart, grads_apart = run([[s] for s in samples])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    assert len(grads_together) == len(grads_apart) > 0
    for a, b in zip(grads_together, grads_apart, strict=True):
        # Summation order differs between the two passes: float32 gradients of the scripted
        # model's large logits agree to ~5e-5 (1 element in 8288 measured past 1e-5).
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_updates_move_each_rows_logprob_with_its_advantage(tok, sign):
    """After a few steps on a fixed batch every row with A > 0 is more likely and every row
    with A < 0 less likely; flipping the advantages flips every direction."""
    rows, masks = _fixed_rows(tok, n=4)
    advantages = [sign * a for a in (1.0, -1.0, 1.0, -1.0)]
    model = _lora_tiny(tok)
    old = _recorded(model, rows, masks, 1.0)
    samples = build_batch(rows, masks, old, advantages, loss="grpo", max_tokens=1)
    config = RLConfig(lr=3e-3, temperature=1.0, clip_low=0.2, micro_batch_size=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = policy_step(model, optimizer, samples, config, measure_entropy=True)
    assert first.ratio_dev < 1e-5 and first.clip_frac == 0.0 and first.entropy > 0
    for _ in range(5):
        last = policy_step(model, optimizer, samples, config)
    assert last.kl_old > 0 and last.ratio_dev > 1e-3  # the policy moved off the sampler
    after = _recorded(model, rows, masks, 1.0)
    for before_row, after_row, mask, adv in zip(old, after, masks, advantages, strict=True):
        change = sum(a - b for a, b, m in zip(after_row, before_row, mask, strict=True) if m)
        assert change * adv > 0, (change, adv)


def test_an_empty_batch_takes_no_step(tok):
    model = _lora_tiny(tok)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    stats = policy_step(model, optimizer, [], RLConfig())
    assert not stats.stepped and stats.ratio_dev is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --- rollouts: exact records, so ratio == 1 at the first update ----------------------------------
async def _rollouts(model, tok, config, step=1, seed=0):
    async with Runtime(clock=config.clock, seed=config.seed) as runtime:
        return await rollout_batch(step, model, tok, runtime, np.random.default_rng(seed), config)


async def test_first_update_ratio_is_one_on_real_rollouts(calculator_model, tok):
    config = tiny_config(
        temperature=0.9, budget_multipliers=(5.0, 8.0), micro_batch_size=3, group_size=3
    )
    model = copy.deepcopy(calculator_model)
    groups = await _rollouts(model, tok, config)
    trajectories = [t for g in groups for t in g.trajectories]
    assert max(len(t.steps) for t in trajectories) >= 2  # multi-turn tool episodes
    forms = {trajectory_rows(t)[1] for t in trajectories}
    assert forms >= {ViewForm.SEQUENCE.value, ViewForm.TURNS.value}  # both forms are trained
    # Every episode gets a non-zero advantage, so every sampled token is checked.
    ones = np.ones((len(groups), config.group_size))
    samples, _ = batch_samples(groups, ones, config)
    assert sum(s.n_tokens for s in samples) == sum(
        len(st.token_ids or []) for t in trajectories for st in t.steps
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = policy_step(model, optimizer, samples, config, measure_entropy=True)
    assert stats.ratio_dev < 1e-4 and stats.ratio_dev_max < 1e-3
    assert stats.clip_frac == 0.0 and stats.kl_old < 1e-6
    assert 0 < stats.entropy < math.log(len(tok))


async def test_rollouts_are_a_function_of_weights_step_and_data_rng(calculator_model, tok):
    config = tiny_config(group_size=2)
    first = await _rollouts(calculator_model, tok, config, step=3)
    again = await _rollouts(calculator_model, tok, config, step=3)
    other = await _rollouts(calculator_model, tok, config, step=4)

    def key(groups):
        return [
            [(s.token_ids, s.logprobs) for s in t.steps] for g in groups for t in g.trajectories
        ]

    assert key(first) == key(again)
    assert key(first) != key(other)
    speeds = {f for g in first for f in g.speed_factors}
    assert len(speeds) == config.prompts_per_step * config.group_size  # one per rollout


def test_a_lockstep_member_is_the_policy_but_for_generate(calculator_model, tok):
    from timely.train.grpo import _Lockstep

    policy = HFPolicy(calculator_model, tok, name="p")
    member = _Lockstep(policy, 1).member(0)
    assert member.name == "p" and member.tool_format == policy.tool_format
    assert not hasattr(member, "bind")  # run_episode binds only scripted policies
    messages = [Message(role="user", content="hi")]
    if hasattr(policy, "count_prompt_tokens"):  # the loop's exact token cap, as in an eval
        assert member.count_prompt_tokens(messages, []) == policy.count_prompt_tokens(messages, [])


async def test_wall_clock_rollouts_use_the_micro_batcher(calculator_model, tok):
    config = tiny_config(clock="wall", group_size=2, prompts_per_step=1, max_turns=1)
    (group,) = await _rollouts(copy.deepcopy(calculator_model), tok, config)
    assert [t.clock for t in group.trajectories] == ["wall", "wall"]
    assert all(t.steps and t.steps[0].token_ids for t in group.trajectories)


async def test_rl_raises_the_probability_of_the_rewarded_answer(tok):
    """Rounds of sampling and updates on a one-decision task (the model says ``Answer: d``,
    the digit ``d`` drawn with real uncertainty, reward 1 for a 7): the teacher-forced
    log-prob of ``Answer: 7`` rises, and with the reward inverted it falls, from the same
    start and by a margin, so neither can be drift."""
    messages = [Message(role="user", content="Pick a digit.")]
    deadline = Deadline(at=1e9, clock=VirtualClock())
    config = RLConfig(lr=1e-2, temperature=1.0, micro_batch_size=8, updates_per_batch=2)

    async def train(invert: bool) -> tuple[float, float]:
        from peft import LoraConfig, get_peft_model

        # Margin 0: "7" ties with the inner model's best other digit, p(7) about 0.35.
        base = _scripted(tok, [[("Answer: ", 6.0), ("7", 0.0), ("<|im_end|>", 6.0)]])
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
        net = model.get_base_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        logps = []
        for round_ in range(6):
            policy = HFPolicy(net, tok, max_new_tokens=12, temperature=1.0, seed=round_)
            completions = await policy.generate_batch([(messages, [], deadline)] * 8)
            prompt = completions[0].prompt_token_ids
            logps.append(_answer_logprob(net, tok, prompt, "Answer: 7"))
            right = np.array([[float(c.text.startswith("Answer: 7")) for c in completions]])
            advantages = group_advantages(-right if invert else right, "grpo")[0]
            samples = build_batch(
                [c.prompt_token_ids + c.token_ids for c in completions],
                [[0] * len(c.prompt_token_ids) + [1] * len(c.token_ids) for c in completions],
                [[0.0] * len(c.prompt_token_ids) + c.logprobs for c in completions],
                advantages,
                loss="grpo",
                max_tokens=12,
            )
            for _ in range(config.updates_per_batch):
                policy_step(net, optimizer, [s for s in samples if s.advantage], config)
        return logps[0], _answer_logprob(net, tok, prompt, "Answer: 7")

    start, rewarded = await train(invert=False)
    start_again, punished = await train(invert=True)
    assert start == pytest.approx(start_again, abs=1e-5)
    # p(7) can approach only about 1/2 here (the lift ties it to the best other digit).
    assert rewarded > start + 0.15 and punished < start - 0.5, (start, rewarded, punished)


def _answer_logprob(model, tok, prompt_ids, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    probe = build_batch(
        [prompt_ids + ids],
        [[0] * len(prompt_ids) + [1] * len(ids)],
        [[0.0] * (len(prompt_ids) + len(ids))],
        [0.0],
        loss="dapo",
        max_tokens=1,
    )
    with torch.no_grad():
        return float(sample_logprobs(model, probe, 1.0)[0].sum())


# --- rewards --------------------------------------------------------------------------------------
async def test_the_ablation_rewards_correctness_and_never_cuts(calculator_model, tok):
    config = tiny_config(time_reward=False, budget_multipliers=(0.05, 0.1))
    groups = await _rollouts(copy.deepcopy(calculator_model), tok, config)
    trajectories = [t for g in groups for t in g.trajectories]
    assert all(t.overrun == "late" for t in trajectories)
    assert all(t.end_reason != EndReason.BUDGET_EXHAUSTED for t in trajectories)
    late = [t for t in trajectories if t.end_reason == EndReason.ANSWERED and not t.compliant]
    assert late  # budgets of a tenth of the expert's time: answers arrive late, and count
    for t in trajectories:
        expected = t.score if t.end_reason == EndReason.ANSWERED else 0.0
        assert episode_reward(t, config) == expected
    assert episode_budget(groups[0].setting, tiny_config()).overrun == "hard"


# --- whole runs -----------------------------------------------------------------------------------
def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _unstamped(path: Path) -> list[dict]:
    """Rollout records without the wall stamps that say when each episode ran."""
    return [{k: v for k, v in r.items() if k not in WALL_STAMPS} for r in _lines(path)]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_a_two_batch_run_on_a_tiny_model(tmp_path, scripted_base):
    config = tiny_config(beta=0.05, group_size=3)
    adapter = run_rl(config, tmp_path, init=None, base_model=scripted_base, threads=1)
    assert adapter == tmp_path / "adapter" and (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    metrics = _lines(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert any(m["trained_tokens"] > 0 for m in metrics)
    for m in metrics:
        assert m["episodes"] == 6 and 0 <= m["on_time_rate"] <= m["answered_rate"] <= 1
        if m["ratio_dev"] is not None:
            assert m["ratio_dev"] < 1e-3 and m["kl_ref"] >= 0
        buckets = ("short", "mid", "long", "nolimit")
        assert sum(m[f"episodes_{b}"] for b in buckets) == 6  # every episode in one bucket
        assert 0 <= m["zero_std_groups"] <= 1
        for b in buckets:
            if m[f"episodes_{b}"]:
                assert 0 <= m[f"on_time_rate_{b}"] <= 1 and m[f"completion_tokens_{b}"] > 0
    for step in (1, 2):
        rollouts = list(iter_trajectories(tmp_path / "rollouts" / f"batch-{step:06d}.jsonl"))
        assert len(rollouts) == 6 and all(t.metadata["rl"]["step"] == step for t in rollouts)
        assert all(
            s.prompt_token_ids is None and s.token_ids is not None
            for t in rollouts
            for s in t.steps
        )
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000002"
    # From that adapter, with the KL to a frozen copy of it.
    one = config.model_copy(update={"steps": 1, "prompts_per_step": 1})
    again = run_rl(one, tmp_path / "from-init", init=str(adapter), base_model=scripted_base,
                   threads=1)  # fmt: skip
    (first,) = _lines(again.parent / "metrics.jsonl")
    assert first["kl_ref"] is None or first["kl_ref"] < 1e-6  # the reference is where it starts


def test_resume_repeats_an_uninterrupted_run(tmp_path, scripted_base):
    config = tiny_config(**RESUME)
    straight = run_rl(config, tmp_path / "a", init=None, base_model=scripted_base, threads=1)
    short = config.model_copy(update={"steps": 1})
    run_rl(short, tmp_path / "b", init=None, base_model=scripted_base, threads=1)
    # A kill between a batch's metrics line and its checkpoint leaves a line to drop.
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "reward_mean": 99.0}) + "\n")
    resumed = run_rl(config, tmp_path / "b", init=None, base_model=scripted_base, threads=1)
    a, b = _lines(tmp_path / "a" / "metrics.jsonl"), _lines(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3]
    assert any(m["trained_tokens"] > 0 for m in a[1:])  # the weights changed after batch 1
    assert _untimed(a) == _untimed(b)
    for step in (1, 2, 3):
        name = f"rollouts/batch-{step:06d}.jsonl"
        assert _unstamped(tmp_path / "a" / name) == _unstamped(tmp_path / "b" / name)
    wa, wb = _adapter(straight), _adapter(resumed)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="lr"):
        run_rl(config.model_copy(update={"lr": 1e-4}), tmp_path / "b", init=None,
               base_model=scripted_base, threads=1)  # fmt: skip


_KILLED_RUN = """
import sys
import torch
import timely.policies.hf_models as hf_models
from tests.helpers.scripted_model import tool_then_answer
from tests.helpers.tiny_model import tiny_tokenizer
from tests.unit.train.test_grpo import RESUME, SCRIPTED, _scripted, scripted_loader, tiny_config
from timely.train.grpo import run_rl

tok = tiny_tokenizer()
model = _scripted(tok, tool_then_answer("412 + 635", answer="1047"))
hf_models.load_model = scripted_loader(model, tok)
run_rl(tiny_config(**RESUME), sys.argv[1], init=None, base_model=SCRIPTED, threads=1)
"""


@pytest.mark.slow
def test_a_run_killed_after_its_first_checkpoint_resumes_exactly(tmp_path, scripted_base):
    import subprocess
    import sys
    import time

    run = tmp_path / "killed"
    root = Path(__file__).resolve().parents[3]
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(run)], cwd=root,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        latest = run / "checkpoints" / "latest"
        for _ in range(3000):
            if latest.is_file() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert latest.is_file(), "the run wrote no checkpoint"
    finally:
        child.kill()
        child.wait()
    assert latest.read_text() != "step-000003"  # killed before the end
    config = tiny_config(**RESUME)
    resumed = run_rl(config, run, init=None, base_model=scripted_base, threads=1)
    straight = run_rl(config, tmp_path / "straight", init=None, base_model=scripted_base,
                      threads=1)  # fmt: skip
    assert _untimed(_lines(run / "metrics.jsonl")) == _untimed(
        _lines(straight.parent / "metrics.jsonl")
    )
    wa, wb = _adapter(straight), _adapter(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_two_batch_run_on_the_embedded_model(tmp_path):
    config = RLConfig(
        tasks=("math/arithmetic-v1",), steps=2, prompts_per_step=1, group_size=4,
        max_turns=2, max_new_tokens=32, save_every=2,
    )  # fmt: skip
    adapter = run_rl(config, tmp_path, init=None, threads=1)  # 2 threads crawl on busy cores
    metrics = _lines(tmp_path / "metrics.jsonl")
    assert len(metrics) == 2 and (adapter / "adapter_model.safetensors").is_file()
    for m in metrics:
        if m["ratio_dev"] is not None:
            assert m["ratio_dev"] < 1e-3


def test_micro_batches_hold_at_most_their_rows_and_padded_tokens():
    from timely.train.objective import _micro_batches

    def row(n: int, first: int = 7) -> Sample:
        return Sample([first] * 3 + list(range(n)), [0] * 3 + [1] * n, [0.0] * (n + 3), 1.0, 1)

    samples = [row(n) for n in (2, 40, 5, 30, 3, 100)]
    chunks = list(_micro_batches(samples, 4, 64))
    assert sorted(len(s.token_ids) for c in chunks for s in c) == sorted(
        len(s.token_ids) for s in samples
    )
    for c in chunks:
        assert len(c) <= 4
        assert len(c) == 1 or len(c) * max(len(s.token_ids) for s in c) <= 64
    assert [len(c) for c in _micro_batches(samples, 4, None)] == [4, 2]
