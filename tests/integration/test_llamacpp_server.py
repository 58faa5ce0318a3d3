"""The ``openai:`` policy against an OpenAI-compatible server nobody here wrote: llama-cpp-python's
own ``llama_cpp.server`` (its ``[server]`` extra) serving the embedded SmolLM2-135M GGUF on
loopback, one decode thread. This is how docs/policies.md evaluates any local GGUF model over
HTTP, and these tests run its commands.

What the server does, as 0.3.36 ships it (each point is a test):

- plain replies carry ``usage``, recorded as the server counted it;
- streams carry no ``usage`` chunk although the policy asks (``stream_options`` is ignored), so
  a streamed step is charged from the text and flagged ``usage_estimated``;
- a wall-clock deadline closes the stream, and the server stops generating when the client
  hangs up (it checks for a disconnect after every chunk), so the next request is served at once;
- its default chat format (the GGUF's own template, ChatML for SmolLM2) drops ``tools=``: no
  ``tool_calls`` ever come back. ``--chat_format chatml-function-calling`` renders the tools
  and returns real ``tool_calls`` (arguments constrained to the tool's JSON schema), but only
  when the request names a ``tool_choice`` (no ``tool_choice`` means no tools there, unlike
  OpenAI's default of "auto"): the policy sends it through ``extra_body``. A forced choice
  streams too; "auto" answers plainly but refuses to stream a tool call;
- a Hermes ``<tool_call>`` in the text (``tool_format=hermes-in-system``) is parsed by the policy
  like any other server's;
- ``timely eval`` plays a small suite against it and the run makes a leaderboard.

The whole module takes about 20-40 s on two busy cores (the server loads in about a second);
it is marked slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from tests.helpers.llamacpp_server import MODEL_ALIAS, llamacpp_server, server_missing
from tests.helpers.timing import WALL_SLACK_S
from timely.clock import WallClock, wall_seconds
from timely.errors import PolicyError
from timely.policies.base import Deadline, make_policy
from timely.types import Message, ToolCall

MISSING = server_missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

EXPRESSION = r"[0-9+*/ ()-]+"
CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            # A free string may run on past the token cap (newlines included: the server's
            # JSON-schema grammar allows them); a pattern keeps the call short and valid.
            "properties": {"expression": {"type": "string", "pattern": f"^{EXPRESSION}$"}},
            "required": ["expression"],
        },
    },
}
# SmolLM2's end-of-turn and end-of-text tokens, banned where a reply must run long.
NO_EOS = {"logit_bias": {"2": -100, "0": -100}}
FORCE_CALCULATOR = {"tool_choice": {"type": "function", "function": {"name": "calculator"}}}
HERMES_GRAMMAR = (
    'root ::= "<tool_call>\\n{\\"name\\": \\"calculator\\", \\"arguments\\": '
    '{\\"expression\\": \\"" [0-9] [0-9]? [*+-] [0-9] [0-9]? "\\"}}\\n</tool_call>"'
)


@pytest.fixture(scope="module")
def gguf() -> Path:
    from timely.errors import PolicyError as Missing
    from timely.policies.hf_models import embedded_gguf_path

    try:
        return embedded_gguf_path()
    except Missing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def server(gguf):
    """The documented command: the GGUF's own chat template, streams not interrupted."""
    with llamacpp_server(gguf, "--interrupt_requests", "false") as url:
        yield url


@pytest.fixture(scope="module")
def fc_server(gguf):
    """The same model with llama-cpp-python's function-calling chat format."""
    with llamacpp_server(gguf, "--chat_format", "chatml-function-calling") as url:
        yield url


def ask(text: str = "What is 6*7?") -> list[Message]:
    return [Message(role="user", content=text)]


def wall_deadline(seconds: float) -> Deadline:
    clock = WallClock()
    return Deadline(at=clock.now() + seconds, clock=clock)


