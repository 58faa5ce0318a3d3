"""Rate limits of the OpenAI-compatible backend against the loopback stub: client-side pacing
(requests and tokens per minute, aiolimiter) and 429s waited out as their Retry-After asks, every
wait charged to the episode's budget, never a silent success or a crash.

The limiter's minute is shortened (``RATE_PERIOD_S``) so pacing shows in a fraction of a second;
assertions count waits and requests, and virtual-clock charges are exact (the Retry-After value),
so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.env import in_process_tools
from timely.budget import Budget
from timely.clock import VirtualClock, WallClock
from timely.errors import ConfigError, PolicyError
from timely.loop import EpisodeOptions, run_episode
from timely.policies import rate_limits
from timely.policies.base import Deadline, make_policy
from timely.task import make_task
from timely.types import EndReason, Message


@pytest.fixture(autouse=True)
def fresh(stub):
    app = stub[0]
    app.state.requests.clear()
    app.state.throttle_429s = 1
    app.state.retry_after = {"Retry-After": "1"}


def ask() -> list[Message]:
    return [Message(role="user", content="What is 6*7?")]


def requests_for(app, model):
    return [r for r in app.state.requests if r["model"] == model]


async def play(policy, budget_s=30.0):
    task = make_task("math/arithmetic-v1", seed=0)
    options = EpisodeOptions()
    async with in_process_tools(latency="constant:0") as tools:
        traj = await run_episode(
            policy, task, tools, VirtualClock(), Budget(seconds=budget_s), options=options
        )
    return traj, options.speed


async def test_a_429_is_a_wait_charged_to_a_virtual_budget(stub):
    app, base_url = stub
    app.state.retry_after = {"Retry-After": "0.2"}
    policy = make_policy("openai:throttled", base_url=base_url)
    traj, speed = await play(policy)
    await policy.aclose()
    step = traj.steps[0]
    cost = speed.generation_seconds(step.prompt_tokens, step.completion_tokens)
    assert traj.end_reason == EndReason.ANSWERED and traj.final_answer
    assert step.gen_s == pytest.approx(0.2 + cost)  # the wait, then the generation
    assert len(requests_for(app, "throttled")) == 2
    stats = policy.rate_limits.stats
    assert (stats.throttled, stats.waited_s, stats.cut) == (1, pytest.approx(0.2), 0)


async def test_a_retry_after_past_the_budget_ends_the_episode_at_the_deadline(stub):
    app, base_url = stub
    app.state.retry_after = {"Retry-After": "100"}
    policy = make_policy("openai:throttled", base_url=base_url)
    traj, _ = await play(policy, budget_s=10.0)
    await policy.aclose()
    assert traj.end_reason == EndReason.BUDGET_EXHAUSTED and traj.final_answer is None
    assert traj.steps[0].gen_s == pytest.approx(10.0)  # the rest of the budget, charged
    assert len(requests_for(app, "throttled")) == 1  # no pointless retry
    assert policy.rate_limits.stats.cut == 1


async def test_a_429_on_a_wall_clock_waits_its_retry_after_ms_and_retries(stub):
    app, base_url = stub
    app.state.retry_after = {"retry-after-ms": "100", "Retry-After": "1"}
    policy = make_policy("openai:throttled", base_url=base_url)
    clock = WallClock()
    out = await policy.generate(ask(), [], deadline=Deadline(at=clock.now() + 20, clock=clock))
    await policy.aclose()
    assert out.text == "Answer: 42" and out.finish_reason == "stop"
    assert len(requests_for(app, "throttled")) == 2
    assert policy.rate_limits.stats.waited_s == pytest.approx(0.1)  # ms wins over seconds


async def test_a_429_without_retry_after_backs_off_exponentially(stub, monkeypatch):
    app, base_url = stub
    app.state.retry_after = {}
    app.state.throttle_429s = 2
    monkeypatch.setattr(rate_limits, "DEFAULT_BACKOFF_S", 0.05)
    policy = make_policy("openai:throttled", base_url=base_url)
    clock = VirtualClock()
    out = await policy.generate(ask(), [], deadline=Deadline(at=30, clock=clock))
    await policy.aclose()
    assert out.text == "Answer: 42"
    assert clock.now() == pytest.approx(0.05 + 0.1)  # charged to the virtual clock
    assert policy.rate_limits.stats.throttled == 2


async def test_out_of_quota_is_a_policy_error_not_a_wait(stub):
    app, base_url = stub
    policy = make_policy("openai:no-quota", base_url=base_url)
    clock = VirtualClock()
    with pytest.raises(PolicyError, match="insufficient_quota"):
        await policy.generate(ask(), [], deadline=Deadline(at=30, clock=clock))
    await policy.aclose()
    assert len(requests_for(app, "no-quota")) == 1 and clock.now() == 0


async def test_requests_per_minute_paces_concurrent_calls(stub, monkeypatch):
    app, base_url = stub
    monkeypatch.setattr(rate_limits, "RATE_PERIOD_S", 0.2)  # "a minute" of 0.2 s
    policy = make_policy("openai:answer", base_url=base_url, requests_per_minute=1)
    clock = VirtualClock()
    outs = await asyncio.gather(
        *(policy.generate(ask(), [], deadline=Deadline(at=30, clock=clock)) for _ in range(3))
    )
    await policy.aclose()
    assert [o.text for o in outs] == ["Answer: 42"] * 3
    stats = policy.rate_limits.stats
    assert stats.limiter_waits == 2 and stats.cut == 0  # one in the burst, two paced
    assert stats.waited_s > 0 and clock.now() == pytest.approx(stats.waited_s)  # charged
    assert len(requests_for(app, "answer")) == 3


async def test_tokens_per_minute_counts_prompt_and_token_cap(stub, monkeypatch):
    app, base_url = stub
    monkeypatch.setattr(rate_limits, "RATE_PERIOD_S", 0.2)
    # 40 tokens of cap + the prompt: one request fits in 60, two do not.
    policy = make_policy("openai:answer", base_url=base_url, tokens_per_minute=60, max_tokens=40)
    clock = VirtualClock()
    for _ in range(2):
        out = await policy.generate(ask(), [], deadline=Deadline(at=30, clock=clock))
        assert out.text == "Answer: 42"
    await policy.aclose()
    assert policy.rate_limits.stats.limiter_waits == 1
    assert requests_for(app, "answer")[0]["max_tokens"] == 40


async def test_a_request_larger_than_the_token_limit_fails_before_it_is_sent(stub):
    app, base_url = stub
    policy = make_policy("openai:answer", base_url=base_url, tokens_per_minute=5, max_tokens=10)
    with pytest.raises(PolicyError, match="more than tokens_per_minute=5"):
        await policy.generate(ask(), [], deadline=Deadline(at=30, clock=VirtualClock()))
    await policy.aclose()
    assert not requests_for(app, "answer")


async def test_a_limiter_wait_never_outlives_the_deadline(stub):
    app, base_url = stub  # the real minute: the second request would wait ~60 s
    policy = make_policy("openai:answer", base_url=base_url, requests_per_minute=1)
    clock = WallClock()
    first = await policy.generate(ask(), [], deadline=Deadline(at=clock.now() + 20, clock=clock))
    second = await policy.generate(ask(), [], deadline=Deadline(at=clock.now() + 0.2, clock=clock))
    await policy.aclose()
    assert first.text == "Answer: 42" and second.finish_reason == "deadline"
    assert policy.rate_limits.stats.cut == 1 and len(requests_for(app, "answer")) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute must be a positive number"),
        ({"tokens_per_minute": "lots", "max_tokens": 8}, "tokens_per_minute must be a positive"),
        ({"tokens_per_minute": 1000}, "needs max_tokens too"),
        ({"request_per_minute": 10}, "Did you mean 'requests_per_minute'"),
    ],
)
def test_bad_rate_limit_options_fail_clearly(options, message):
    with pytest.raises(ConfigError, match=message):
        make_policy("openai:m", base_url="http://127.0.0.1:9/v1", **options)


def test_retry_after_forms():
    from email.utils import format_datetime

    from timely.clock import utc_now

    assert rate_limits.retry_after({"Retry-After": "3"}) == 3.0
    assert rate_limits.retry_after({"retry-after-ms": "250"}) == 0.25
    assert rate_limits.retry_after({"Retry-After": "soon"}) is None
    assert rate_limits.retry_after({}) is None
    later = rate_limits.retry_after({"Retry-After": format_datetime(utc_now(), usegmt=True)})
    assert later is not None and 0.0 <= later <= 1.0  # a date in the past or now: no wait
