"""The agent loop: the only place an episode is played. Eval, training and serving all call it.

``run_episode`` alternates model turns and tool calls under a time budget. Every second spent is
charged to one :class:`~timely.clock.Clock`: generation from measured time (wall) or token counts
through a :class:`~timely.clock.SpeedProfile` (virtual), tool time by the tool client. Every
outgoing call gets a deadline derived from the remaining budget, so nothing outlives the episode.
Failures (policy crash, dead tool server) end the episode with a recorded reason; they never raise.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from timely.budget import (
    GET_DURATION_TOOL,
    TIME_AWARENESS_PRESETS,
    Budget,
    TimeAwareness,
    TimeStatus,
    get_duration_schema,
)
from timely.clock import Clock, SpeedProfile, speed_profile
from timely.errors import TaskError, ToolServerUnavailable
from timely.policies.base import Deadline, Policy, bind_policy
from timely.reward import RewardConfig, compute_reward
from timely.rng import derive_seed
from timely.task import Task
from timely.toolclient import ToolBackend
from timely.types import Completion, EndReason, Message, Step, ToolCall, ToolResult, Trajectory

CHARS_PER_TOKEN = 4  # prompt-size estimate used only to cap generation before tokenising


class EpisodeOptions(BaseModel):
    """Loop settings that are not the budget itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_turns: int | None = Field(
        None,
        ge=1,
        description="Model turns before the episode stops (None: the task's own limit, "
        "TaskSpec.max_turns).",
    )
    time: TimeAwareness = Field(default_factory=TimeAwareness, description="Time awareness.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward variant.")
    speed: SpeedProfile = Field(
        default_factory=lambda: speed_profile("small-fast"),
        description="Virtual clock only: how generation time is charged.",
    )

    @field_validator("time", mode="before")
    @classmethod
    def _time_preset(cls, v: Any) -> Any:
        """Accept a preset name (default, paper, push, pull, both, blind)."""
        if isinstance(v, str):
            if v not in TIME_AWARENESS_PRESETS:
                raise ValueError(f"unknown time preset {v!r}; use {sorted(TIME_AWARENESS_PRESETS)}")
            return TIME_AWARENESS_PRESETS[v]
        return v

    @field_validator("speed", mode="before")
    @classmethod
    def _speed_preset(cls, v: Any) -> Any:
        return speed_profile(v) if isinstance(v, str) else v


async def run_episode(
    policy: Policy,
    task: Task,
    tools: ToolBackend | None,
    clock: Clock,
    budget: Budget,
    *,
    options: EpisodeOptions | None = None,
    session_id: str | None = None,
    config_hash: str = "",
    latency: str = "",
) -> Trajectory:
    """Play one episode of ``task`` with ``policy`` and return its Trajectory.

    Args:
        policy: the model backend (bound to the task first, for scripted baselines).
        task: the task instance (prompt, tools, scorer).
        tools: the tool backend (tool server client); None for tasks without tools.
        clock: the episode clock; all time is charged here.
        budget: the time budget and overrun policy.
        options: max turns, time awareness, reward variant, virtual speed profile.
        session_id: tool-server session key; derived deterministically when omitted.
        config_hash: recorded in the trajectory (resume keys, provenance).
        latency: the latency spec, recorded in the trajectory.
    """
    opts = options or EpisodeOptions()
    ep = _Episode(bind_policy(policy, task), task, tools, clock, budget, opts)
    session = (
        session_id
        or f"ep-{derive_seed(task.id, task.spec.split, task.spec.seed, ep.policy.name):x}"
    )
    end, error, answer = EndReason.MAX_TURNS, None, None
    messages: list[Message] = []
    try:
        # Preparing the environment (creating a game, a workspace) is not the agent's time:
        # the budget starts once the task is ready.
        await task.setup(tools, session)
        ep.start_at = clock.now()
        messages = await ep.start()
        for turn in range(opts.max_turns or task.spec.max_turns):
            if ep.out_of_time():
                end = EndReason.BUDGET_EXHAUSTED
                break
            completion = await ep.generate(messages, turn)
            if completion is None:
                end = EndReason.BUDGET_EXHAUSTED
                break
            step = ep.steps[-1]
            messages.append(
                Message(
                    role="assistant",
                    content=completion.text,
                    tool_calls=completion.tool_calls or None,
                )
            )
            if not completion.tool_calls and not completion.malformed:
                end, answer = EndReason.ANSWERED, completion.text
                break
            for call in completion.tool_calls:
                if ep.out_of_time():
                    break  # a call that cannot finish before the budget is not made
                result = await ep.call_tool(call, session, step)
                messages.append(ep.observation(call, result))
            if completion.malformed:
                messages.append(
                    Message(role="user", content=_malformed_message(completion.malformed))
                )
            step.ended_at = clock.now() - ep.start_at
    except ToolServerUnavailable as exc:
        end, error = EndReason.TOOL_SERVER_ERROR, str(exc)
    except TaskError:
        raise  # a misconfigured run (task needs tools nobody serves) must fail loudly
    except Exception as exc:  # a failed episode is data, not a crash
        end, error = EndReason.POLICY_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(ToolServerUnavailable):
            await task.teardown(tools, session)
    return ep.finish(messages, end, answer, error, config_hash=config_hash, latency=latency)


