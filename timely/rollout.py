"""The rollout engine: everything that *arranges* episodes around the one loop, written once.

:func:`timely.loop.run_episode` plays one episode. Every use of the project (``timely run``,
Timely-Eval, the expert data, GRPO, the verl export, the agent endpoint) also needs the same
setup around it: a tool server per latency, a policy loaded once, a fresh clock per episode,
episode options, unconstrained-time calibration for relative budgets, a speed-factor draw and a
concurrency limit. Before this module each of them wrote that setup itself; now they describe an
episode as an :class:`EpisodeSpec` and let one :class:`Runtime` provide what episodes share.
The engine never plays a turn itself: :meth:`Runtime.play` hands everything to ``run_episode``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from timely.budget import TIME_AWARENESS_PRESETS, Budget, TimeAwareness
from timely.clock import Clock, ClockKind, SpeedProfile, VirtualClock, make_clock, speed_profile
from timely.events import Observer
from timely.loop import EpisodeOptions, episode_opening, run_episode
from timely.policies.base import Policy, make_policy
from timely.reward import RewardConfig
from timely.task import Split, Task, make_task
from timely.tool_servers import in_process_app
from timely.toolclient import ToolBackend, ToolClient
from timely.types import Message, Trajectory

# "No time limit" is a budget that never binds; calibration plays under it.
NO_LIMIT_S = 1e6
# A latency cell of this form is a running tool server, not a latency model.
SERVER_PREFIX = "server:"


# --- what one episode is ------------------------------------------------------------------------
class EpisodeSpec(BaseModel):
    """One episode, described completely enough to play and to key it.

    The task instance, who plays it, under which tool latency, budget, time status and
    generation speed, and which sample of its cell it is. Everything run-wide (reward variant,
    turn limit, clock kind) lives in the :class:`Runtime` or the caller's options.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(description="Registered task id (or alias).")
    seed: int = Field(description="Instance seed.")
    split: Split = Field("test", description="train or test.")
    difficulty: int | None = Field(None, description="Family level (None: its default).")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="Family-specific options passed to the task."
    )
    policy: str = Field("", description="Policy spec (or suite label) that plays it.")
    latency: str = Field("constant:0", description="Tool latency spec, or server:URL.")
    budget: Budget = Field(description="Time budget and overrun rule.")
    time: TimeAwareness = Field(
        default_factory=TimeAwareness, description="How budget and time status are shown."
    )
    speed: SpeedProfile = Field(
        default_factory=lambda: speed_profile("small-fast"),
        description="Virtual clock: how generation time is charged.",
    )
    sample: int = Field(0, ge=0, description="Which sample of this cell (group member, epoch).")
    key: str | None = Field(
        None,
        description="Episode key: the resume key and the tool session id (Timely-Eval's plan "
        "key). None: the loop makes a fresh session id per play.",
    )

    def make_task(self) -> Task:
        """The task instance this spec names."""
        return make_task(
            self.task_id,
            seed=self.seed,
            split=self.split,
            difficulty=self.difficulty,
            **self.task_options,
        )


def time_awareness(mode: str | TimeAwareness) -> TimeAwareness:
    """A time-status mode or preset name as :class:`TimeAwareness`.

    ``none`` is "no limit": the model is told nothing about time (the ``blind`` preset); other
    names are :data:`timely.budget.TIME_AWARENESS_PRESETS`, else a plain status mode (``auto``).
    """
    if isinstance(mode, TimeAwareness):
        return mode
    name = "blind" if mode == "none" else mode
    if name in TIME_AWARENESS_PRESETS:
        return TIME_AWARENESS_PRESETS[name]
    return TimeAwareness(mode=mode)  # type: ignore[arg-type] - validated by the model


def episode_options(
    *,
    time: str | TimeAwareness,
    speed: str | SpeedProfile,
    reward: RewardConfig | None = None,
    max_turns: int | None = None,
) -> EpisodeOptions:
    """The one place :class:`~timely.loop.EpisodeOptions` are assembled from their parts.

    Args:
        time: time awareness, or a mode/preset name (:func:`time_awareness`).
        speed: the virtual clock's speed profile (or its name).
        reward: the reward variant (None: the default).
        max_turns: model turns before the episode stops (None: the task's own limit).
    """
    return EpisodeOptions(
        time=time_awareness(time),
        speed=speed_profile(speed),
        reward=reward or RewardConfig(),
        max_turns=max_turns,
    )


