"""The llamacpp: policy: prompts identical to hf:, token caps, deadlines, cancellation, one decode
at a time with the event loop free, seeded sampling, tool calls, and clear errors."""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest

from tests.helpers.tiny_gguf import tiny_gguf
from tests.helpers.tiny_model import tiny_model
from timely.clock import VirtualClock, WallClock, wall_seconds
from timely.errors import ConfigError, PolicyError
from timely.policies import llamacpp, llamacpp_models
from timely.policies.base import Deadline, make_policy
from timely.policies.hf import HFPolicy
from timely.policies.llamacpp import LlamaCppPolicy
from timely.types import Message, ToolCall

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
CONVERSATIONS = [
    ([Message(role="user", content="What is 6*7?")], []),
    ([Message(role="user", content="What is 123*45? Use the calculator.")], [CALCULATOR]),
    (
        [
            Message(role="system", content="You are terse. Ünïcödé and emoji 🎉 stay."),
            Message(role="user", content="Compute 2+2 then add 3."),
            Message(
                role="assistant",
                content="",
                tool_calls=[ToolCall(id="c0", name="calculator", arguments={"expression": "2+2"})],
            ),
            Message(role="tool", content="4", tool_call_id="c0", name="calculator"),
            Message(role="user", content="[time] 3.2 s of 30 s used"),
        ],
        [CALCULATOR],
    ),
]


def virtual(max_new_tokens: int | None = None) -> Deadline:
    return Deadline(at=1e9, clock=VirtualClock(), max_new_tokens=max_new_tokens)


