"""TokenServerPolicy: the one loop on a token-in/token-out server (verl's rollout shape).

Prompts extend the sampled ids (one sequence per episode, tool tokens masked), the budget caps
``max_tokens`` on the virtual clock, and the server's outputs become the step records.
"""

from __future__ import annotations

import pytest

from tests.helpers.env import in_process_tools
from tests.helpers.tiny_model import tiny_tokenizer
from tests.helpers.token_server import ScriptedTokenServer
from timely.budget import Budget
from timely.clock import VirtualClock, speed_profile
from timely.continuous_tokens import ContinuousTokens
from timely.errors import ConfigError, TrainingDataError
from timely.loop import EpisodeOptions, run_episode
from timely.policies.token_server import TokenServerPolicy
from timely.prompting import prompt_token_ids, render_prompt
from timely.task import make_task
from timely.train.view import ViewForm, training_view
from timely.types import EndReason, Message, ToolCall

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "(632 - 151 * 2) * 35"}}\n</tool_call><|im_end|>'  # noqa: E501
ANSWER = "The value is 11550.\nAnswer: 11550<|im_end|>"


@pytest.fixture
def tok():
    return tiny_tokenizer()


def test_next_prompt_is_the_last_prompt_then_the_sampled_ids(tok):
    tokens = ContinuousTokens(tok)
    first = [Message(role="system", content="sys"), Message(role="user", content="2+2?")]
    prompt = tokens.prompt_ids(first, [])
    assert prompt == prompt_token_ids(tok, first, [])
    sampled = tok("  odd   spacing <|im_end|>", add_special_tokens=False)["input_ids"]
    tokens.sampled(first, prompt, sampled)
    history = [
        *first,
        Message(role="assistant", content="odd spacing"),
        Message(role="user", content="and 3+3?"),
    ]
    nxt = tokens.prompt_ids(history, [])
    assert nxt[: len(prompt) + len(sampled)] == prompt + sampled
    # What follows is the template's text for the new message, and nothing twice.
    assert tok.decode(nxt[len(prompt) + len(sampled) :]) == (
        "\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokens.initial_length == len(prompt)


def test_a_canonical_reply_gives_the_same_text_as_a_full_render(tok):
    tokens = ContinuousTokens(tok)
    first = [Message(role="user", content="compute")]
    prompt = tokens.prompt_ids(first, [])
    call = ToolCall(id="c0", name="calculator", arguments={"expression": "1+1"})
    reply = render_prompt(
        tok,
        [*first, Message(role="assistant", content="", tool_calls=[call])],
        add_generation_prompt=False,
    )[len(tok.decode(prompt)) :].rstrip("\n")
    tokens.sampled(first, prompt, tok(reply, add_special_tokens=False)["input_ids"])
    history = [
        *first,
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="2", tool_call_id="c0", name="calculator"),
    ]
    assert tok.decode(tokens.prompt_ids(history, [])) == render_prompt(tok, history, [])


def test_a_reply_cut_before_its_stop_token_gets_the_end_of_turn_as_context(tok):
    tokens = ContinuousTokens(tok)
    first = [Message(role="user", content="q")]
    prompt = tokens.prompt_ids(first, [])
    cut = tok("Answer: 4", add_special_tokens=False)["input_ids"]
    tokens.sampled(first, prompt, cut)
    history = [
        *first,
        Message(role="assistant", content="Answer: 4"),
        Message(role="user", content="again"),
    ]
    tail = tokens.prompt_ids(history, [])[len(prompt) + len(cut) :]
    assert tok.decode(tail).startswith("<|im_end|>\n<|im_start|>user\nagain")


def test_a_conversation_that_does_not_extend_the_last_call_is_refused(tok):
    tokens = ContinuousTokens(tok)
    first = [Message(role="user", content="q")]
    tokens.sampled(first, tokens.prompt_ids(first, []), [2])
    with pytest.raises(TrainingDataError, match="extend the previous turn"):
        tokens.prompt_ids([*first, Message(role="user", content="not a reply")], [])


async def _episode(server, tok, *, budget=600.0, speed="smollm2-cpu", **policy_kw):
    policy = TokenServerPolicy(server, tok, sampling_params={"temperature": 1.0}, **policy_kw)
    async with in_process_tools("constant:1.0") as tools:
        traj = await run_episode(
            policy,
            make_task("math/arithmetic-v1", seed=0),
            tools,
            VirtualClock(),
            Budget(seconds=budget),
            options=EpisodeOptions(time="push", speed=speed),
        )
    return policy, traj


