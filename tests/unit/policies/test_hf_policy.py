"""HFPolicy on a tiny random llama: batching, exact token records, deadlines, sampling."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.clock import VirtualClock, WallClock
from timely.errors import ConfigError
from timely.policies import hf
from timely.policies.base import Deadline, make_policy
from timely.policies.hf import HFPolicy, generate_rows
from timely.types import Message

PROMPTS = ["hello", "what is six times seven?", "a much longer question " * 5, "x"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok))


@pytest.fixture
def calls(monkeypatch):
    """Counts batched decodes (``generate_rows`` calls) and the batch size of each."""
    seen: list[int] = []
    original = hf.generate_rows

    def spy(model, prompts, **kwargs):
        seen.append(len(prompts))
        return original(model, prompts, **kwargs)

    monkeypatch.setattr(hf, "generate_rows", spy)
    return seen


def convo(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


def virtual(max_new_tokens: int | None = None) -> Deadline:
    return Deadline(at=1e9, clock=VirtualClock(), max_new_tokens=max_new_tokens)


async def test_concurrent_calls_become_one_generate_and_match_unbatched(model, tok, calls):
    policy = HFPolicy(model, tok, max_new_tokens=12, batch_window_s=0.05)
    batched = await asyncio.gather(
        *[policy.generate(convo(p), [], deadline=virtual()) for p in PROMPTS]
    )
    assert calls == [len(PROMPTS)]
    alone = HFPolicy(model, tok, max_new_tokens=12, max_batch_size=1)
    single = [await alone.generate(convo(p), [], deadline=virtual()) for p in PROMPTS]
    assert calls == [len(PROMPTS)] + [1] * len(PROMPTS)
    for b, s in zip(batched, single, strict=True):
        assert b.token_ids == s.token_ids
        assert b.text == s.text
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


async def test_token_records_are_exact(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=10)
    messages = convo("hello there")
    out = await policy.generate(messages, [], deadline=virtual())
    assert out.prompt_token_ids == policy.prompt_ids(messages, [])
    assert out.prompt_tokens == len(out.prompt_token_ids)
    assert out.completion_tokens == len(out.token_ids) == len(out.logprobs) == 10
    assert out.finish_reason == "length"
    assert out.text == tok.decode(out.token_ids, skip_special_tokens=True).strip()
    assert out.gen_seconds > 0
    # The recorded log-probabilities are the model's, recomputed here with one forward pass.
    ids = torch.tensor([out.prompt_token_ids + out.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(out.prompt_token_ids) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None])
    assert out.logprobs == pytest.approx(expected.squeeze(1).tolist(), abs=1e-4)


def test_rows_stop_at_and_include_their_stop_token(model, tok):
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    kwargs = dict(wall_ends=[None, None], abandoned=lambda i: False, pad_id=2)
    free = generate_rows(model, prompts, caps=[12, 12], stop_ids=[2], **kwargs)
    # Declare a token of row 0 that it has not produced before as the stop token.
    k = next(
        i for i, t in enumerate(free[0].token_ids) if i >= 2 and t not in free[0].token_ids[:i]
    )
    stop = free[0].token_ids[k]
    rows = generate_rows(model, prompts, caps=[12, 12], stop_ids=[stop], **kwargs)
    assert rows[0].token_ids == free[0].token_ids[: k + 1]
    assert rows[0].reason == "stop"
    assert len(rows[0].logprobs) == k + 1
    assert rows[0].logprobs == pytest.approx(free[0].logprobs[: k + 1], abs=1e-5)
    assert rows[1].reason in ("stop", "length")


async def test_stop_token_is_kept_in_ids_but_not_in_text(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=12)
    free = await policy.generate(convo("hello"), [], deadline=virtual())
    k = next(i for i, t in enumerate(free.token_ids) if i >= 1 and t not in free.token_ids[:i])
    policy.stop_ids = [free.token_ids[k]]
    out = await policy.generate(convo("hello"), [], deadline=virtual())
    assert out.finish_reason == "stop"
    assert out.token_ids == free.token_ids[: k + 1]
    assert out.completion_tokens == k + 1


async def test_deadline_token_cap_is_respected_per_row(model, tok, calls):
    policy = HFPolicy(model, tok, max_new_tokens=12, batch_window_s=0.05)
    capped, free = await asyncio.gather(
        policy.generate(convo("a"), [], deadline=virtual(max_new_tokens=3)),
        policy.generate(convo("b"), [], deadline=virtual()),
    )
    assert calls == [2]
    assert (capped.completion_tokens, capped.finish_reason) == (3, "deadline")
    assert (free.completion_tokens, free.finish_reason) == (12, "length")
    # A budget cap above the policy's own cap changes nothing.
    out = await policy.generate(convo("a"), [], deadline=virtual(max_new_tokens=50))
    assert (out.completion_tokens, out.finish_reason) == (12, "length")


async def test_zero_token_budget_skips_the_model(model, tok, calls):
    policy = HFPolicy(model, tok)
    out = await policy.generate(convo("a"), [], deadline=virtual(max_new_tokens=0))
    assert calls == []
    assert (out.finish_reason, out.text, out.completion_tokens, out.token_ids) == (
        "deadline",
        "",
        0,
        [],
    )
    assert out.prompt_tokens > 0


async def test_wall_deadline_stops_generation(model, tok):
    clock = WallClock()
    policy = HFPolicy(model, tok, max_new_tokens=3000)
    out = await policy.generate(
        convo("a"), [], deadline=Deadline(at=clock.now() + 0.05, clock=clock)
    )
    assert out.finish_reason == "deadline"
    assert 0 < out.completion_tokens < 3000
    assert out.gen_seconds < 2.0


async def test_sampling_is_seeded(model, tok):
    def make(seed: int) -> HFPolicy:
        return HFPolicy(model, tok, max_new_tokens=16, temperature=1.0, seed=seed, max_batch_size=1)

    a = await make(7).generate(convo("hi"), [], deadline=virtual())
    b = await make(7).generate(convo("hi"), [], deadline=virtual())
    c = await make(8).generate(convo("hi"), [], deadline=virtual())
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    greedy = await HFPolicy(model, tok, max_new_tokens=16).generate(
        convo("hi"), [], deadline=virtual()
    )
    assert a.token_ids != greedy.token_ids


async def test_generate_batch_keeps_order_and_chunks(model, tok, calls):
    policy = HFPolicy(model, tok, max_new_tokens=6, max_batch_size=3)
    requests = [(convo(p), [], virtual()) for p in PROMPTS]
    requests.insert(1, (convo("skip me"), [], virtual(max_new_tokens=0)))
    out = await policy.generate_batch(requests)
    assert calls == [3, 1]
    assert [o.finish_reason for o in out] == ["length", "deadline", "length", "length", "length"]
    single = [await policy.generate(convo(p), [], deadline=virtual()) for p in PROMPTS]
    assert [o.token_ids for o in out[:1] + out[2:]] == [s.token_ids for s in single]


async def test_reply_text_is_parsed_into_tool_calls(model, tok, monkeypatch):
    reply = (
        'On it.<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    )
    ids = tok(reply, add_special_tokens=False)["input_ids"] + [2]

    def fake_rows(model, prompts, **kwargs):
        return [
            hf.GeneratedRow(token_ids=ids, logprobs=[0.0] * len(ids), reason="stop")
            for _ in prompts
        ]

    monkeypatch.setattr(hf, "generate_rows", fake_rows)
    policy = HFPolicy(model, tok)
    messages = convo("what is 6*7?") + [Message(role="assistant", content="hm"), *convo("go")]
    out = await policy.generate(messages, [], deadline=virtual())
    assert out.text == "On it."
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [
        ("call_3_0", "calculator", {"expression": "6*7"})
    ]
    assert out.token_ids == ids and out.finish_reason == "stop"


def test_backend_checks_options_before_loading():
    with pytest.raises(ConfigError, match="Did you mean 'temperature'"):
        make_policy("hf:smollm2-135m", temprature=0.5)


def test_bad_settings_are_config_errors(model, tok):
    with pytest.raises(ConfigError):
        HFPolicy(model, tok, temperature=-1)
    with pytest.raises(ConfigError):
        HFPolicy(model, tok, max_new_tokens=0)
    with pytest.raises(ConfigError, match="precision"):
        HFPolicy(model, tok, precision="fp16")


async def test_bf16_decodes_a_bf16_copy_and_keeps_its_records(model, tok, monkeypatch):
    """bf16 decodes with bf16 weights (autocast over fp32 weights was slower than fp32), on a
    private copy: the caller's model keeps its fp32 weights."""
    seen = []
    real = hf.generate_rows

    def spy(used, *args, **kwargs):
        seen.append(next(used.parameters()).dtype)
        return real(used, *args, **kwargs)

    monkeypatch.setattr(hf, "generate_rows", spy)
    fast = HFPolicy(model, tok, max_new_tokens=12, precision="bf16")
    out = await fast.generate(convo("hi"), [], deadline=virtual())
    await HFPolicy(model, tok, max_new_tokens=12).generate(convo("hi"), [], deadline=virtual())
    assert seen == [torch.bfloat16, torch.float32]
    assert next(model.parameters()).dtype == torch.float32 and fast.model is not model
    assert 0 < len(out.token_ids) == len(out.logprobs or []) <= 12
    assert all(isinstance(lp, float) for lp in out.logprobs or [])