async def generate(base_url, messages=None, *, seconds=30.0, tools=(), **options):
    """One call of a fresh policy on a wall-clock deadline: (completion, policy, elapsed)."""
    options.setdefault("temperature", 0.0)
    options.setdefault("max_tokens", 24)
    policy = make_policy(f"openai:{MODEL_ALIAS}", base_url=base_url, **options)
    started = wall_seconds()
    try:
        out = await policy.generate(messages or ask(), list(tools), deadline=wall_deadline(seconds))
    finally:
        await policy.aclose()
    return out, policy, wall_seconds() - started


def test_the_server_lists_the_model_by_its_alias(server):
    models = httpx2.get(f"{server}/models", timeout=5, trust_env=False).json()
    assert [m["id"] for m in models["data"]] == [MODEL_ALIAS]


async def test_a_plain_reply_records_the_servers_usage(server):
    out, _, elapsed = await generate(server)
    assert out.text.strip() and out.finish_reason in ("stop", "length")
    assert not out.usage_estimated and not out.tool_calls and not out.malformed
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": "What is 6*7?"}],
        "temperature": 0.0,
        "max_tokens": 24,
    }
    direct = httpx2.post(f"{server}/chat/completions", json=body, timeout=30, trust_env=False)
    usage = direct.json()["usage"]
    assert (out.prompt_tokens, out.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert 0 < out.completion_tokens <= 24 and 0 < out.gen_seconds <= elapsed


async def test_a_stream_has_the_same_text_and_is_charged_from_it(server):
    plain, _, _ = await generate(server)
    out, policy, _ = await generate(server, stream=True)
    assert (out.text, out.finish_reason) == (plain.text, plain.finish_reason)  # greedy
    # llama_cpp.server ignores stream_options: no usage chunk, so the step is estimated.
    assert out.usage_estimated
    assert out.prompt_tokens > 0 and out.completion_tokens >= len(out.text) // 4 > 0
    stats = policy.stream_stats
    assert (stats.streams, stats.cut, stats.first_tokens) == (1, 0, 1)
    assert 0 < stats.last_first_token_s <= out.gen_seconds


async def test_a_wall_deadline_cuts_the_stream_and_the_server_stops(server):
    story = ask("Write a very long story about a lighthouse keeper.")
    # 3 s: enough for the first tokens on a busy machine, far from the 1800 tokens' time.
    out, policy, elapsed = await generate(
        server, story, seconds=3.0, stream=True, max_tokens=1800, extra_body=NO_EOS
    )
    assert 3.0 <= elapsed < 3.0 + WALL_SLACK_S  # not the 1800 tokens
    assert out.finish_reason == "deadline" and out.text.strip()  # what arrived is kept
    assert out.usage_estimated and out.completion_tokens > 0 and out.prompt_tokens > 0
    assert policy.stream_stats.cut == 1
    # The server saw the hang-up and freed the model: the next request does not queue behind
    # the rest of the abandoned story (at this rate, many seconds more).
    rate = out.completion_tokens / out.gen_seconds
    next_out, _, next_elapsed = await generate(server, max_tokens=8)
    assert next_out.text and next_out.finish_reason in ("stop", "length")
    assert next_elapsed < min(5.0, (1800 - out.completion_tokens) / rate / 2), (rate, next_elapsed)


async def test_concurrent_streams_both_finish_without_interrupt_requests(server):
    # The server runs one request at a time; with its default --interrupt_requests true a
    # second request would end the first stream early (no finish_reason: a PolicyError).
    first, second = await asyncio.gather(
        generate(server, stream=True, max_tokens=16),
        generate(server, ask("Name a colour."), stream=True, max_tokens=16),
    )
    for out, _, _ in (first, second):
        assert out.text.strip() and out.finish_reason in ("stop", "length")


async def test_the_default_chat_format_drops_tools(server):
    out, _, _ = await generate(server, ask("Use the calculator: what is 6*7?"), tools=[CALC])
    assert out.tool_calls == [] and out.malformed == [] and out.text.strip()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_tool_choice_returns_native_tool_calls(fc_server, stream):
    out, _, _ = await generate(
        fc_server,
        ask("Use the calculator: what is 6*7?"),
        tools=[CALC],
        max_tokens=48,
        stream=stream,
        extra_body=FORCE_CALCULATOR,
    )
    assert out.finish_reason == "tool_calls" and out.malformed == []
    assert [c.name for c in out.tool_calls] == ["calculator"]
    call = out.tool_calls[0]
    assert call.id.startswith("call_") and set(call.arguments) == {"expression"}
    assert re.fullmatch(EXPRESSION, call.arguments["expression"])  # the schema's grammar
    assert out.usage_estimated is stream  # usage only on the plain reply


async def test_auto_tool_choice_calls_but_cannot_stream_a_call(fc_server):
    prompt = ask("What is 123*45? Call the calculator tool.")
    auto = {"tool_choice": "auto"}
    out, _, _ = await generate(fc_server, prompt, tools=[CALC], max_tokens=48, extra_body=auto)
    assert [c.name for c in out.tool_calls] == ["calculator"]  # greedy: this prompt calls it
    assert set(out.tool_calls[0].arguments) == {"expression"}
    # "Automatic streaming tool choice is not supported": the server fails the stream.
    with pytest.raises(PolicyError, match="stream"):
        await generate(fc_server, prompt, tools=[CALC], stream=True, extra_body=auto)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hermes_tool_call_in_the_text_is_parsed(server, stream):
    # The untrained model never writes the format by itself (reference/embedded-model.md); the
    # server's GBNF grammar makes it write one, as a trained model would.
    out, _, _ = await generate(
        server,
        ask("What is 6*7? Use the calculator."),
        tools=[CALC],
        max_tokens=48,
        stream=stream,
        tool_format="hermes-in-system",
        extra_body={"grammar": HERMES_GRAMMAR},
    )
    assert out.malformed == [] and len(out.tool_calls) == 1
    call = out.tool_calls[0]
    assert call.name == "calculator" and call.id.startswith("call_1_")
    assert call == ToolCall(id=call.id, name="calculator", arguments=call.arguments)
    assert set(call.arguments) == {"expression"} and call.arguments["expression"]


BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
SUITE = """\
name: llamacpp-http
tasks:
  - id: math/arithmetic-v1
    difficulty: 1
policies:
  - spec: scripted:oracle
    label: oracle
episodes: 2
latencies: [constant:0.2]
budgets:
  seconds: [20]
clock: virtual
concurrency: 2
"""


def timely(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "timely"), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV
    )


