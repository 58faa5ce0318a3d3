"""The server's precise waits (timely_server.waits) on a real clock: never early, and never stuck.

How close to the target they end is measured in bench/tool_server.py (injection error), not
asserted here; these tests pin what must hold on any machine, loaded or not.
"""

import asyncio

from tests.helpers.timing import WALL_SLACK_S
from timely.clock import wall_seconds
from timely_server.waits import wait_until


async def test_a_wait_never_ends_before_its_target():
    for seconds in (0.0, 0.0001, 0.001, 0.003, 0.01):
        end = wall_seconds() + seconds
        await wait_until(end)
        assert end <= wall_seconds() < end + WALL_SLACK_S


async def test_concurrent_waits_all_end_after_their_own_targets():
    async def one(seconds: float) -> float:
        end = wall_seconds() + seconds
        await wait_until(end)
        return wall_seconds() - end

    late = await asyncio.gather(*(one(0.001 * (i % 20)) for i in range(200)))
    assert min(late) >= 0
    assert max(late) < WALL_SLACK_S


async def test_a_cancelled_wait_leaves_the_timer_working():
    task = asyncio.create_task(wait_until(wall_seconds() + 0.002))
    await asyncio.sleep(0)  # let it hand over to the timer thread
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    end = wall_seconds() + 0.003
    await wait_until(end)
    assert wall_seconds() >= end


async def test_the_bulk_goes_through_the_given_wait():
    asked: list[float] = []

    async def wait(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(seconds)

    end = wall_seconds() + 0.05
    await wait_until(end, wait)
    assert wall_seconds() >= end
    assert len(asked) == 1 and 0.04 < asked[0] < 0.05  # all but the last ~2 ms
