"""Key/value reuse in HFPolicy: same tokens as the plain loop, less work, bounded memory."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.helpers.tiny_model import tiny_model, tiny_tokenizer
from timely.clock import VirtualClock
from timely.policies import hf
from timely.policies.base import Deadline
from timely.policies.hf import HFPolicy
from timely.policies.kv_cache import GenerationStats, KVStore
from timely.types import Message

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok))


def virtual(max_new_tokens: int | None = None) -> Deadline:
    return Deadline(at=1e9, clock=VirtualClock(), max_new_tokens=max_new_tokens)


def user(text: str) -> Message:
    return Message(role="user", content=text)


def layers(n: int, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, n, 4), fill), torch.full((2, n, 4), fill)) for _ in range(2)]


# --- the store ------------------------------------------------------------------------------
def test_lookup_finds_the_longest_common_prefix_and_leaves_a_token_to_compute():
    store = KVStore(100)
    store.put([1, 2, 3, 4], layers(4, 1.0))
    store.put([1, 2, 9], layers(3, 2.0))
    hit = store.lookup([1, 2, 3, 4, 5, 6])
    assert hit.length == 4 and hit.layers is not None and float(hit.layers[0][0][0, 0, 0]) == 1.0
    assert store.lookup([1, 2, 9, 7]).length == 3
    assert store.lookup([1, 2, 3, 4]).length == 3  # the last prompt token is always computed
    assert store.lookup([1, 2, 3, 4], limit=4).length == 4
    assert store.lookup([5, 6]).length == 0 and store.lookup([5, 6]).layers is None


def test_the_store_stays_within_its_budget_least_recently_used_first():
    store = KVStore(10)
    store.put([1, 2, 3, 4], layers(4))
    store.put([5, 6, 7, 8], layers(4))
    store.lookup([1, 2, 3, 4, 0])  # touches the first entry
    store.put([9, 9, 9], layers(3))
    assert store.tokens == 7 and store.lookup([5, 6, 7, 8, 0]).length == 0
    assert store.lookup([1, 2, 3, 4, 0]).length == 4
    store.put(list(range(11)), layers(11))  # longer than the whole budget: not kept
    assert store.tokens == 7


def test_an_extended_sequence_replaces_its_prefix_and_a_covered_one_is_not_stored():
    store = KVStore(100)
    store.put([1, 2, 3], layers(3))
    store.put([1, 2, 3, 4, 5], layers(5))
    assert (len(store), store.tokens) == (1, 5)
    store.put([1, 2], layers(2))  # already held by the longer entry
    assert (len(store), store.tokens) == (1, 5)


def test_changed_weights_empty_the_store(tok):
    net = tiny_model(len(tok), seed=3)
    store = KVStore(100)
    store.check_model(net)
    store.put([1, 2, 3], layers(3))
    store.check_model(net)
    assert len(store) == 1
    with torch.no_grad():
        next(net.parameters()).add_(0.0)  # any in-place write bumps the version counter
    store.check_model(net)
    assert len(store) == 0


# --- generation -----------------------------------------------------------------------------
async def two_turns(policy: HFPolicy, questions: list[str], follow_up: str) -> list[list[int]]:
    """Turn 1 for every question in one batch, then each conversation extended by its reply
    and a new user message, again in one batch; returns every reply's ids."""
    first = [[user(q)] for q in questions]
    replies = await policy.generate_batch([(m, [], virtual()) for m in first])
    second = [
        [*m, Message(role="assistant", content=r.text), user(follow_up)]
        for m, r in zip(first, replies, strict=True)
    ]
    again = await policy.generate_batch([(m, [], virtual()) for m in second])
    return [r.token_ids for r in replies] + [r.token_ids for r in again]


QUESTIONS = ["what is 6*7?", "what is 6*7?", "what is 6*7?", "name a colour", "x"]


async def test_greedy_tokens_are_the_same_with_and_without_reuse(model, tok):
    plain = HFPolicy(model, tok, max_new_tokens=10, kv_reuse=False)
    reuse = HFPolicy(model, tok, max_new_tokens=10)
    assert await two_turns(reuse, QUESTIONS, "and then?") == await two_turns(
        plain, QUESTIONS, "and then?"
    )
    assert reuse.stats.requests == plain.stats.requests == 2 * len(QUESTIONS)
    assert reuse.stats.decode_tokens == plain.stats.decode_tokens
    assert reuse.stats.reused_tokens > 0 and plain.stats.reused_tokens == 0
    assert reuse.stats.processed_tokens < plain.stats.processed_tokens / 2
    assert plain.stats.full_prefills == 2 * len(QUESTIONS)
    # The distinct first prompts share the system prompt, prefilled once: no full prefill.
    assert reuse.stats.full_prefills == 0


