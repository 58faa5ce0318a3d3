"""Folding streamed chunks into a reply, and the ``stream`` option of the openai backend."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from timely.errors import ConfigError
from timely.policies.base import check_policy, make_policy
from timely.policies.openai_reply import StreamedReply, StreamStats, assemble_completion
from timely.types import ToolCall


def chunk(*, content=None, calls=None, finish=None, usage=None, index=0):
    empty = content is None and calls is None and finish is None
    choices = [] if empty else [
        NS(index=index, delta=NS(content=content, tool_calls=calls), finish_reason=finish)
    ]  # fmt: skip
    return NS(choices=choices, usage=usage)


def call(index, *, id=None, name=None, arguments=None):
    return NS(index=index, id=id, function=NS(name=name, arguments=arguments))


def test_fragments_of_two_tool_calls_are_joined_by_index():
    reply = StreamedReply()
    reply.add(chunk(content=""), 0.1)  # the role chunk carries no token
    assert reply.first_token_s is None and not reply.received
    reply.add(chunk(calls=[call(0, id="a", name="calculator")]), 0.2)
    reply.add(chunk(calls=[call(1, id="b", name="echo", arguments='{"text"')]), 0.3)
    reply.add(chunk(calls=[call(0, arguments='{"expr'), call(1, arguments=': "hi"}')]), 0.4)
    reply.add(chunk(calls=[call(0, name="calculator", arguments='ession": "1"}')]), 0.5)
    reply.add(chunk(finish="tool_calls"), 0.6)
    reply.add(chunk(usage=NS(prompt_tokens=7, completion_tokens=9)), 0.7)
    assert reply.first_token_s == 0.2 and reply.chunks == 7
    assert reply.tool_calls() == [
        ("a", "calculator", '{"expression": "1"}'),  # a repeated name is not doubled
        ("b", "echo", '{"text": "hi"}'),
    ]
    out = assemble_completion(
        reply.text, reply.tool_calls(), reply.finish_reason, reply.usage, 2, 0.7, False
    )
    assert out.tool_calls == [
        ToolCall(id="a", name="calculator", arguments={"expression": "1"}),
        ToolCall(id="b", name="echo", arguments={"text": "hi"}),
    ]
    assert (out.prompt_tokens, out.completion_tokens, out.usage_estimated) == (7, 9, False)


def test_other_choices_are_ignored_and_content_is_joined():
    reply = StreamedReply()
    reply.add(chunk(content="Answer:"), 0.1)
    reply.add(chunk(content="no", index=1), 0.2)
    reply.add(chunk(content=" 42", finish="stop"), 0.3)
    assert (reply.text, reply.finish_reason) == ("Answer: 42", "stop")


def test_a_reply_cut_at_the_deadline_keeps_whole_calls_and_drops_the_half_one():
    raw = [("a", "calculator", '{"expression": "1"}'), ("b", "calculator", '{"expre')]
    out = assemble_completion("", raw, "deadline", None, 1, 1.0, False)
    assert [c.id for c in out.tool_calls] == ["a"] and out.malformed == []
    assert out.finish_reason == "deadline" and out.usage_estimated
    whole = assemble_completion("", raw, "tool_calls", None, 1, 1.0, False)
    assert len(whole.malformed) == 1  # a finished reply with bad JSON is the model's fault


def test_stream_stats_average_the_first_tokens():
    stats = StreamStats()
    for first in (0.2, 0.4, None):
        stats.record(StreamedReply(first_token_s=first), cut=first is None)
    assert (stats.streams, stats.cut, stats.first_tokens) == (3, 1, 2)
    assert stats.mean_first_token_s == pytest.approx(0.3) and stats.last_first_token_s == 0.4


def test_check_policy_accepts_the_stream_option():
    check_policy("openai:m", base_url="http://127.0.0.1:9/v1", stream=True)
    assert make_policy("openai:m", base_url="http://127.0.0.1:9/v1").stream is False
    with pytest.raises(ConfigError, match="stream must be true or false"):
        check_policy("openai:m", base_url="http://127.0.0.1:9/v1", stream="sometimes")
    with pytest.raises(ConfigError, match="Did you mean 'stream'"):
        check_policy("openai:m", base_url="http://127.0.0.1:9/v1", strem=True)
