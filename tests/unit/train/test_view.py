"""The training view: one masked sequence under the prefix property, per-turn samples otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.episodes import play_calculator
from timely.errors import TrainingDataError
from timely.policies.base import make_policy
from timely.policies.hf import HFPolicy
from timely.prompting import assistant_text, prompt_token_ids
from timely.train.view import ViewForm, training_view
from timely.types import Message, ToolCall, Trajectory

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
async def greedy_episode(model, tok) -> Trajectory:
    """A three-turn tool episode; greedy decoding follows the script, in canonical form."""
    (traj,) = await play_calculator(HFPolicy(model, tok, max_new_tokens=120), [0])
    assert len(traj.steps) == 3 and traj.n_tool_calls == 2
    return traj


def test_sequence_aligns_mask_and_logprobs_with_the_sampled_ids(greedy_episode, tok):
    view = training_view(greedy_episode)
    assert view.form == ViewForm.SEQUENCE and view.broken_at is None
    seq = view.sequence
    assert seq is not None
    assert len(seq.token_ids) == len(seq.loss_mask) == len(seq.logprobs)
    steps = greedy_episode.steps
    assert seq.prompt_length == len(steps[0].prompt_token_ids)
    expected_logprobs = [0.0] * len(seq.token_ids)
    for step, (start, end) in zip(steps, seq.turn_spans, strict=True):
        # The model saw exactly the sequence up to each turn, then sampled the span.
        assert seq.token_ids[:start] == step.prompt_token_ids
        assert seq.token_ids[start:end] == step.token_ids
        expected_logprobs[start:end] = step.logprobs
    expected_mask = [0] * len(seq.token_ids)
    for start, end in seq.turn_spans:
        expected_mask[start:end] = [1] * (end - start)
    assert seq.loss_mask == expected_mask
    assert seq.logprobs == expected_logprobs
    assert seq.token_ids[-1] == steps[-1].token_ids[-1]
    # Between turns: not sampled, mask 0 - the closing newline, tool result, time status and
    # the next assistant header.
    gap = tok.decode(seq.token_ids[seq.turn_spans[0][1] : seq.turn_spans[1][0]])
    assert gap.startswith("\n<|im_start|>user\n<tool_response>")
    assert "[time]" in gap and gap.endswith("<|im_start|>assistant\n")
    assert [t.completion_ids for t in view.turns] == [s.token_ids for s in steps]


def test_broken_prefix_falls_back_to_per_turn_samples(greedy_episode):
    steps = greedy_episode.steps
    cut = len(steps[0].prompt_token_ids) + 3  # inside turn 0's sampled ids
    prompt = list(steps[1].prompt_token_ids)
    prompt[cut] += 1  # what a different re-tokenisation of the assistant text looks like
    broken = greedy_episode.model_copy(deep=True)
    broken.steps[1].prompt_token_ids = prompt
    view = training_view(broken)
    assert view.form == ViewForm.TURNS and view.sequence is None
    assert view.broken_at == steps[1].index
    assert f"first difference at token {cut}" in view.reason and "sampled ids" in view.reason
    assert [(t.prompt_ids, t.completion_ids, t.logprobs) for t in view.turns] == [
        (s.prompt_token_ids, s.token_ids, s.logprobs) for s in broken.steps
    ]


def test_a_prompt_shorter_than_the_previous_turn_breaks_the_prefix(greedy_episode):
    broken = greedy_episode.model_copy(deep=True)
    broken.steps[2].prompt_token_ids = broken.steps[1].prompt_token_ids[:-1]
    view = training_view(broken)
    assert view.form == ViewForm.TURNS and view.broken_at == broken.steps[2].index


def test_trailing_turn_without_samples_is_left_out(greedy_episode):
    cut = greedy_episode.model_copy(deep=True)
    cut.steps[-1].token_ids, cut.steps[-1].logprobs = [], []
    view = training_view(cut)
    assert view.form == ViewForm.SEQUENCE and len(view.turns) == 2


async def test_an_episode_without_token_records_is_a_clear_error():
    (traj,) = await play_calculator(make_policy("scripted:oracle"), [0])
    assert traj.steps and all(s.token_ids is None for s in traj.steps)
    with pytest.raises(TrainingDataError, match="no token records.*hf: policy"):
        training_view(traj)


def test_inconsistent_records_are_errors(greedy_episode):
    short = greedy_episode.model_copy(deep=True)
    short.steps[0].logprobs = short.steps[0].logprobs[:-1]
    with pytest.raises(TrainingDataError, match="log-probs"):
        training_view(short)
    gap = greedy_episode.model_copy(deep=True)
    gap.steps[0].token_ids = None
    with pytest.raises(TrainingDataError, match="step 0 has no token records"):
        training_view(gap)


def test_the_view_module_does_not_import_torch():
    code = "import sys, timely.train.view; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_embedded_template_keeps_the_prefix_only_for_canonical_assistant_text():
    """SmolLM2's ChatML inserts content verbatim and closes with ``<|im_end|>\\n``: a turn whose
    sampled ids are the tokenisation of :func:`assistant_text` (plus ``<|im_end|>``) is a prefix
    of the next prompt; text the loop re-renders differently (stripped whitespace, a call
    re-serialised) is not."""
    from timely.policies.hf_models import load_model

    _, etok = load_model()
    end = etok.convert_tokens_to_ids("<|im_end|>")
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    call = ToolCall(id="t0_call_0_0", name="calculator", arguments={"expression": "6*7"})
    history = [Message(role="user", content="What is 6*7?")]
    first = prompt_token_ids(etok, history, tools)

    def next_prompt(content: str, calls: list[ToolCall] | None) -> list[int]:
        turn = Message(role="assistant", content=content, tool_calls=calls)
        result = Message(role="tool", content="42\n[time] 1.0s used of 60s", tool_call_id=call.id)
        return prompt_token_ids(etok, [*history, turn, result], tools)

    def keeps_prefix(sampled_text: str, content: str, calls: list[ToolCall] | None) -> bool:
        sampled = list(etok(sampled_text, add_special_tokens=False)["input_ids"]) + [end]
        return next_prompt(content, calls)[: len(first) + len(sampled)] == first + sampled

    canonical = assistant_text("Let me compute.", [call])
    assert keeps_prefix(canonical, "Let me compute.", [call])
    assert keeps_prefix(assistant_text("", [call]), "", [call])
    # The parser strips content and the renderer re-serialises calls: these samples differ.
    assert not keeps_prefix(" " + canonical, "Let me compute.", [call])
    assert not keeps_prefix(
        canonical.replace("\n<tool_call>", " <tool_call>"), "Let me compute.", [call]
    )
    compact = '<tool_call>{"name":"calculator","arguments":{"expression":"6*7"}}</tool_call>'
    assert not keeps_prefix(compact, "", [call])