async def test_a_cancelled_caller_stops_its_row(model, tok, monkeypatch):
    lengths: list[int] = []
    original = hf.generate_rows

    def spy(model, prompts, **kwargs):
        rows = original(model, prompts, **kwargs)
        lengths.append(len(rows[0].token_ids))
        return rows

    monkeypatch.setattr(hf, "generate_rows", spy)
    policy = HFPolicy(model, tok, max_new_tokens=4000)
    task = asyncio.ensure_future(policy.generate(convo("a"), [], deadline=virtual()))
    await asyncio.sleep(0.05)
    task.cancel()
    out = await policy.generate(convo("b"), [], deadline=virtual(max_new_tokens=2))
    assert out.completion_tokens == 2
    assert lengths[0] < 4000


async def test_the_loops_token_cap_counts_the_prompt_with_this_tokenizer(model, tok):
    """The loop caps generation by what fits in the budget after the prompt as this model's
    tokenizer counts it (template, tool schemas and all), not by a character estimate."""
    from tests.helpers.env import in_process_tools
    from timely.budget import Budget
    from timely.clock import speed_profile
    from timely.loop import run_episode
    from timely.task import make_task

    seen: list[tuple[int | None, int]] = []

    class Spy(HFPolicy):
        async def generate(self, messages, tools, *, deadline):
            seen.append((deadline.max_new_tokens, len(self.prompt_ids(messages, tools))))
            return await super().generate(messages, tools, deadline=deadline)

    policy = Spy(model, tok, max_new_tokens=8)
    async with in_process_tools() as tools:
        await run_episode(
            policy,
            make_task("math/arithmetic-v1", seed=0),
            tools,
            VirtualClock(),
            Budget(seconds=9),
        )
    cap, prompt = seen[0]
    assert cap == speed_profile("small-fast").max_tokens_within(9, prompt)