@pytest.mark.parametrize(
    ("clock", "stream"),
    [("virtual", False), ("wall", True)],
    ids=["virtual-plain", "wall-stream"],
)
def test_timely_eval_plays_a_suite_against_the_server(server, tmp_path, clock, stream):
    (tmp_path / "suite.yaml").write_text(SUITE)
    res = timely(
        "eval", "--suite", "suite.yaml", "--clock", clock, "--policy", "oracle",
        "--policy", f"openai:{MODEL_ALIAS}", "--base-url", server,
        "--policy-option", f"stream={str(stream).lower()}", "--policy-option", "max_tokens=64",
        "--no-plots", "--out", "run", cwd=tmp_path,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "episode errors 0" in out, out
    trajs = [json.loads(line) for line in (tmp_path / "run/trajectories.jsonl").open()]
    played = [t for t in trajs if t["policy"] == f"openai:{MODEL_ALIAS}"]
    assert sorted(t["seed"] for t in played) == [0, 1], out
    steps = [s for t in played for s in t["steps"]]
    assert steps and all(s["gen_s"] > 0 and s["completion_tokens"] > 0 for s in steps)
    # Exact usage from plain replies; a stream from this server is charged from its text.
    assert all(s["usage_estimated"] is stream for s in steps)
    board = timely("leaderboard", "run", "--out", "report", cwd=tmp_path)
    assert board.returncode == 0, board.stdout + board.stderr
    table = (tmp_path / "report/leaderboard.md").read_text()
    assert f"openai:{MODEL_ALIAS}" in table and "oracle" in table