async def test_identical_prompts_are_prefilled_once(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=4)
    prompt = policy.prompt_ids([user("what is 6*7?")], [])
    out = await policy.generate_batch([([user("what is 6*7?")], [], virtual())] * 8)
    assert len({tuple(o.token_ids) for o in out}) == 1
    assert policy.stats.prefill_tokens == len(prompt)
    assert policy.stats.reused_tokens == 7 * len(prompt)
    assert policy.stats.full_prefills == 1


async def test_a_prefix_shared_in_the_batch_is_prefilled_once(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=3)
    long = "a long shared preamble " * 4
    messages = [[user(long + tail)] for tail in ("one", "two", "three")]
    await policy.generate_batch([(m, [], virtual()) for m in messages])
    prompts = [policy.prompt_ids(m, []) for m in messages]
    assert policy.stats.prefill_tokens < sum(len(p) for p in prompts) - len(long)
    assert policy.stats.full_prefills == 0


async def test_a_prompt_that_is_a_strict_prefix_of_another_in_the_batch(model, tok):
    """One episode's turn beside another's next turn on the same instance: the shorter prompt
    is a prefix of the longer. Sharing it once used to recurse once per token (a
    RecursionError on 1.3k-token game prompts in the eval)."""
    first = [user("x" * 1500)]
    later = [*first, Message(role="assistant", content="ok"), user("and then?")]
    policy = HFPolicy(model, tok, max_new_tokens=3)
    short, long = policy.prompt_ids(first, []), policy.prompt_ids(later, [])
    assert long[: len(short)] == short and len(short) > 1100
    out = await policy.generate_batch([(first, [], virtual()), (later, [], virtual())])
    assert all(o.token_ids for o in out)
    assert policy.stats.prefill_tokens < len(short) + len(long)  # the prefix once


async def test_a_prompt_that_is_not_an_exact_extension_reuses_the_common_prefix(model, tok):
    """The next prompt may rewrite the end of the last one: only the common part is reused."""
    plain = HFPolicy(model, tok, max_new_tokens=6, kv_reuse=False)
    reuse = HFPolicy(model, tok, max_new_tokens=6)
    for policy in (plain, reuse):
        await policy.generate([user("tell me about cats")], [], deadline=virtual())
    edited = [user("tell me about dogs"), Message(role="assistant", content="ok"), user("more")]
    a = await plain.generate(edited, [], deadline=virtual())
    b = await reuse.generate(edited, [], deadline=virtual())
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


async def test_finished_rows_leave_the_decode_batch(model, tok):
    """A row capped at 2 tokens stops costing work after its second token."""
    policy = HFPolicy(model, tok, max_new_tokens=8, kv_reuse=False)
    reuse = HFPolicy(model, tok, max_new_tokens=8, kv_cache_tokens=0)  # no shared-prefix pass
    requests = [([user("a")], [], virtual(max_new_tokens=2)), ([user("b")], [], virtual())]
    for p in (policy, reuse):
        out = await p.generate_batch(requests)
        assert [o.completion_tokens for o in out] == [2, 8]
        assert [o.finish_reason for o in out] == ["deadline", "length"]
    width = max(len(policy.prompt_ids(m, [])) for m, _, _ in requests)
    assert policy.stats.processed_tokens == 2 * width + 2 * 7  # padding decoded to the end
    assert reuse.stats.processed_tokens == 2 * width + 2 * 1 + 6


async def test_sampling_is_seeded_and_a_rows_draws_ignore_its_neighbours(model, tok):
    def make() -> HFPolicy:
        return HFPolicy(model, tok, max_new_tokens=12, temperature=1.0, seed=5)

    requests = [([user("hi")], [], virtual()), ([user("yo")], [], virtual(max_new_tokens=3))]
    a = await make().generate_batch(requests)
    b = await make().generate_batch(requests)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    alone = await make().generate_batch(requests[:1])
    assert alone[0].token_ids == a[0].token_ids  # same seed, same row: same draws
    group = await make().generate_batch([requests[0]] * 4)
    assert len({tuple(o.token_ids) for o in group}) > 1  # one seed per row, not per prompt