def test_padded_chunks_bound_the_prefill_and_keep_small_batches_whole():
    assert hf.padded_chunks([5, 9, 3], budget=27) == [[0, 1, 2]]
    chunks = hf.padded_chunks([100, 10, 12, 90, 11], budget=200)
    assert sorted(i for c in chunks for i in c) == [0, 1, 2, 3, 4]
    assert chunks[0] == [0, 3]  # longest first, together while 2 x 100 fits
    assert all(len(c) * max([100, 10, 12, 90, 11][i] for i in c) <= 200 for c in chunks)
    assert hf.padded_chunks([500, 4], budget=100) == [[0], [1]]  # too long: alone


async def test_a_batch_over_the_token_budget_runs_in_chunks_with_the_same_rows(
    model, tok, calls, monkeypatch
):
    prompts = [convo("hi"), convo("a much longer message " * 6), convo("yo")]
    policy = HFPolicy(model, tok, max_new_tokens=8, max_batch_size=3)
    whole = await asyncio.gather(*(policy.generate(p, [], deadline=virtual()) for p in prompts))
    monkeypatch.setattr(hf, "MAX_BATCH_TOKENS", 40)
    monkeypatch.setattr(hf.padded_chunks, "__defaults__", (40,))
    calls.clear()
    chunked = await asyncio.gather(*(policy.generate(p, [], deadline=virtual()) for p in prompts))
    assert len(calls) > 1  # more than one generate_rows call for one batch
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole]  # greedy: same rows
