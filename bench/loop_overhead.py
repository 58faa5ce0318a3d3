"""Benchmark: per-step overhead of the agent loop, and virtual-clock speed-up.

Runs episodes of a synthetic task (K tool calls, then an answer) with a scripted policy and an
in-process no-op tool backend, so everything measured is the loop's own bookkeeping: messages,
Steps, deadlines, clock charges, time-status lines, scoring, the Trajectory.

Prints:
- loop overhead per step (goal <= 1 ms), next to an anchor measured in the same run: a bare
  loop that awaits the same policy and tool with no accounting. Ratio = loop / anchor.
- the same through the real tool server over the in-process ASGI transport (HTTP stack
  included), for reference.
- virtual-clock speed-up = simulated seconds / wall seconds (goal >= 1000x) with 1 s tools.

Usage: python bench/loop_overhead.py [--episodes 200] [--steps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from timely.budget import Budget
from timely.clock import VirtualClock
from timely.loop import EpisodeOptions, run_episode
from timely.policies.base import Deadline
from timely.task import ScriptedSolution, Task, TaskSpec
from timely.types import Completion, Message, ToolCall, ToolResult


class CountTask(Task):
    """Make K no-op tool calls, then answer K."""

    def __init__(self, seed: int, steps: int, tool: str = "echo") -> None:
        self.steps = steps
        self.spec = TaskSpec(
            id="bench/count-v1",
            seed=seed,
            prompt=f"Call {tool} {steps} times.",
            tools=(tool,),
            default_budget_s=1e6,
        )

    def score(self, answer, trajectory=None) -> float:
        return float(answer == f"Answer: {self.steps}")

    def solution(self) -> ScriptedSolution:
        return ScriptedSolution(calls=[], answer=f"Answer: {self.steps}")


class CountPolicy:
    name = "bench:count"

    def __init__(self, steps: int) -> None:
        self.steps = steps

    async def generate(self, messages: list[Message], tools, *, deadline: Deadline) -> Completion:
        done = sum(1 for m in messages if m.role == "tool")
        if done >= self.steps:
            return Completion(text=f"Answer: {self.steps}", prompt_tokens=100, completion_tokens=5)
        call = ToolCall(id=f"c{done}", name="echo", arguments={"text": "x"})
        return Completion(text="", tool_calls=[call], prompt_tokens=100, completion_tokens=20)


class NoopTools:
    """An in-process tool backend that does nothing but charge its latency."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def list_tools(self):
        return [
            {
                "type": "function",
                "function": {"name": "echo", "description": "", "parameters": {"type": "object"}},
            }
        ]

    async def call(self, name, arguments, *, call_id, session_id, deadline) -> ToolResult:
        deadline.clock.charge(self.latency_s, "tool")
        return ToolResult(
            call_id=call_id,
            name=name,
            content="x",
            latency_s=self.latency_s,
            charged_s=self.latency_s,
        )


async def bare_anchor(episodes: int, steps: int) -> float:
    """The same awaits with no accounting at all: the floor any loop pays."""
    policy, tools = CountPolicy(steps), NoopTools()
    t0 = time.perf_counter()
    for _ in range(episodes):
        clock = VirtualClock()
        messages = [Message(role="user", content="go")]
        while True:
            c = await policy.generate(messages, [], deadline=Deadline(at=1e9, clock=clock))
            if not c.tool_calls:
                break
            for call in c.tool_calls:
                r = await tools.call(
                    call.name,
                    call.arguments,
                    call_id=call.id,
                    session_id=None,
                    deadline=Deadline(at=1e9, clock=clock),
                )
                messages.append(Message(role="tool", content=r.content, tool_call_id=call.id))
    return time.perf_counter() - t0


async def timed_loop(episodes: int, steps: int, tools, latency_s: float) -> tuple[float, float]:
    policy = CountPolicy(steps)
    budget = Budget(seconds=1e6)
    simulated = 0.0
    t0 = time.perf_counter()
    for seed in range(episodes):
        traj = await run_episode(
            policy,
            CountTask(seed, steps),
            tools,
            VirtualClock(),
            budget,
            options=EpisodeOptions(max_turns=steps + 2),
        )
        assert traj.score == 1.0, traj.end_reason
        simulated += traj.elapsed_s
    return time.perf_counter() - t0, simulated


async def main(episodes: int, steps: int) -> None:
    turns = episodes * (steps + 1)
    anchor = await bare_anchor(episodes, steps)
    loop_s, _ = await timed_loop(episodes, steps, NoopTools(), 0.0)
    print(f"episodes={episodes} steps/episode={steps} turns={turns}")
    print(f"anchor (bare awaits):        {anchor / turns * 1e3:8.4f} ms/turn")
    print(
        f"run_episode, no-op tools:    {loop_s / turns * 1e3:8.4f} ms/turn "
        f"(goal <= 1 ms)  ratio vs anchor {loop_s / anchor:6.1f}x"
    )

    from timely.toolclient import ToolClient
    from timely_server.app import ServerConfig, create_app

    app = create_app(ServerConfig(latency="constant:1.0"))
    async with ToolClient.in_process(app) as client:
        n = max(1, episodes // 4)
        asgi_s, simulated = await timed_loop(n, steps, client, 1.0)
    asgi_turns = n * (steps + 1)
    print(
        f"run_episode, ASGI tool server: {asgi_s / asgi_turns * 1e3:6.3f} ms/turn "
        f"(includes the HTTP stack in-process)"
    )
    print(
        f"virtual-clock speed-up (1 s tools): {simulated:,.0f} simulated s in {asgi_s:.2f} wall s"
        f" = {simulated / asgi_s:,.0f}x (goal >= 1000x)"
    )
    nsim = 0.0
    t0 = time.perf_counter()
    _, nsim = await timed_loop(episodes, steps, NoopTools(1.0), 1.0)
    wall = time.perf_counter() - t0
    print(f"virtual-clock speed-up, no-op tools at 1 s: {nsim / wall:,.0f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(main(args.episodes, args.steps))