async def test_sampled_records_are_the_models_logprobs(model, tok):
    from timely.policies.logprobs import recompute_logprobs

    policy = HFPolicy(model, tok, max_new_tokens=8, temperature=0.7, top_p=0.9)
    first = await policy.generate([user("hi")], [], deadline=virtual())
    messages = [user("hi"), Message(role="assistant", content=first.text), user("again")]
    out = await policy.generate(messages, [], deadline=virtual())
    assert policy.stats.reused_tokens > 0
    expected = recompute_logprobs(model, out.prompt_token_ids, out.token_ids, 0.7)
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


async def test_the_plain_path_is_todays_loop(model, tok, monkeypatch):
    seen: list[dict] = []
    real = hf.generate_rows

    def spy(model, prompts, **kwargs):
        seen.append(kwargs)
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(hf, "generate_rows", spy)
    await HFPolicy(model, tok, max_new_tokens=3, kv_reuse=False).generate(
        [user("a")], [], deadline=virtual()
    )
    await HFPolicy(model, tok, max_new_tokens=3).generate([user("a")], [], deadline=virtual())
    assert "store" not in seen[0] and isinstance(seen[1]["store"], KVStore)


async def test_bf16_reuse_runs_and_keeps_its_records(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=6, precision="bf16")
    first = await policy.generate([user("hi")], [], deadline=virtual())
    messages = [user("hi"), Message(role="assistant", content=first.text), user("again")]
    out = await policy.generate(messages, [], deadline=virtual())
    assert 0 < len(out.token_ids) == len(out.logprobs or []) <= 6
    assert policy.stats.reused_tokens > 0


async def test_concurrent_episodes_reuse_their_own_turns(model, tok):
    """Through the micro-batcher (eval, serving), each conversation finds its previous turn."""
    policy = HFPolicy(model, tok, max_new_tokens=5, batch_window_s=0.05)

    async def episode(q: str) -> None:
        messages = [user(q)]
        for _ in range(2):
            out = await policy.generate(messages, [], deadline=virtual())
            messages += [Message(role="assistant", content=out.text), user("go on")]

    await asyncio.gather(*(episode(q) for q in ("one", "two", "three")))
    assert policy.stats.requests == 6
    assert policy.stats.reused_tokens > 0


def test_stats_reset():
    stats = GenerationStats(requests=3, processed_tokens=9)
    stats.reset()
    assert stats == GenerationStats()


def test_a_negative_cache_budget_is_a_config_error(model, tok):
    from timely.errors import ConfigError

    with pytest.raises(ConfigError, match="kv_cache_tokens"):
        HFPolicy(model, tok, kv_cache_tokens=-1)


def test_the_backend_accepts_the_reuse_options():
    from timely.policies.base import check_options

    check_options("hf:x", {"kv_reuse": False, "kv_cache_tokens": 10}, hf._HF_OPTIONS)


# --- continuous batching --------------------------------------------------------------------
async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def test_a_request_joins_a_running_batch_and_leaves_before_it(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=400, continuous_batching=True)
    policy.stop_ids = [-1]  # nothing stops a row but its cap
    long = asyncio.ensure_future(policy.generate([user("long")], [], deadline=virtual()))
    await wait_for(lambda: policy.stats.decode_tokens > 0)
    short = await policy.generate([user("short")], [], deadline=virtual(max_new_tokens=5))
    assert not long.done()  # answered while the long row still decodes
    assert (short.completion_tokens, short.finish_reason) == (5, "deadline")
    first = await long
    assert first.completion_tokens == 400
    assert policy.batcher.batches_run == 1 and policy.batcher.batch_sizes == [1, 1]
    # Greedy: the same tokens as each prompt alone through the plain loop.
    plain = HFPolicy(model, tok, max_new_tokens=400, kv_reuse=False)
    plain.stop_ids = [-1]
    alone = await plain.generate([user("short")], [], deadline=virtual(max_new_tokens=5))
    assert alone.token_ids == short.token_ids
    alone = await plain.generate([user("long")], [], deadline=virtual())
    assert alone.token_ids == first.token_ids