def convo(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


class FakeLlama:
    """Stands in for ``llama_cpp.Llama``: yields a scripted token stream, records its calls."""

    def __init__(self, stream, *, n_ctx: int = 4096, vocab: int = 512, gate=None) -> None:
        self.stream = list(stream)
        self._n_ctx, self._vocab = n_ctx, vocab
        self.gate = gate  # a threading.Event each token waits for, when set
        self.calls: list[dict] = []
        self.seeds: list[int] = []
        self.yielded = 0
        self.closed = 0

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._vocab

    def token_eos(self) -> int:
        return 2

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def generate(self, tokens, **kwargs):
        self.calls.append({"tokens": list(tokens), **kwargs})
        try:
            for i in range(10_000):
                if self.gate is not None:
                    self.gate.wait()
                self.yielded += 1
                yield self.stream[i] if i < len(self.stream) else 65
        finally:
            self.closed += 1


# -- the real engine on the tiny model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tok, tmp_path_factory):
    model = tiny_model(len(tok))
    path = tiny_gguf(model, tok, tmp_path_factory.mktemp("gguf"))
    return model, llamacpp_models.open_llama(path, n_ctx=2048, n_threads=1)


async def test_greedy_tokens_and_records_match_hf_on_the_same_weights(tiny, tok):
    model, llama = tiny
    fast = LlamaCppPolicy(llama, tok, max_new_tokens=12)
    reference = HFPolicy(model, tok, max_new_tokens=12)
    for messages, tools in CONVERSATIONS:
        ours = await fast.generate(messages, tools, deadline=virtual())
        theirs = await reference.generate(messages, tools, deadline=virtual())
        assert ours.prompt_token_ids == theirs.prompt_token_ids == fast.prompt_ids(messages, tools)
        assert ours.token_ids == theirs.token_ids
        assert ours.text == theirs.text
        assert ours.prompt_tokens == len(ours.prompt_token_ids)
        assert ours.completion_tokens == len(ours.token_ids) == 12
        assert ours.finish_reason == "length"
        assert ours.logprobs is None  # log-probs come from hf:, the training backend
        assert ours.gen_seconds > 0
        assert fast.count_prompt_tokens(messages, tools) == ours.prompt_tokens


async def test_concurrent_calls_are_serialised_and_the_loop_stays_free(tiny, tok):
    _, llama = tiny
    policy = LlamaCppPolicy(llama, tok, max_new_tokens=40)
    alone = [(await policy.generate(convo(t), [], deadline=virtual())).token_ids for t in "abc"]
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    together = await asyncio.gather(
        *(policy.generate(convo(t), [], deadline=virtual()) for t in "abc")
    )
    done = True
    await task
    assert [c.token_ids for c in together] == alone
    assert ticks > 3  # the event loop ran while llama.cpp decoded


async def test_seeded_sampling_repeats_per_seed(tiny, tok):
    _, llama = tiny

    async def sample(seed: int) -> list[list[int]]:
        policy = LlamaCppPolicy(llama, tok, max_new_tokens=24, temperature=1.5, seed=seed)
        return [
            (await policy.generate(convo("hi"), [], deadline=virtual())).token_ids for _ in "ab"
        ]

    first = await sample(0)
    assert await sample(0) == first
    assert first[0] != first[1]  # each call draws its own seed
    assert await sample(1) != first


async def test_a_prompt_longer_than_the_context_is_a_clear_error(tiny, tok):
    _, llama = tiny
    policy = LlamaCppPolicy(llama, tok)
    with pytest.raises(PolicyError, match="raise n_ctx"):
        await policy.generate(convo("x" * 2100), [], deadline=virtual())


# -- limits and bookkeeping, on a scripted stand-in -----------------------------------------------


async def test_caps_stop_tokens_and_tool_calls(tok):
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    stream = tok(call, add_special_tokens=False)["input_ids"] + [2, 70, 71]
    fake = FakeLlama(stream)
    policy = LlamaCppPolicy(fake, tok, max_new_tokens=200)
    out = await policy.generate(convo("6*7?"), [CALCULATOR], deadline=virtual())
    assert out.finish_reason == "stop"
    assert out.token_ids == stream[: stream.index(2) + 1]  # the stop token is kept, as in hf:
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [
        ("call_1_0", "calculator", {"expression": "6*7"})
    ]
    assert fake.calls[0]["temp"] == 0.0 and fake.calls[0]["top_k"] == 0  # greedy by default
    assert fake.calls[0]["min_p"] == 0.0 and fake.calls[0]["repeat_penalty"] == 1.0
    assert fake.seeds == []
    assert fake.closed == 1

    capped = await LlamaCppPolicy(FakeLlama([70] * 50), tok, max_new_tokens=5).generate(
        convo("x"), [], deadline=virtual()
    )
    assert (capped.finish_reason, capped.completion_tokens) == ("length", 5)
    budget = await LlamaCppPolicy(FakeLlama([70] * 50), tok, max_new_tokens=50).generate(
        convo("x"), [], deadline=virtual(max_new_tokens=3)
    )
    assert (budget.finish_reason, budget.completion_tokens) == ("deadline", 3)


async def test_no_time_left_returns_at_once(tok):
    fake = FakeLlama([70])
    policy = LlamaCppPolicy(fake, tok)
    out = await policy.generate(convo("x"), [], deadline=virtual(max_new_tokens=0))
    assert (out.finish_reason, out.token_ids, out.prompt_tokens > 0) == ("deadline", [], True)
    clock = WallClock()
    late = await policy.generate(convo("x"), [], deadline=Deadline(at=clock.now(), clock=clock))
    assert late.finish_reason == "deadline" and late.token_ids == []
    assert fake.calls == []
    queued_too_long = policy._decode([1, 2], 10, wall_seconds() - 1.0, threading.Event())
    assert (queued_too_long.reason, queued_too_long.token_ids) == ("deadline", [])


async def test_a_wall_deadline_stops_decoding_between_tokens(tok, monkeypatch):
    now = [100.0]

    def fake_wall() -> float:  # every reading is 10 ms later
        now[0] += 0.01
        return now[0]

    monkeypatch.setattr(llamacpp, "wall_seconds", fake_wall)
    fake = FakeLlama([70] * 500)
    policy = LlamaCppPolicy(fake, tok, max_new_tokens=500)
    clock = WallClock()
    out = await policy.generate(
        convo("x"), [], deadline=Deadline(at=clock.now() + 0.2, clock=clock)
    )
    assert out.finish_reason == "deadline"
    assert 0 < out.completion_tokens < 30  # ~0.2 s of 10 ms readings, not the 500-token cap
    assert out.token_ids == [70] * out.completion_tokens  # what was sampled is kept


async def test_cancelling_a_call_stops_its_decode(tok):
    gate = threading.Event()
    fake = FakeLlama([70] * 10, gate=gate)
    policy = LlamaCppPolicy(fake, tok, max_new_tokens=5000)
    task = asyncio.create_task(policy.generate(convo("x"), [], deadline=virtual()))
    gate.set()
    while fake.yielded < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.stream = [2]
    after = await LlamaCppPolicy(fake, tok, max_new_tokens=5).generate(
        convo("y"), [], deadline=virtual()
    )  # queued behind the cancelled decode on the same worker, so that one has ended
    assert fake.closed == 2 and fake.yielded < 5000
    assert after.finish_reason in ("stop", "length")


def test_sampling_sets_a_seed_per_call_and_settings_are_checked(tok):
    fake = FakeLlama([2])
    policy = LlamaCppPolicy(fake, tok, temperature=0.7, top_p=0.9, seed=3)
    for _ in range(2):
        asyncio.run(policy.generate(convo("x"), [], deadline=virtual()))
    assert len(set(fake.seeds)) == 2 and all(0 <= s < 2**32 - 1 for s in fake.seeds)
    assert fake.calls[0]["temp"] == 0.7 and fake.calls[0]["top_p"] == 0.9
    with pytest.raises(ConfigError, match="bad sampling"):
        LlamaCppPolicy(fake, tok, top_p=0)
    with pytest.raises(PolicyError, match="tokenizer has"):
        LlamaCppPolicy(FakeLlama([], vocab=10), tok)


# -- the backend: names, options, errors ----------------------------------------------------------


def test_backend_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="Did you mean 'n_threads'"):
        make_policy("llamacpp:smollm2-135m", n_thread=2)
    with pytest.raises(PolicyError, match="does not exist"):
        make_policy(f"llamacpp:{tmp_path / 'missing.gguf'}")
    with pytest.raises(PolicyError, match="known names: smollm2-135m"):
        make_policy("llamacpp:no-such-model")
    text = tmp_path / "model.gguf"
    text.write_text("hello")
    with pytest.raises(PolicyError, match="not a GGUF file"):
        make_policy(f"llamacpp:{text}")
    with pytest.raises(PolicyError, match="embedded base only"):
        make_policy(f"llamacpp:{text}", adapter=str(tmp_path))
    with pytest.raises(PolicyError, match="already carries its adapter"):
        make_policy("llamacpp:smollm2-135m-timely", adapter=str(tmp_path))

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(PolicyError, match="pip install llama-cpp-python==0.3.36"):
        llamacpp_models.require_llama_cpp()


def test_the_backend_is_listed():
    from timely.policies.base import backend_help

    assert "llamacpp" in backend_help()


# -- the embedded model: same prompt ids as hf: ---------------------------------------------------


async def test_embedded_prompts_are_identical_to_hf():
    fast = make_policy("llamacpp:smollm2-135m", max_new_tokens=8, n_threads=1, n_ctx=2048)
    reference = make_policy("hf:smollm2-135m", max_new_tokens=2)
    for messages, tools in CONVERSATIONS:
        assert fast.prompt_ids(messages, tools) == reference.prompt_ids(messages, tools)
    messages, tools = CONVERSATIONS[1]
    ours = await fast.generate(messages, tools, deadline=virtual())
    theirs = await reference.generate(messages, tools, deadline=virtual())
    assert ours.prompt_token_ids == theirs.prompt_token_ids
    assert ours.completion_tokens > 0 and ours.text  # the quantised model answers something
    assert fast.name == "llamacpp:smollm2-135m"
