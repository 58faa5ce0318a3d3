"""A bounded soak on loopback: many concurrent calls with injected faults, none lost or doubled.

Every call must end in exactly one recorded outcome (a result, a tool error, a deadline, an
exhausted retry), every answer must belong to its own call, and the server's own counters must
agree with what the clients recorded: requests = calls + retries, faults by kind match.
"""

import asyncio
import collections

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from timely.clock import WallClock
from timely.policies.base import Deadline
from timely.toolclient import ToolClient

CONCURRENCY = 200
FAULTS = "error=0.02,5xx=0.02,hang=0.005,slow=0.005,slow_s=0.01"  # 5% of calls


def server_counts(url):
    text = httpx2.get(f"{url}/metrics", trust_env=False, timeout=10).text
    requests, faults = collections.Counter(), collections.Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "timely_tool_requests_total":
                requests[s.labels["status"]] += s.value
            elif s.name == "timely_tool_faults_total":
                faults[s.labels["kind"]] += s.value
    return requests, faults


async def soak(tool_server_process, n_calls):
    # The server runs as its own process (`timely tool-server`), as it would for real.
    args = ["--faults", FAULTS, "--seed", "11", "--max-concurrency", "1000"]
    with tool_server_process(*args) as (url, _):
        clock = WallClock()
        outcomes = {}
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(client, i):
            async with gate:
                call_id = f"call-{i}"
                result = await client.call(
                    "echo",
                    {"text": call_id},
                    call_id=call_id,
                    session_id=f"worker-{i % CONCURRENCY}",
                    deadline=Deadline(clock.now() + 2.0, clock),
                )
                assert call_id not in outcomes, "an outcome was recorded twice"
                outcomes[call_id] = result

        t0 = clock.now()
        async with ToolClient(url, backoff_s=0.01, max_connections=CONCURRENCY) as client:
            async with asyncio.timeout(120):  # stops by itself, whatever happens
                await asyncio.gather(*(one(client, i) for i in range(n_calls)))
        elapsed = clock.now() - t0
        requests, faults = server_counts(url)
    return outcomes, requests, faults, elapsed


def check(n_calls, outcomes, requests, faults):
    assert len(outcomes) == n_calls  # none lost
    kinds = collections.Counter()
    for call_id, r in outcomes.items():
        assert r.call_id == call_id
        if r.ok:
            assert r.content == call_id  # the answer to this call, not another
            kinds["ok"] += 1
        else:
            kinds[r.error] += 1
    retries = sum(r.retries for r in outcomes.values())
    assert sum(requests.values()) == n_calls + retries  # none duplicated on the server
    # Only 5xx faults are retried; every other fault is the final answer of its call.
    assert requests["503"] == faults["http_5xx"] == retries + kinds["injected_fault"]
    assert kinds["tool_error"] == faults["error"]
    # A hang ends at the deadline; the client records the fault when the server's 504 beats
    # its own cutoff, and a plain deadline otherwise. A clean call may also queue past its
    # deadline under load: rare, but an outcome all the same.
    hung = sum(r.error == "deadline_exceeded" and r.fault == "hang" for r in outcomes.values())
    assert hung <= faults["hang"] <= kinds["deadline_exceeded"]
    assert kinds["deadline_exceeded"] - hung <= n_calls // 100
    slow = sum(r.ok and r.fault == "slow_first_byte" for r in outcomes.values())
    assert slow == faults["slow_first_byte"]
    assert all(
        r.fault == "http_5xx"
        for r in outcomes.values()
        if r.ok and r.retries and r.fault != "slow_first_byte"
    )
    assert set(kinds) <= {"ok", "tool_error", "deadline_exceeded", "injected_fault"}
    share = 1 - kinds["ok"] / n_calls
    assert 0.01 < share < 0.1  # about the 3% that reach the result (5xx are retried away)
    return kinds


async def test_soak_2000_calls_at_200_concurrent(tool_server_process):
    outcomes, requests, faults, elapsed = await soak(tool_server_process, 2000)
    check(2000, outcomes, requests, faults)
    assert elapsed < 30


@pytest.mark.slow
async def test_soak_10000_calls_at_200_concurrent(tool_server_process):
    outcomes, requests, faults, elapsed = await soak(tool_server_process, 10_000)
    kinds = check(10_000, outcomes, requests, faults)
    assert elapsed < 90, (elapsed, kinds)
