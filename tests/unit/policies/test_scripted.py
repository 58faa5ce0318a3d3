"""Scripted policies: replay order, early answers under time pressure, token estimates."""

import json
import math

import pytest

from timely.clock import SPEED_PRESETS, VirtualClock
from timely.errors import ConfigError, PolicyError
from timely.policies.base import POLICY_BACKENDS, Deadline, bind_policy
from timely.policies.scripted import ScriptedPolicy, make_scripted, should_stop
from timely.task import make_task
from timely.types import Message

TASK = make_task("math/multistep-v1", seed=0, difficulty=2)  # 8 calculator steps
SOLUTION = TASK.solution()


def _user(budget_line: str = "") -> Message:
    return Message(role="user", content=TASK.spec.prompt + budget_line)


async def _play(policy, *, budget: float, step_s: float, budget_line: str = "", late: float = 1.0):
    """A minimal stand-in for the loop: each tool call costs ``step_s`` on a virtual clock."""
    clock = VirtualClock()
    bound = bind_policy(policy, TASK)
    messages = [_user(budget_line)]
    while True:
        out = await bound.generate(messages, [], deadline=Deadline(at=budget * late, clock=clock))
        if not out.tool_calls:
            return out, messages
        (call,) = out.tool_calls
        messages.append(Message(role="assistant", content=out.text, tool_calls=[call]))
        clock.charge(step_s, "tool")
        messages.append(Message(role="tool", tool_call_id=call.id, content="42"))


async def test_oracle_emits_the_calls_in_order_then_the_answer():
    out, messages = await _play(make_scripted("oracle"), budget=1.0, step_s=10.0)  # ignores time
    sent = [m.tool_calls[0] for m in messages if m.role == "assistant"]
    assert sent == SOLUTION.calls
    assert out.text == SOLUTION.answer and TASK.score(out.text) == 1.0
    assert out.finish_reason == "stop"


async def test_oracle_resumes_from_the_number_of_tool_results():
    clock = VirtualClock()
    oracle = bind_policy(make_scripted("scripted:oracle"), TASK)
    messages = [_user()]
    for i in range(3):
        call = SOLUTION.calls[i]
        messages += [
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=call.id, content="x"),
        ]
    out = await oracle.generate(messages, [], deadline=Deadline(at=100, clock=clock))
    assert out.tool_calls == [SOLUTION.calls[3]]
    assert out.text.startswith("Step 4: computing ")
    assert out.finish_reason == "tool_calls"


async def test_budget_aware_answers_early_when_time_runs_short():
    # 5 s a step and 20 s of budget: after 3 steps 5 s are left < 1.5 x 5 s, so it stops there.
    out, messages = await _play(make_scripted("budget-aware"), budget=20.0, step_s=5.0)
    assert sum(m.role == "tool" for m in messages) == 3
    assert out.text == SOLUTION.fallback_answers[3]
    # with plenty of time it plays the whole script
    out, _ = await _play(make_scripted("budget-aware"), budget=1000.0, step_s=5.0)
    assert out.text == SOLUTION.answer


async def test_budget_aware_reads_the_stated_budget_when_the_deadline_is_later():
    # under a 'late' overrun the deadline is 2 x T; the prompt's budget line still rules
    line = "\n\nYou have a time budget of 20 seconds for this task."
    out, messages = await _play(
        make_scripted("budget-aware"), budget=20.0, step_s=5.0, budget_line=line, late=2.0
    )
    assert sum(m.role == "tool" for m in messages) == 3
    paper = "\n\nPlease answer within 20 seconds."
    out, messages = await _play(
        make_scripted("budget-aware", safety=1.0),
        budget=20.0,
        step_s=5.0,
        budget_line=paper,
        late=2.0,
    )
    assert sum(m.role == "tool" for m in messages) == 4  # 5 s left is not < 1.0 x 5 s; 0 s is