class _Episode:
    """Per-episode state and the pieces of one turn, so ``run_episode`` stays one screen."""

    def __init__(
        self,
        policy: Policy,
        task: Task,
        tools: ToolBackend | None,
        clock: Clock,
        budget: Budget,
        opts: EpisodeOptions,
    ) -> None:
        self.policy, self.task, self.tools, self.clock = policy, task, tools, clock
        self.budget, self.opts = budget, opts
        self.speed = speed_profile(opts.speed)
        self.spec = task.spec
        self.push = opts.time.pushes(self.spec.time_status)
        self.pull = opts.time.pulls(self.spec.time_status)
        self.start_at = clock.now()
        self.steps: list[Step] = []
        self.tool_schemas: list[dict[str, Any]] = []

    # -- time --------------------------------------------------------------------------------
    @property
    def stop_at(self) -> float:
        """Absolute clock time after which no call may run."""
        return self.start_at + self.budget.stop_at

    def out_of_time(self) -> bool:
        return self.clock.now() >= self.stop_at

    def status(self) -> TimeStatus:
        return TimeStatus.of(self.clock, self.start_at, self.budget)

    # -- setup -------------------------------------------------------------------------------
    async def start(self) -> list[Message]:
        self.tool_schemas = await self._tool_schemas()
        messages: list[Message] = []
        if self.spec.system:
            messages.append(Message(role="system", content=self.spec.system))
        prompt = self.spec.prompt
        if self.opts.time.show_budget:
            prompt = f"{prompt}\n\n{self.opts.time.budget_line(self.budget.seconds)}"
        messages.append(Message(role="user", content=prompt))
        return messages

    async def _tool_schemas(self) -> list[dict[str, Any]]:
        schemas: list[dict[str, Any]] = []
        if self.spec.tools:
            if self.tools is None:
                raise TaskError(
                    f"task {self.spec.id} needs tools {list(self.spec.tools)} "
                    "but no tool backend was given"
                )
            try:
                async with self.clock.cutoff(self.stop_at):
                    listed = await self.tools.list_tools()
            except TimeoutError:
                where = getattr(self.tools, "base_url", "the tool server")
                raise ToolServerUnavailable(
                    f"{where} did not list its tools before the budget ran out; is it running?"
                ) from None
            served = {t["function"]["name"]: t for t in listed}
            missing = [n for n in self.spec.tools if n not in served]
            if missing:
                raise TaskError(
                    f"the tool server does not serve {missing} needed by "
                    f"{self.spec.id}; it serves {sorted(served)}"
                )
            schemas = [served[n] for n in self.spec.tools]
        if self.pull:
            schemas.append(get_duration_schema())
        return schemas

    # -- model turn --------------------------------------------------------------------------
    async def generate(self, messages: list[Message], turn: int) -> Completion | None:
        """One model call under the deadline; returns None when the budget ran out during it."""
        before = self.clock.now()
        deadline = Deadline(
            at=self.stop_at, clock=self.clock, max_new_tokens=self._token_cap(messages)
        )
        try:
            async with self.clock.cutoff(self.stop_at):
                completion = await self.policy.generate(
                    messages, self.tool_schemas, deadline=deadline
                )
        except TimeoutError:
            self._record_step(turn, before, Completion(finish_reason="deadline"))
            return None
        if self.clock.kind == "virtual":
            cost = self.speed.generation_seconds(
                completion.prompt_tokens, completion.completion_tokens
            )
            if before + cost > self.stop_at:  # the call would have been cut at the deadline
                self.clock.charge(max(0.0, self.stop_at - before), "generation")
                cut = completion.model_copy(update={"finish_reason": "deadline"})
                self._record_step(turn, before, cut)
                return None
            self.clock.charge(cost, "generation")
        else:
            self.clock.charge(self.clock.now() - before, "generation")
        completion = _with_unique_call_ids(completion, turn)
        self._record_step(turn, before, completion)
        if completion.finish_reason == "deadline" and not (
            completion.text or completion.tool_calls
        ):
            return None
        return completion

    def _token_cap(self, messages: list[Message]) -> int | None:
        if self.clock.kind != "virtual":
            return None
        prompt_chars = sum(len(m.content) for m in messages)
        return self.speed.max_tokens_within(
            self.stop_at - self.clock.now(), prompt_chars // CHARS_PER_TOKEN
        )

    def _record_step(self, turn: int, before: float, c: Completion) -> None:
        now = self.clock.now()
        self.steps.append(
            Step(
                index=turn,
                clock=self.clock.kind,
                started_at=before - self.start_at,
                ended_at=now - self.start_at,
                gen_s=now - before,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                text=c.text,
                tool_calls=list(c.tool_calls),
                malformed_calls=len(c.malformed),
                finish_reason=c.finish_reason,
                token_ids=c.token_ids,
                prompt_token_ids=c.prompt_token_ids,
                logprobs=c.logprobs,
            )
        )

    # -- tools -------------------------------------------------------------------------------
    async def call_tool(self, call: ToolCall, session: str, step: Step) -> ToolResult:
        before = self.clock.now()
        offered = {t["function"]["name"] for t in self.tool_schemas}
        if call.name not in offered:
            step.unknown_tool_calls += 1
            result = ToolResult(
                call_id=call.id,
                name=call.name,
                error="unknown_tool",
                content=f"Error (unknown_tool): there is no tool named "
                f"{call.name!r}. Available tools: {sorted(offered)}.",
            )
        elif call.name == GET_DURATION_TOOL:
            result = ToolResult(
                call_id=call.id, name=call.name, content=self.opts.time.status_line(self.status())
            )
        else:
            deadline = Deadline(at=self.stop_at, clock=self.clock)
            assert self.tools is not None  # offered tools imply a backend
            try:
                async with self.clock.cutoff(self.stop_at + _CUTOFF_GRACE_S):
                    result = await self.tools.call(
                        call.name,
                        call.arguments,
                        call_id=call.id,
                        session_id=session,
                        deadline=deadline,
                    )
            except TimeoutError:
                result = ToolResult(
                    call_id=call.id,
                    name=call.name,
                    error="deadline_exceeded",
                    content="Error (deadline_exceeded): the time budget ran out "
                    "during this tool call.",
                )
            if result.error:
                step.tool_errors += 1
        step.tool_results.append(result)
        step.tool_s += self.clock.now() - before
        return result

    def observation(self, call: ToolCall, result: ToolResult) -> Message:
        content = result.content
        if self.push and call.name != GET_DURATION_TOOL:
            content = f"{content}\n{self.opts.time.status_line(self.status())}"
        return Message(role="tool", content=content, tool_call_id=call.id, name=call.name)

    # -- end ---------------------------------------------------------------------------------
    def finish(
        self,
        messages: list[Message],
        end: EndReason,
        answer: str | None,
        error: str | None,
        *,
        config_hash: str,
        latency: str,
    ) -> Trajectory:
        elapsed = self.clock.now() - self.start_at
        answered = end == EndReason.ANSWERED
        on_time = answered and self.budget.on_time(elapsed)
        traj = Trajectory(
            task_id=self.spec.id,
            seed=self.spec.seed,
            split=self.spec.split,
            policy=self.policy.name,
            clock=self.clock.kind,
            budget_s=self.budget.seconds,
            overrun=self.budget.overrun,
            messages=messages,
            steps=self.steps,
            final_answer=answer,
            elapsed_s=elapsed,
            compliant=on_time,
            end_reason=end,
            error=error,
            config_hash=config_hash,
            latency=latency,
            gen_s=sum(s.gen_s for s in self.steps),
            tool_s=sum(s.tool_s for s in self.steps),
        )
        if answered:
            traj.score = float(self.task.score(answer, traj))
            traj.metadata["formatted"] = self.task.well_formed(answer)
        traj.reward = compute_reward(
            traj.score,
            elapsed_s=elapsed,
            budget_s=self.budget.seconds,
            on_time=on_time,
            answered=answered,
            formatted=bool(traj.metadata.get("formatted", False)),
            config=self.opts.reward,
        )
        return traj


# A tool client answers a passed deadline itself (504 at the deadline); the loop's own cutoff is
# a backstop a little later so the client's recorded outcome wins when both fire.
_CUTOFF_GRACE_S = 0.5


def _with_unique_call_ids(completion: Completion, turn: int) -> Completion:
    """Backends may reuse ids like 'call_0' every turn; make them unique within the episode."""
    calls = [
        c.model_copy(update={"id": f"t{turn}_{c.id or i}"})
        for i, c in enumerate(completion.tool_calls)
    ]
    return completion.model_copy(update={"tool_calls": calls})


def _malformed_message(errors: list[str]) -> str:
    lines = "\n".join(f"- {e}" for e in errors)
    return (
        f"Error: {len(errors)} tool call(s) could not be parsed and were not run:\n{lines}\n"
        'Call a tool as <tool_call>{"name": "...", "arguments": {...}}</tool_call>, '
        "or reply without a tool call to give your final answer."
    )
