"""The agent loop: the only place an episode is played. Eval, training and serving all call it.

``run_episode`` alternates model turns and tool calls under a time budget. Every second spent is
charged to one :class:`~timely.clock.Clock`: generation from measured time (wall) or token counts
through a :class:`~timely.clock.SpeedProfile` (virtual), tool time by the tool client. Every
outgoing call gets a deadline derived from the remaining budget, so nothing outlives the episode.
Failures (policy crash, dead tool server) end the episode with a recorded reason; they never raise.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from timely.budget import (
    GET_DURATION_TOOL,
    TIME_AWARENESS_PRESETS,
    Budget,
    TimeAwareness,
    TimeStatus,
    expected_step_s,
    get_duration_schema,
)
from timely.clock import Clock, SpeedProfile, speed_profile, utc_now
from timely.errors import TaskError, ToolServerUnavailable
from timely.events import (
    EpisodeEnded,
    EpisodeStarted,
    EventSink,
    GenerationFinished,
    GenerationStarted,
    Observer,
    TimeStatusShown,
    ToolCallSent,
    ToolResultReceived,
)
from timely.policies.base import Deadline, Policy, bind_policy
from timely.prompting import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    estimate_messages_tokens,
    estimate_tools_tokens,
)
from timely.reward import RewardConfig, compute_reward
from timely.rng import derive_seed
from timely.task import Task
from timely.toolclient import ToolBackend
from timely.types import Completion, EndReason, Message, Step, ToolCall, ToolResult, Trajectory


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
    sample: int = 0,
    observer: Observer | None = None,
    config_hash: str = "",
    latency: str = "",
    wrap_up_s: float | None = None,
) -> Trajectory:
    """Play one episode of ``task`` with ``policy`` and return its Trajectory.

    Args:
        policy: the model backend (bound to the task first, for scripted baselines).
        task: the task instance (prompt, tools, scorer).
        tools: the tool backend (tool server client); None for tasks without tools.
        clock: the episode clock; all time is charged here.
        budget: the time budget and overrun policy.
        options: max turns, time awareness, reward variant, virtual speed profile.
        session_id: tool-server session id; it must be unique among live episodes. By default
            a fresh one is made per call (see :func:`episode_session_id`), so concurrent
            identical episodes (a GRPO group) never share tool state.
        sample: which sample of this (task, seed, policy) this is (a GRPO group member, an
            eval epoch); it picks the session's latency and fault streams and is recorded.
        observer: receives :mod:`timely.events` step events as they happen (may be async).
        config_hash: recorded in the trajectory (resume keys, provenance).
        latency: the latency spec, recorded in the trajectory.
        wrap_up_s: once no more than this many seconds of the budget are left, the model is
            told that time is almost up and is offered no more tools, so its next turn is its
            answer (the agent endpoint sets it; None: never).
    """
    opts = options or EpisodeOptions()
    ep = _Episode(bind_policy(policy, task), task, tools, clock, budget, opts, observer)
    ep.wrap_up_s = wrap_up_s
    session = session_id or episode_session_id(task, ep.policy.name, sample)
    end, error, answer = EndReason.MAX_TURNS, None, None
    messages: list[Message] = []
    try:
        # Preparing the environment (creating a game, a workspace) is not the agent's time:
        # the budget starts once the task is ready.
        await task.setup(tools, session)
        ep.start_at, ep.started_utc = clock.now(), utc_now()
        messages = await ep.start()
        for turn in range(opts.max_turns or task.spec.max_turns):
            if ep.out_of_time():
                end = EndReason.BUDGET_EXHAUSTED
                break
            if ep.should_wrap_up():
                messages.append(await ep.wrap_up(turn))
            completion = await ep.generate(messages, turn)
            if completion is None:  # cut at the deadline: never the answer
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
                messages.append(await ep.observation(call, result))
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
        # Elapsed time is fixed when the episode ends; closing the game is not agent time.
        ep.end_at, ep.ended_utc = clock.now(), utc_now()
        with contextlib.suppress(ToolServerUnavailable):
            await task.teardown(tools, session)
    traj = ep.finish(messages, end, answer, error, sample=sample)
    traj.config_hash, traj.latency = config_hash, latency
    await ep.emit_end(traj)
    return traj


def opening_messages(task: Task, time: TimeAwareness, budget_s: float) -> list[Message]:
    """The conversation an episode opens with: the task's messages, the budget line appended to
    the last one when the time awareness shows it (RL data exports write the same prompt)."""
    messages = task.opening_messages()
    if time.show_budget:
        last = messages[-1]
        line = time.budget_line(budget_s)
        messages[-1] = last.model_copy(update={"content": f"{last.content}\n\n{line}"})
    return messages


def offered_tools(
    task: Task, time: TimeAwareness, listed: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The tool schemas an episode offers: the task's tools, in its order, from what the tool
    server ``listed``, then the clock tool where the time is pulled.

    Raises:
        TaskError: the task needs tools and none were listed, or the server lacks some.
    """
    schemas: list[dict[str, Any]] = []
    spec = task.spec
    if spec.tools:
        if listed is None:
            raise TaskError(
                f"task {spec.id} needs tools {list(spec.tools)} but no tool backend was given"
            )
        served = {t["function"]["name"]: t for t in listed}
        missing = [n for n in spec.tools if n not in served]
        if missing:
            raise TaskError(
                f"the tool server does not serve {missing} needed by "
                f"{spec.id}; it serves {sorted(served)}"
            )
        schemas = [served[n] for n in spec.tools]
    if time.pulls(spec.time_status):
        schemas.append(get_duration_schema())
    return schemas