def test_should_stop():
    assert should_stop(0.0, 0.0, 0, safety=1.5)
    assert not should_stop(10.0, 0.0, 0, safety=1.5)
    assert should_stop(10.0, 0.0, 0, safety=1.5, first_step_s=8.0)
    assert should_stop(7.0, 10.0, 2, safety=1.5) and not should_stop(8.0, 10.0, 2, safety=1.5)


async def test_answer_now_answers_immediately():
    out, messages = await _play(make_scripted("answer-now"), budget=100.0, step_s=1.0)
    assert len(messages) == 1 and out.text == SOLUTION.fallback_answers[0]


async def test_token_estimates_and_think_tokens():
    clock = VirtualClock()
    messages = [Message(role="system", content="s" * 40), _user()]
    chars = 40 + len(messages[1].content)
    plain = bind_policy(make_scripted("oracle"), TASK)
    out = await plain.generate(messages, [], deadline=Deadline(at=100, clock=clock))
    assert out.prompt_tokens == math.ceil(chars / 4)
    call = out.tool_calls[0]
    out_chars = len(out.text) + len(call.name) + len(json.dumps(SOLUTION.calls[0].arguments))
    assert out.completion_tokens == math.ceil(out_chars / 4)
    assert out.gen_seconds >= 0.0
    thinking = bind_policy(make_scripted("oracle", think_tokens=500), TASK)
    out2 = await thinking.generate(messages, [], deadline=Deadline(at=100, clock=clock))
    assert out2.completion_tokens == out.completion_tokens + 500
    slow = SPEED_PRESETS["large-slow"]
    assert slow.generation_seconds(out2.prompt_tokens, out2.completion_tokens) > 15.0
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    with_tools = await plain.generate(messages, tools, deadline=Deadline(at=100, clock=clock))
    assert with_tools.prompt_tokens > out.prompt_tokens  # schemas are part of the prompt


async def test_registration_names_and_errors():
    assert POLICY_BACKENDS.get("scripted") is make_scripted
    for mode in ("oracle", "budget-aware", "answer-now"):
        assert make_scripted(f"scripted:{mode}").name == f"scripted:{mode}"
        assert bind_policy(make_scripted(mode), TASK).name == f"scripted:{mode}"
    with pytest.raises(ConfigError, match="unknown scripted policy"):
        make_scripted("genius")
    with pytest.raises(ConfigError, match="unknown option"):
        make_scripted("oracle", temperature=0.7)
    with pytest.raises(PolicyError, match="bound"):
        await ScriptedPolicy().generate(
            [_user()], [], deadline=Deadline(at=1, clock=VirtualClock())
        )


async def test_accepts_openai_shaped_dict_messages():
    clock = VirtualClock()
    call = SOLUTION.calls[0]
    messages = [
        {"role": "user", "content": TASK.spec.prompt},
        {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": "374"},
    ]
    out = await bind_policy(make_scripted("oracle"), TASK).generate(
        messages, [], deadline=Deadline(at=10, clock=clock)
    )
    assert out.tool_calls == [SOLUTION.calls[1]]


async def test_slip_wastes_turns_but_still_solves_and_is_seeded():
    clean, clean_msgs = await _play(make_scripted("oracle"), budget=1e6, step_s=1.0)
    out, messages = await _play(make_scripted("oracle", slip=0.5), budget=1e6, step_s=1.0)
    again, again_msgs = await _play(make_scripted("oracle", slip=0.5), budget=1e6, step_s=1.0)
    assert out.text == clean.text == SOLUTION.answer  # a slip delays the answer, never breaks it
    calls = [m.tool_calls[0] for m in messages if m.role == "assistant"]
    assert len(calls) > len(SOLUTION.calls)
    distinct = [c.arguments for c in calls if not c.id.endswith("-retry")]
    assert distinct == [c.arguments for c in SOLUTION.calls]
    assert [m.model_dump() for m in messages] == [m.model_dump() for m in again_msgs]
    with pytest.raises(ConfigError, match="slip"):
        make_scripted("oracle", slip=1.0)
