"""Benchmark: the agent endpoint (``timely serve``) on loopback, against anchors from the same run.

The servers run under uvicorn in subprocesses (so the load generator does not share their GIL);
the load generator is an httpx2 AsyncClient in this process. The agent is a scripted stand-in
(one calculator call, then the answer), so what is measured is the endpoint, not a model.

Prints:
- overhead: ms per run through ``POST /v1/chat/completions`` (one client, sequential) over
  calling :func:`timely.loop.run_episode` directly with the same agent and in-process tools;
- throughput: runs/s at 50 concurrent clients, over a bare FastAPI route that parses the same
  body and answers the same shape, served by the same uvicorn settings (a run is a whole
  episode, two model turns and a tool call, against one JSON round trip), and over the runs/s
  of run_episode itself called in a loop, the ceiling of one process (goal >= 0.7x);
- budget overshoot: 50 concurrent clients whose tool takes 5 s against a 0.3 s budget; the
  client-observed response time past the budget, p50/p99 (the margin docs/serving.md quotes),
  and the run's own elapsed time past the budget.

Usage: python bench/serve.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "bench:agent"


class BenchAgent:
    """Calls the calculator once, then answers with its result (no model: the endpoint is timed)."""

    name = MODEL

    async def generate(self, messages, tools, *, deadline):
        from timely.types import Completion, ToolCall

        results = [m for m in messages if m.role == "tool"]
        if tools and not results:
            call = ToolCall(id="c", name="calculator", arguments={"expression": "6*7"})
            return Completion(tool_calls=[call], prompt_tokens=40, completion_tokens=12)
        answer = results[-1].content.splitlines()[0] if results else "?"
        return Completion(text=f"The answer is {answer}", prompt_tokens=60, completion_tokens=6)


# -- the servers (subprocess side) ------------------------------------------------------------
def bare_app() -> Any:
    """The anchor: one FastAPI route that parses a chat body and answers a completion's shape."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        text = body["messages"][-1]["content"]
        return {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


def agent_app(latency: str) -> Any:
    from timely.serve.app import create_app
    from timely.serve.config import ServeConfig

    config = ServeConfig(
        policy=MODEL, tool_latency=latency, max_concurrent_runs=256, wrap_up_fraction=0
    )
    return create_app(config, policy=BenchAgent())


def run_server(kind: str, port: int, latency: str) -> None:
    import uvicorn

    app = bare_app() if kind == "bare" else agent_app(latency)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the load generator -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, kind: str, latency: str = "constant:0") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--server", kind, "--port", str(self.port)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([*cmd, "--latency", latency], env=env)

    def __enter__(self) -> Server:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx2.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start on {self.url}")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def body(budget_s: float) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "compute 6*7"}],
        "time_budget_s": budget_s,
    }


async def load(
    url: str, n: int, clients: int, budget_s: float
) -> tuple[float, list[float], list[dict]]:
    """``n`` requests from ``clients`` concurrent clients: (seconds, latencies, bodies)."""
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    bodies: list[dict] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body(budget_s))
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
                bodies.append(r.json())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies, bodies


async def direct_runs(n: int) -> float:
    """Seconds per run of run_episode itself: same agent, in-process tools, wall clock."""
    from timely.budget import Budget
    from timely.clock import WallClock
    from timely.loop import EpisodeOptions, run_episode
    from timely.serve.chat_task import ChatTask
    from timely.tool_servers import in_process_app
    from timely.toolclient import ToolClient
    from timely.types import Message

    agent = BenchAgent()
    async with ToolClient.in_process(in_process_app()) as tools:
        start = time.perf_counter()
        for _ in range(n):
            task = ChatTask([Message(role="user", content="compute 6*7")], ("calculator",), 12, 30)
            traj = await run_episode(
                agent, task, tools, WallClock(), Budget(seconds=30), options=EpisodeOptions()
            )
            assert traj.final_answer == "The answer is 42", traj.final_answer
        return (time.perf_counter() - start) / n


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (CI smoke)")
    parser.add_argument("--server", choices=["bare", "agent"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency", default="constant:0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        run_server(args.server, args.port, args.latency)
        return
    n_seq, n_load = (50, 300) if args.quick else (200, 2000)

    direct = asyncio.run(direct_runs(n_seq))
    with Server("agent") as agent:
        asyncio.run(load(agent.url, 20, 1, 30))  # warm up
        seconds, _, _ = asyncio.run(load(agent.url, n_seq, 1, 30))
        served = seconds / n_seq
        asyncio.run(load(agent.url, 200, 50, 30))
        agent_s, _, _ = asyncio.run(load(agent.url, n_load, 50, 30))
    with Server("bare") as bare:
        asyncio.run(load(bare.url, 200, 50, 30))
        bare_s, _, _ = asyncio.run(load(bare.url, n_load, 50, 30))
    with Server("agent", latency="constant:5") as slow:
        budget = 0.3
        _, waits, bodies = asyncio.run(load(slow.url, 100 if args.quick else 300, 50, budget))
    over_client = [w - budget for w in waits]
    over_run = [b["timely"]["elapsed_s"] - budget for b in bodies]
    cut = sum(b["timely"]["end_reason"] == "budget_exhausted" for b in bodies)

    print(
        f"overhead: {served * 1e3:.2f} ms/run served over HTTP vs {direct * 1e3:.2f} ms/run "
        f"calling run_episode: +{(served - direct) * 1e3:.2f} ms/run ({served / direct:.2f}x)"
    )
    agent_rps, bare_rps = n_load / agent_s, n_load / bare_s
    print(
        f"throughput at 50 clients: {agent_rps:.0f} runs/s vs bare FastAPI {bare_rps:.0f} "
        f"req/s: {agent_rps / bare_rps:.2f}x (goal >= 0.5x)"
    )
    print(
        f"budget overshoot (tool 5 s, budget {budget} s, 50 clients, {cut}/{len(bodies)} cut "
        f"off): client p50 {pct(over_client, 50) * 1e3:.1f} ms, p99 "
        f"{pct(over_client, 99) * 1e3:.1f} ms; run elapsed p50 {pct(over_run, 50) * 1e3:.1f} "
        f"ms, p99 {pct(over_run, 99) * 1e3:.1f} ms"
    )
    print(
        json.dumps(
            {
                "overhead_ms": round((served - direct) * 1e3, 3),
                "served_over_direct": round(served / direct, 3),
                "runs_per_s_50": round(agent_rps, 1),
                "bare_req_per_s_50": round(bare_rps, 1),
                "throughput_ratio": round(agent_rps / bare_rps, 3),
                "throughput_over_loop": round(agent_rps * direct, 3),
                "overshoot_client_p99_ms": round(pct(over_client, 99) * 1e3, 2),
                "overshoot_run_p99_ms": round(pct(over_run, 99) * 1e3, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