def episode_opening(
    task: Task, time: TimeAwareness, budget_s: float, listed: list[dict[str, Any]] | None
) -> tuple[list[Message], list[dict[str, Any]]]:
    """The messages and tool schemas of an episode's first model call: what the loop sends and
    what :func:`timely.rollout.opening` gives exporters without playing an episode.

    Args:
        task: the instance.
        time: the episode's time awareness (budget line, clock tool).
        budget_s: the budget shown.
        listed: the tool server's schemas (None: no tool backend).
    """
    return opening_messages(task, time, budget_s), offered_tools(task, time, listed)


def episode_session_id(task: Task, policy_name: str, sample: int = 0) -> str:
    """A fresh tool-server session id for one episode: ``ep-KEY#NONCE``.

    ``KEY`` is deterministic in (task, split, seed, policy, sample) and the server derives the
    session's latency and fault streams from it alone, so virtual-clock replays stay
    byte-identical; ``NONCE`` is random, so no two episodes ever share a session (its state,
    its game), even identical ones running at the same time or in two processes.
    """
    # Sample 0 keeps the key earlier releases used, so their latency draws (and results) hold.
    parts = (task.id, task.spec.split, task.spec.seed, policy_name)
    key = derive_seed(*parts) if sample == 0 else derive_seed(*parts, sample)
    return f"ep-{key:x}#{secrets.token_hex(6)}"


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
        observer: Observer | None,
    ) -> None:
        self.policy, self.task, self.tools, self.clock = policy, task, tools, clock
        self.budget, self.opts = budget, opts
        self.speed = speed_profile(opts.speed)
        self.spec = task.spec
        self.push = opts.time.pushes(self.spec.time_status)
        self.start_at = clock.now()
        self.end_at: float | None = None
        # Wall stamps beside the clock's seconds (the record says when it ran, for log joins).
        self.started_utc = utc_now()
        self.ended_utc: datetime | None = None
        self.steps: list[Step] = []
        self.tool_schemas: list[dict[str, Any]] = []
        self.events = EventSink(observer) if observer is not None else None
        self.wrap_up_s: float | None = None
        self.wrapping_up = False  # told to answer now: no tools are offered any more
        self._tools_tokens: int | None = None  # estimated tokens of the tools section
        self._message_tokens, self._counted = 0, 0  # estimated tokens of messages[:counted]
        # (task tool results, seconds used) at each status shown: the step cost a status states
        # is the one its readings imply, as the model saw them.
        self._readings: list[tuple[int, float]] = [(0, 0.0)]

    # -- time --------------------------------------------------------------------------------
    @property
    def stop_at(self) -> float:
        """Absolute clock time after which no call may run."""
        return self.start_at + self.budget.stop_at

    def out_of_time(self) -> bool:
        return self.clock.now() >= self.stop_at

    def status(self) -> TimeStatus:
        elapsed = self.clock.now() - self.start_at
        step_s = expected_step_s([*self._readings, (self._task_results(), elapsed)])
        return TimeStatus(budget=self.budget.seconds, elapsed=elapsed, step_s=step_s)

    def _task_results(self) -> int:
        """Tool results so far other than clock reads: the steps a status counts."""
        return sum(r.name != GET_DURATION_TOOL for step in self.steps for r in step.tool_results)

    def at(self) -> float:
        return self.clock.now() - self.start_at

    def should_wrap_up(self) -> bool:
        return (
            self.wrap_up_s is not None
            and not self.wrapping_up
            and self.stop_at - self.clock.now() <= self.wrap_up_s
        )

    async def wrap_up(self, turn: int) -> Message:
        """Tell the model time is almost up; from now on it is offered no tools."""
        self.wrapping_up = True
        status = self.status()
        line = (
            f"{self.opts.time.status_line(status)}\nTime is almost up: give your final answer "
            "now, without calling any tool."
        )
        await self._status_shown("wrap_up", turn, status, line)
        return Message(role="user", content=line)

    @property
    def offered_tools(self) -> list[dict[str, Any]]:
        return [] if self.wrapping_up else self.tool_schemas

    # -- setup -------------------------------------------------------------------------------
    async def start(self) -> list[Message]:
        listed = await self._list_tools() if self.spec.tools and self.tools is not None else None
        messages, self.tool_schemas = episode_opening(
            self.task, self.opts.time, self.budget.seconds, listed
        )
        if self.events:
            await self.events.emit(
                EpisodeStarted(
                    at=0.0,
                    turn=-1,
                    task_id=self.spec.id,
                    seed=self.spec.seed,
                    policy=self.policy.name,
                    clock=self.clock.kind,
                    budget_s=self.budget.seconds,
                    tools=[t["function"]["name"] for t in self.tool_schemas],
                )
            )
        return messages

    async def _list_tools(self) -> list[dict[str, Any]]:
        assert self.tools is not None
        try:
            async with self.clock.cutoff(self.stop_at):
                return await self.tools.list_tools()
        except TimeoutError:
            where = getattr(self.tools, "base_url", "the tool server")
            raise ToolServerUnavailable(
                f"{where} did not list its tools before the budget ran out; is it running?"
            ) from None

    # -- model turn --------------------------------------------------------------------------
    async def generate(self, messages: list[Message], turn: int) -> Completion | None:
        """One model call under the deadline; None when the deadline cut it (never an answer)."""
        before = self.clock.now()
        cap = self._token_cap(messages)
        deadline = Deadline(at=self.stop_at, clock=self.clock, max_new_tokens=cap)
        if self.events:
            await self.events.emit(
                GenerationStarted(at=before - self.start_at, turn=turn, max_new_tokens=cap)
            )
        try:
            # Backends stop at the deadline themselves and return what they sampled (kept for
            # audits and training); the cutoff is the backstop for those that do not.
            async with self.clock.cutoff(self.stop_at + _GENERATION_GRACE_S):
                completion = await self.policy.generate(
                    messages, self.offered_tools, deadline=deadline
                )
        except TimeoutError:
            completion = Completion(finish_reason="deadline")
        else:
            completion = self._charge(completion, before)
        completion = _with_unique_call_ids(completion, turn)
        self._record_step(turn, before, completion)
        if self.events:
            await self.events.emit(
                GenerationFinished(
                    at=self.at(),
                    turn=turn,
                    gen_s=self.steps[-1].gen_s,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    finish_reason=completion.finish_reason,
                    text=completion.text,
                    tool_calls=completion.tool_calls,
                )
            )
        # A generation the deadline stopped is truncated: neither its text nor its calls count.
        return None if completion.finish_reason == "deadline" else completion

    def _charge(self, completion: Completion, before: float) -> Completion:
        """Charge a returned call's time; mark it cut when it did not end before the deadline."""
        if self.clock.kind == "wall":
            self.clock.charge(self.clock.now() - before, "generation")
            late = self.clock.now() > self.stop_at
        else:
            # A backend that waited on the clock (a rate limit, a 429's Retry-After) has moved
            # it already: the generation it charges starts after that wait.
            start = self.clock.now()
            cost = self.speed.generation_seconds(
                completion.prompt_tokens, completion.completion_tokens
            )
            late = start + cost > self.stop_at  # the call would have been cut at the deadline
            self.clock.charge(max(0.0, self.stop_at - start) if late else cost, "generation")
        if late:
            return completion.model_copy(update={"finish_reason": "deadline"})
        return completion

    def _token_cap(self, messages: list[Message]) -> int | None:
        """Virtual clock: the most new tokens that still fit in the budget after the prompt.

        The prompt is counted as the model will see it (chat template, tool schemas, time
        status): with the policy's own tokenizer where it has one, else estimated from the
        rendered text.
        """
        if self.clock.kind != "virtual":
            return None
        count = getattr(self.policy, "count_prompt_tokens", None)
        if callable(count):
            prompt_tokens = int(count(messages, self.offered_tools))
        else:
            # The conversation only grows, so only the new messages are estimated each turn.
            if self._tools_tokens is None:
                self._tools_tokens = estimate_tools_tokens(self.tool_schemas)
            self._message_tokens += estimate_messages_tokens(messages[self._counted :], 0)
            self._counted = len(messages)
            prompt_tokens = self._tools_tokens + self._message_tokens + TEMPLATE_TOKENS_PER_MESSAGE
        return self.speed.max_tokens_within(self.stop_at - self.clock.now(), prompt_tokens)

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
                usage_estimated=c.usage_estimated,
            )
        )

    # -- tools -------------------------------------------------------------------------------
    async def call_tool(self, call: ToolCall, session: str, step: Step) -> ToolResult:
        before = self.clock.now()
        if self.events:
            await self.events.emit(
                ToolCallSent(at=before - self.start_at, turn=step.index, call=call)
            )
        offered = {t["function"]["name"] for t in self.tool_schemas}
        if self.wrapping_up:
            result = ToolResult(
                call_id=call.id,
                name=call.name,
                error="time_up",
                content="Error (time_up): no time is left for tool calls; answer now.",
            )
        elif call.name not in offered:
            step.unknown_tool_calls += 1
            result = ToolResult(
                call_id=call.id,
                name=call.name,
                error="unknown_tool",
                content=f"Error (unknown_tool): there is no tool named "
                f"{call.name!r}. Available tools: {sorted(offered)}.",
            )
        elif call.name == GET_DURATION_TOOL:
            status = self.status()
            line = self.opts.time.status_line(status)
            result = ToolResult(call_id=call.id, name=call.name, content=line)
            await self._status_shown("pull", step.index, status, line)
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
        cost = self.clock.now() - before
        step.tool_s += cost
        if self.events:
            await self.events.emit(
                ToolResultReceived(at=self.at(), turn=step.index, result=result, tool_s=cost)
            )
        return result

    async def observation(self, call: ToolCall, result: ToolResult) -> Message:
        content = result.content
        if self.push and call.name != GET_DURATION_TOOL:
            status = self.status()
            line = self.opts.time.status_line(status)
            content = f"{content}\n{line}"
            await self._status_shown("push", len(self.steps) - 1, status, line)
        return Message(role="tool", content=content, tool_call_id=call.id, name=call.name)

    async def _status_shown(
        self,
        via: Literal["push", "pull", "wrap_up"],
        turn: int,
        status: TimeStatus,
        line: str,
    ) -> None:
        self._readings.append((self._task_results(), status.elapsed))
        if self.events:
            await self.events.emit(
                TimeStatusShown(
                    at=status.elapsed,
                    turn=turn,
                    via=via,
                    elapsed_s=status.elapsed,
                    remaining_s=status.remaining,
                    text=line,
                )
            )

    # -- end ---------------------------------------------------------------------------------
    def finish(
        self,
        messages: list[Message],
        end: EndReason,
        answer: str | None,
        error: str | None,
        *,
        sample: int,
    ) -> Trajectory:
        end_at = self.clock.now() if self.end_at is None else self.end_at
        elapsed = end_at - self.start_at
        on_time = self.budget.on_time(elapsed)
        if end == EndReason.ANSWERED and not on_time and self.budget.overrun == "hard":
            # Under a hard budget an answer after the budget is a cut-off, whatever the clock.
            end, answer = EndReason.BUDGET_EXHAUSTED, None
        answered = end == EndReason.ANSWERED
        traj = Trajectory(
            task_id=self.spec.id,
            seed=self.spec.seed,
            split=self.spec.split,
            policy=self.policy.name,
            clock=self.clock.kind,
            budget_s=self.budget.seconds,
            overrun=self.budget.overrun,
            sample=sample,
            tools=self.tool_schemas,
            target=self.task.target(),
            messages=messages,
            steps=self.steps,
            final_answer=answer,
            elapsed_s=elapsed,
            compliant=answered and on_time,
            end_reason=end,
            error=error,
            gen_s=sum(s.gen_s for s in self.steps),
            tool_s=sum(s.tool_s for s in self.steps),
            started_at_utc=self.started_utc,
            ended_at_utc=self.ended_utc or utc_now(),
        )
        if answered:
            traj.score = float(self.task.score(answer, traj))
            traj.metadata["formatted"] = self.task.well_formed(answer)
        traj.reward = compute_reward(
            traj.score,
            elapsed_s=elapsed,
            budget_s=self.budget.seconds,
            on_time=traj.compliant,
            answered=answered,
            formatted=bool(traj.metadata.get("formatted", False)),
            config=self.opts.reward,
        )
        return traj

    async def emit_end(self, traj: Trajectory) -> None:
        if self.events:
            await self.events.emit(
                EpisodeEnded(
                    at=traj.elapsed_s,
                    turn=len(self.steps) - 1,
                    end_reason=traj.end_reason,
                    answer=traj.final_answer,
                    elapsed_s=traj.elapsed_s,
                    compliant=traj.compliant,
                    score=traj.score,
                    reward=traj.reward,
                    cut_off=traj.end_reason == EndReason.BUDGET_EXHAUSTED,
                )
            )


# A tool client answers a passed deadline itself (504 at the deadline), and a local model stops
# at it; the loop's own cutoff is a backstop a little later so the backend's recorded outcome
# (what it sampled, what the call cost) wins when both fire.
_CUTOFF_GRACE_S = 0.5
# A local model checks its wall end between decode steps, so its answer arrives within a step.
_GENERATION_GRACE_S = 0.1


def _with_unique_call_ids(completion: Completion, turn: int) -> Completion:
    """Backends may reuse ids like 'call_0' every turn; make them unique within the episode."""
    if not completion.tool_calls:
        return completion
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