async def test_a_tool_episode_is_one_sequence_with_tool_tokens_masked(tok):
    server = ScriptedTokenServer(tok, [CALL, ANSWER])
    policy, traj = await _episode(server, tok)
    assert traj.end_reason == EndReason.ANSWERED and traj.score == 1.0
    assert [s.finish_reason for s in traj.steps] == ["stop", "stop"]
    view = training_view(traj)
    assert view.form == ViewForm.SEQUENCE
    seq = view.sequence
    # The server saw exactly the sequence: its second prompt is the first plus sample plus
    # the tool result; what was sampled is masked 1, the tool result (with time status) 0.
    assert server.requests[1]["prompt_ids"] == seq.token_ids[: seq.turn_spans[1][0]]
    (a0, b0), (a1, b1) = seq.turn_spans
    assert seq.loss_mask[a0:b0] == [1] * (b0 - a0) and seq.loss_mask[b0:a1] == [0] * (a1 - b0)
    between = tok.decode(seq.token_ids[b0:a1])
    assert "<tool_response>" in between and "11550" in between and "s left" in between
    assert seq.logprobs[a1:b1] == [-0.5] * (b1 - a1)
    assert {r["request_id"] for r in server.requests} == {policy.request_id}
    # Virtual time: generation charged from the token counts, plus the tool's latency.
    profile = speed_profile("smollm2-cpu")
    gen = sum(profile.generation_seconds(s.prompt_tokens, s.completion_tokens) for s in traj.steps)
    assert traj.gen_s == pytest.approx(gen)
    assert traj.tool_s == pytest.approx(1.0, abs=0.05)


async def test_the_budget_caps_max_tokens_and_a_cut_reply_is_never_the_answer(tok):
    _, free = await _episode(ScriptedTokenServer(tok, [ANSWER]), tok)
    # A budget that holds the prompt's prefill and ten new tokens.
    budget = speed_profile("smollm2-cpu").generation_seconds(free.steps[0].prompt_tokens, 10)
    server = ScriptedTokenServer(tok, [ANSWER])
    _, traj = await _episode(server, tok, budget=budget)
    cap = server.requests[0]["max_tokens"]
    assert cap == 10 < len(tok(ANSWER, add_special_tokens=False)["input_ids"])
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED and traj.final_answer is None
    assert traj.steps[0].finish_reason == "deadline" and len(traj.steps[0].token_ids) == cap
    assert traj.elapsed_s <= budget + 1e-9


async def test_the_response_length_ends_the_episode_with_a_clear_error(tok):
    server = ScriptedTokenServer(tok, [CALL, CALL, ANSWER])
    _, traj = await _episode(server, tok, response_length=150)
    assert traj.end_reason == EndReason.POLICY_ERROR
    assert "response_length" in traj.error


async def test_an_aborted_request_is_a_policy_error_not_an_answer(tok):
    server = ScriptedTokenServer(tok, [ANSWER], stop_reason="aborted")
    _, traj = await _episode(server, tok)
    assert traj.end_reason == EndReason.POLICY_ERROR and "aborted" in traj.error


def test_bad_settings_are_refused(tok):
    with pytest.raises(ConfigError):
        TokenServerPolicy(ScriptedTokenServer(tok, []), tok, max_new_tokens=0)


def test_one_stop_rule_for_every_policy_that_samples_ids(tok):
    from types import SimpleNamespace

    from timely.prompting import stop_token_ids

    # An exported tokenizer whose EOS is not the end of a turn (the smoke model's is
    # <|im_start|>): the turn still ends on <|im_end|>, and on the generation config's EOS.
    odd = tiny_tokenizer()
    odd.eos_token = "<|im_start|>"
    im_start, im_end = odd.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert stop_token_ids(odd) == sorted({im_start, im_end})
    assert 0 in stop_token_ids(odd, SimpleNamespace(eos_token_id=[0]))
    policy = TokenServerPolicy(ScriptedTokenServer(odd, []), odd)
    assert policy.stop_ids == set(stop_token_ids(odd))


async def test_the_weight_versions_of_the_first_and_last_sample_are_kept(tok):
    class Versioned(ScriptedTokenServer):
        async def generate(self, request_id, **kwargs):
            out = await super().generate(request_id, **kwargs)
            step = 7 + len(self.requests)  # 8 for the first call, 9 for the second
            out.extra_fields = {"global_steps": step, "min_global_steps": step}
            out.extra_fields["max_global_steps"] = step
            return out

    task = make_task("math/arithmetic-v1", seed=3, split="train")
    server = Versioned(tok, [CALL, ANSWER])
    policy = TokenServerPolicy(server, tok, max_new_tokens=256)
    async with in_process_tools("constant:0.5") as tools:
        await run_episode(policy, task, tools, VirtualClock(), Budget(seconds=1e6))
    assert len(server.requests) == 2
    assert (policy.min_global_steps, policy.max_global_steps) == (8, 9)


def test_chat_template_kwargs_reach_the_first_prompt_and_every_later_one(tok):
    from tests.helpers.token_server import CHATML_THINK

    think = tiny_tokenizer(CHATML_THINK)
    tokens = ContinuousTokens(think, chat_template_kwargs={"enable_thinking": False})
    first = [Message(role="user", content="2+2?")]
    prompt = tokens.prompt_ids(first, [])
    assert think.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tokens.sampled(first, prompt, think("4<|im_end|>", add_special_tokens=False)["input_ids"])
    later = tokens.prompt_ids([*first, Message(role="assistant", content="4"), *first], [])
    assert think.decode(later).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    plain = ContinuousTokens(think).prompt_ids(first, [])
    assert not think.decode(plain).endswith("</think>\n\n")  # the template's own default