async def test_continuous_batching_keeps_concurrent_results_and_the_token_budget(
    model, tok, monkeypatch
):
    questions = ["hi", "a much longer message " * 3, "yo", "what is 6*7?"]
    plain = HFPolicy(model, tok, max_new_tokens=8, kv_reuse=False)
    expected = [await plain.generate([user(q)], [], deadline=virtual()) for q in questions]
    monkeypatch.setattr(hf, "MAX_BATCH_TOKENS", 40)  # x REUSE_BATCH_FACTOR: about two prompts
    policy = HFPolicy(model, tok, max_new_tokens=8, continuous_batching=True, batch_window_s=0.05)
    out = await asyncio.gather(
        *(policy.generate([user(q)], [], deadline=virtual()) for q in questions)
    )
    assert [o.token_ids for o in out] == [e.token_ids for e in expected]
    assert max(policy.batcher.batch_sizes) < len(questions)


async def test_a_cancelled_caller_leaves_a_continuous_batch(model, tok):
    policy = HFPolicy(model, tok, max_new_tokens=4000, continuous_batching=True)
    policy.stop_ids = [-1]
    task = asyncio.ensure_future(policy.generate([user("a")], [], deadline=virtual()))
    await wait_for(lambda: policy.stats.decode_tokens > 0)
    task.cancel()
    out = await policy.generate([user("b")], [], deadline=virtual(max_new_tokens=2))
    assert out.completion_tokens == 2
    await wait_for(lambda: not policy._lock.locked())  # the run ended: the row left early
    assert policy.stats.decode_tokens < 4000


async def test_sampled_turns_are_reproducible_with_reuse(model, tok):
    def make() -> HFPolicy:
        return HFPolicy(model, tok, max_new_tokens=8, temperature=1.0, seed=11)

    a, b = make(), make()
    assert await two_turns(a, QUESTIONS, "more") == await two_turns(b, QUESTIONS, "more")
    assert a.stats == b.stats


@pytest.mark.slow
async def test_embedded_model_greedy_turns_match_the_plain_loop():
    """On SmolLM2-135M itself: a group of identical prompts and a second turn, greedy, give
    the same tokens with and without reuse, for a fraction of the work."""
    from timely.policies.hf_models import load_model

    net, tokenizer = load_model()
    questions = ["What is 17 * 23?"] * 3 + ["Name a prime number above 50."]
    plain = HFPolicy(net, tokenizer, max_new_tokens=12, kv_reuse=False)
    reuse = HFPolicy(net, tokenizer, max_new_tokens=12)
    assert await two_turns(reuse, questions, "Are you sure?") == await two_turns(
        plain, questions, "Are you sure?"
    )
    assert reuse.stats.processed_tokens < plain.stats.processed_tokens / 2


async def test_a_long_prefill_runs_in_bounded_parts_with_the_same_rows(model, tok, monkeypatch):
    from timely.policies import kv_prefill

    questions = ["hi", "a much longer message " * 6, "yo", "what is 6*7?"]
    whole = HFPolicy(model, tok, max_new_tokens=6, kv_cache_tokens=0)
    expected = await whole.generate_batch([([user(q)], [], virtual()) for q in questions])
    monkeypatch.setattr(kv_prefill, "MAX_PREFILL_SCORES", 100 * 100)
    forwards: list[int] = []
    real = kv_prefill._prefill

    def spy(model, prompts, *args):
        forwards.append(len(prompts))
        return real(model, prompts, *args)

    monkeypatch.setattr(kv_prefill, "_prefill", spy)
    parts = HFPolicy(model, tok, max_new_tokens=6, kv_cache_tokens=0)
    out = await parts.generate_batch([([user(q)], [], virtual()) for q in questions])
    assert [o.token_ids for o in out] == [e.token_ids for e in expected]
    assert len(forwards) > 1 and sum(forwards) == len(questions)


def test_a_growing_cache_writes_in_place_and_survives_replaced_rows():
    from timely.policies.kv_cache import cache_from_layers, select_rows

    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)
    cache = cache_from_layers([(keys, -keys)], 1)
    layer = cache.layers[0]
    buffer = layer.keys.data_ptr()
    step = torch.ones(2, 1, 1, 2)
    k, v = cache.update(step, -step, 0)
    assert k.data_ptr() == buffer and k.shape[-2] == 4  # written into the spare columns
    assert torch.equal(k[:, :, :3], keys) and torch.equal(v[:, :, 3:], -step)
    select_rows(cache, torch.tensor([1]), start=1)  # a row leaves, a padding column goes
    k, _ = cache.update(2 * step[:1], -2 * step[:1], 0)
    assert k.shape == (1, 1, 4, 2)
    assert torch.equal(k[0, 0], torch.tensor([[8.0, 9.0], [10.0, 11.0], [1.0, 1.0], [2.0, 2.0]]))