# --- the generation speed factor ----------------------------------------------------------------
def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One draw, uniform in log space between ``low`` and ``high``."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_speed_factor(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """The generation slow-down of one episode, log-uniform in ``bounds``.

    A degenerate range (``low >= high``) is the fixed factor ``low`` and consumes no random
    number, so a run without speed variation keeps its other draws where they were.
    """
    low, high = bounds
    return log_uniform(rng, low, high) if low < high else float(low)


def scaled_speed(base: str | SpeedProfile, factor: float) -> SpeedProfile:
    """``base`` slowed down by ``factor`` (2.0: generation takes twice as long)."""
    p = speed_profile(base)
    if factor == 1.0:
        return p
    return p.model_copy(
        update={
            "name": f"{p.name}x{factor:.2f}",
            "prefill_tok_s": p.prefill_tok_s / factor,
            "decode_tok_s": p.decode_tok_s / factor,
            "overhead_s": p.overhead_s * factor,
        }
    )


# --- opening messages ---------------------------------------------------------------------------
async def opening(
    task: Task, options: EpisodeOptions, budget_s: float, tools: ToolBackend | None
) -> tuple[list[Message], list[dict[str, Any]]]:
    """The messages and tool schemas of an episode's first model call, as the loop builds them.

    The loop calls :func:`timely.loop.episode_opening` itself; this lists the served tools first,
    so exporters (verl's parquet rows) get the exact first prompt without playing an episode.

    Raises:
        TaskError: the task needs tools that ``tools`` does not serve (or no backend is given).
    """
    listed = await tools.list_tools() if task.spec.tools and tools is not None else None
    return episode_opening(task, options.time, budget_s, listed)


# --- calibration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationKey:
    """Everything an unconstrained time depends on: the cache key of :class:`Calibrator`."""

    expert: str  # who played it, with whatever changes its timing (a token counter)
    task_id: str
    split: str
    seed: int
    variant: str  # the task as the expert plays it (reference or direct solution)
    latency: str
    time_mode: str
    speed: SpeedProfile


class Calibrator:
    """Unconstrained seconds: an expert's time on an instance with a budget that never binds.

    Relative budgets (``2x``) multiply it. One episode per key on a virtual clock, through the
    runtime's tool servers, cached for the runtime's life; deterministic per key, so caching
    changes no result.

    Args:
        runtime: provides the tool servers.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.cache: dict[CalibrationKey, float] = {}

    async def seconds(
        self,
        task: Task,
        *,
        latency: str,
        time_mode: str,
        speed: str | SpeedProfile,
        expert: Policy,
        expert_name: str,
        variant: str = "reference",
    ) -> float:
        """``expert``'s unconstrained time on ``task`` at ``latency`` (at least 1 ms).

        Args:
            task: the instance (possibly a view with another scripted solution).
            latency: tool latency spec.
            time_mode: time-status mode of the calibration episode.
            speed: base speed profile of the virtual clock.
            expert: the policy that plays it.
            expert_name: names ``expert`` and its timing in the cache key.
            variant: names the task view in the cache key.
        """
        profile = speed_profile(speed)
        key = CalibrationKey(
            expert_name,
            task.id,
            task.spec.split,
            task.spec.seed,
            variant,
            latency,
            time_mode,
            profile,
        )
        if key not in self.cache:
            traj = await run_episode(
                expert,
                task,
                await self._runtime.tools(latency),
                VirtualClock(),
                Budget(seconds=NO_LIMIT_S),
                options=episode_options(time=TimeAwareness(mode=time_mode), speed=profile),  # type: ignore[arg-type]
            )
            self.cache[key] = max(traj.elapsed_s, 1e-3)
        return self.cache[key]

    async def oracle_seconds(
        self, task: Task, latency: str, speed: str | SpeedProfile, time_mode: str = "push"
    ) -> float:
        """The scripted oracle's unconstrained time with its own token estimates."""
        oracle = await self._runtime.policy("scripted:oracle")
        return await self.seconds(
            task,
            latency=latency,
            time_mode=time_mode,
            speed=speed,
            expert=oracle,
            expert_name="scripted:oracle",
        )


# --- the runtime --------------------------------------------------------------------------------
class Runtime:
    """What episodes share: policies, tool servers, clocks, the calibrator and concurrency.

    Use as an async context manager; leaving it closes the tool clients it opened and the
    policies it built.

    Args:
        clock: the kind of clock :meth:`clock` makes for each episode.
        seed: seed of the in-process tool servers' latency and fault streams.
        tool_server: a running tool server every latency goes to (None: in-process servers).
        per_tool_latency: in-process servers: latency overrides by tool name.
        concurrency: episodes played at once through :attr:`limiter`.
    """

    def __init__(
        self,
        *,
        clock: ClockKind = "virtual",
        seed: int = 0,
        tool_server: str | None = None,
        per_tool_latency: Mapping[str, str] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.clock_kind: ClockKind = clock
        self.seed = seed
        self.tool_server = tool_server
        self.per_tool_latency = dict(per_tool_latency or {})
        self.limiter = anyio.CapacityLimiter(max(1, concurrency))
        self.calibrator = Calibrator(self)
        self._policies: dict[str, Policy] = {}
        self._policy_locks: dict[str, asyncio.Lock] = {}
        self._tools: dict[str, ToolBackend] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the policies built here and every tool client opened here."""
        policies, self._policies = list(self._policies.values()), {}
        for policy in policies:
            aclose = getattr(policy, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        await self._stack.aclose()
        self._tools = {}

    def clock(self) -> Clock:
        """A fresh clock for one episode."""
        return make_clock(self.clock_kind)

    async def policy(self, spec: str, options: Mapping[str, Any] | None = None) -> Policy:
        """The policy of ``spec`` with ``options``, built once (off the event loop) and shared,
        so a local model loads once and its concurrent calls are micro-batched."""
        options = dict(options or {})
        cache_key = f"{spec}|{json.dumps(options, sort_keys=True, default=str)}"
        lock = self._policy_locks.setdefault(cache_key, asyncio.Lock())
        async with lock:  # concurrent first episodes must not load a model twice
            if cache_key not in self._policies:
                self._policies[cache_key] = await asyncio.to_thread(make_policy, spec, **options)
        return self._policies[cache_key]

    async def tools(self, latency: str) -> ToolBackend:
        """The tool backend of a latency: one per latency spec, opened on first use.

        ``server:URL`` (or the runtime's ``tool_server``) is a client of a running server;
        anything else is an in-process server (the ``default`` of :mod:`timely.tool_servers`)
        with that latency, driven over ASGI without sockets.
        """
        name = SERVER_PREFIX + self.tool_server if self.tool_server else latency
        if name not in self._tools:
            if name.startswith(SERVER_PREFIX):
                client = ToolClient(name.removeprefix(SERVER_PREFIX))
            else:
                app = in_process_app(
                    latency=latency, per_tool_latency=self.per_tool_latency, seed=self.seed
                )
                client = ToolClient.in_process(app)
            self._tools[name] = await self._stack.enter_async_context(client)
        return self._tools[name]

    async def play(
        self,
        spec: EpisodeSpec,
        policy: Policy,
        *,
        task: Task | None = None,
        reward: RewardConfig | None = None,
        max_turns: int | None = None,
        observer: Observer | None = None,
        config_hash: str = "",
        clock: Clock | None = None,
        tools: ToolBackend | None = None,
    ) -> Trajectory:
        """Play ``spec`` with ``policy`` through :func:`~timely.loop.run_episode`.

        Args:
            spec: the episode.
            policy: who plays it (from :meth:`policy`, or the caller's own).
            task: the instance when the caller built it already (else ``spec.make_task()``).
            reward: the reward variant.
            max_turns: turn limit (None: the task's).
            observer: receives the loop's step events.
            config_hash: recorded in the trajectory.
            clock: the episode's clock (default: a fresh one from :meth:`clock`).
            tools: the tool backend (default: :meth:`tools` of ``spec.latency`` where the task
                has tools).
        """
        task = task or spec.make_task()
        if tools is None and task.spec.tools:
            tools = await self.tools(spec.latency)
        options = episode_options(
            time=spec.time, speed=spec.speed, reward=reward, max_turns=max_turns
        )
        return await run_episode(
            policy,
            task,
            tools,
            clock or self.clock(),
            spec.budget,
            options=options,
            session_id=spec.key,
            sample=spec.sample,
            observer=observer,
            config_hash=config_hash,
            latency=spec.latency,
        )


@contextlib.asynccontextmanager
async def open_tools(
    url: str | None = None,
    *,
    latency: str = "constant:0",
    tool_latency: Mapping[str, str] | None = None,
    seed: int = 0,
) -> AsyncIterator[ToolBackend]:
    """A tool backend for hand-written loops: a client of a running server at ``url``, else an
    in-process server (a one-latency :class:`Runtime`'s).

    Args:
        url: a running tool server (``timely tool-server``); None: serve the built-in tools
            in-process (the ``default`` entry of :mod:`timely.tool_servers`), without sockets.
        latency: in-process only: the latency spec of every tool, e.g. ``constant:1.0``.
        tool_latency: in-process only: latency overrides by tool name.
        seed: in-process only: seed of the server's latency and fault streams.
    """
    async with Runtime(tool_server=url, per_tool_latency=tool_latency, seed=seed) as runtime:
        yield await runtime.tools(latency)
