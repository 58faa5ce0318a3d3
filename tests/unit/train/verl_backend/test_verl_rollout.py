"""One verl rollout on a scripted token server: the row's episode as one masked sequence."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.env import in_process_tools
from tests.helpers.tiny_model import tiny_tokenizer
from tests.helpers.token_server import ScriptedTokenServer
from tests.helpers.verl_rows import arithmetic_row, small_config, solution_of, solving_replies
from timely.errors import ConfigError, ToolServerUnavailable, TrainingDataError
from timely.toolclient import ToolClient
from timely.train.verl.rollout import AgentSettings, play_row, row_task
from timely.types import EndReason
from timely_server.app import ServerConfig, running_server


@pytest.fixture
def tok():
    return tiny_tokenizer()


def settings(**rl):
    return AgentSettings(rl=small_config(**rl).rl, tool_servers={"constant:0.5": "http://x"})


async def play(tok, replies, extra_info, *, response_length=2048, prompt_length=4096, **rl):
    server = ScriptedTokenServer(tok, replies)
    async with in_process_tools(extra_info["latency"]) as tools:
        out = await play_row(
            server,
            tok,
            extra_info,
            settings(**rl),
            tools,
            sampling_params={"temperature": 1.0, "logprobs": True},
            prompt_length=prompt_length,
            response_length=response_length,
            rng=np.random.default_rng(0),
        )
    return server, out


async def test_a_solved_row_is_one_sequence_with_the_tool_result_masked(tok):
    extra_info, task = arithmetic_row()
    server, out = await play(tok, solving_replies(task), extra_info)
    traj = out.trajectory
    assert traj.task_id == task.id and traj.seed == task.spec.seed and traj.split == "train"
    assert traj.end_reason == EndReason.ANSWERED and traj.score == 1.0
    assert traj.budget_s == 60.0 and traj.latency == "constant:0.5"
    # verl's prompt is the server's first prompt; the response is everything after it, and
    # the second request is exactly prompt + response up to the second sample.
    first, second = server.requests[0]["prompt_ids"], server.requests[1]["prompt_ids"]
    assert out.prompt_ids == first
    assert out.prompt_ids + out.response_ids[: len(second) - len(first)] == second
    sampled = [i for i, m in zip(out.response_ids, out.response_mask, strict=True) if m]
    replies = [tok(r, add_special_tokens=False)["input_ids"] for r in solving_replies(task)]
    assert sampled == [i for r in replies for i in r]
    # Between the first sample and the second prompt's end: the tool result, masked.
    gap = slice(len(replies[0]), len(second) - len(first))
    assert set(out.response_mask[gap]) == {0}
    assert "<|im_start|>" in tok.decode(out.response_ids[gap])
    assert out.response_logprobs is not None
    assert len(out.response_logprobs) == len(out.response_ids)
    assert [lp for lp, m in zip(out.response_logprobs, out.response_mask, strict=True) if m] == [
        -0.5
    ] * len(sampled)
    n_calls = len(solution_of(task).calls)
    assert out.num_turns == 1 + 2 * n_calls + 1  # user; each call turn and its result; answer


async def test_extra_fields_carry_the_outcome_and_the_step_timings(tok):
    extra_info, task = arithmetic_row()
    _, out = await play(tok, solving_replies(task), extra_info)
    f, traj = out.extra_fields, out.trajectory
    assert f["timely_score"] == 1.0 and f["timely_answered"] and f["timely_compliant"]
    assert f["timely_elapsed_s"] == pytest.approx(traj.elapsed_s) and f["timely_budget_s"] == 60
    n_calls = len(solution_of(task).calls)
    assert f["timely_tool_s"] == pytest.approx(0.5 * n_calls)  # the row's latency, virtual
    assert f["timely_step_tool_s"] == [pytest.approx(0.5)] * n_calls + [0.0]
    assert f["timely_tool_calls"] == n_calls
    assert sum(f["timely_step_gen_s"]) == pytest.approx(f["timely_gen_s"])
    assert f["timely_step_tokens"] == [s.completion_tokens for s in traj.steps]
    assert f["timely_clock"] == "virtual" and f["timely_speed_factor"] == 1.0
    assert out.gen_wall_s >= 0 and out.tool_wall_s > 0


async def test_the_budget_caps_max_tokens_and_cuts_the_episode(tok):
    # smollm2-cpu reads 400 tokens/s and decodes 23: after the ~1.4k-token prompt, a 6 s budget
    # leaves the first turn a few dozen tokens.
    extra_info, task = arithmetic_row(budget_s=6.0)
    rambling = "word " * 400 + "<|im_end|>"
    server, out = await play(tok, [rambling], extra_info)
    assert 0 < server.requests[0]["max_tokens"] < 100  # the budget, not max_new_tokens
    assert out.trajectory.end_reason == EndReason.BUDGET_EXHAUSTED
    assert out.extra_fields["timely_answered"] is False
    # What was sampled is what the capped request returned, and it is all in the response.
    assert sum(out.response_mask) == server.requests[0]["max_tokens"] == len(out.response_ids)


async def test_a_long_episode_is_cut_to_the_response_length(tok):
    extra_info, task = arithmetic_row(budget_s=1e6)
    call = solving_replies(task)[0]  # the same call every turn: the episode never answers
    server, out = await play(tok, [call] * 30, extra_info, response_length=400, max_turns=30)
    assert 0 < len(out.response_ids) <= 400 and len(out.response_mask) == len(out.response_ids)
    # The episode stops when the next tool result would not fit; that result, which no turn
    # saw, is not part of the sequence, which ends with the last sample.
    assert out.response_mask[-1] == 1
    assert out.trajectory.end_reason == EndReason.POLICY_ERROR  # ContextFull
    assert "response tokens" in out.extra_fields["timely_error"]
    sent = [len(r["prompt_ids"]) - len(out.prompt_ids) + r["max_tokens"] for r in server.requests]
    assert max(sent) <= 400  # no request could sample past the response length


async def test_a_first_prompt_over_the_prompt_length_is_refused(tok):
    extra_info, task = arithmetic_row()
    with pytest.raises(TrainingDataError, match="prompt_length=16"):
        server, _ = await play(tok, solving_replies(task), extra_info, prompt_length=16)


async def test_a_too_long_prompt_samples_nothing(tok):
    extra_info, task = arithmetic_row()
    server = ScriptedTokenServer(tok, solving_replies(task))
    async with in_process_tools("constant:0.5") as tools:
        with pytest.raises(TrainingDataError):
            await play_row(
                server,
                tok,
                extra_info,
                settings(),
                tools,
                sampling_params={},
                prompt_length=16,
                response_length=512,
            )
    assert server.requests == []  # refused before the first request


def test_a_row_from_elsewhere_is_refused_with_what_is_missing():
    with pytest.raises(TrainingDataError, match=r"lacks \['task_id'.*re-export"):
        row_task({"index": 3})


def test_a_latency_without_a_server_is_a_config_error():
    with pytest.raises(ConfigError, match="no tool server for latency 'constant:9'"):
        settings().tool_server("constant:9")


async def test_a_dead_tool_server_fails_the_rollout_loudly(tok):
    extra_info, task = arithmetic_row()
    with running_server(ServerConfig(port=0)) as url:
        pass  # the port is closed again
    async with ToolClient(url, max_retries=0, connect_timeout_s=0.5) as tools:
        with pytest.raises(ToolServerUnavailable, match="tool server for latency"):
            await play_row(
                ScriptedTokenServer(tok, solving_replies(task)),
                tok,
                extra_info,
                settings(),
                tools,
                sampling_params={},
                prompt_length=4096,
                response_length=2048,
            )
