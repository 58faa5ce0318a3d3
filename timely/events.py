"""Step events: what ``run_episode`` reports to an observer while an episode runs.

The agent endpoint streams them as Server-Sent Events, ``timely run --live`` draws them as they
come, and a trainer can watch rollouts without waiting for the Trajectory. Every event carries
the episode time ``at`` (seconds since the budget started, on the episode's clock) and the model
turn it belongs to, and serialises to one JSON object whose ``type`` names it::

    {"type": "tool_result", "at": 3.2, "turn": 1, "result": {...}}

An observer is any callable taking one event; it may be a coroutine function (it is awaited, so
a slow observer slows the episode, on a wall clock it spends the budget). Without an observer
the loop builds no events at all: no observer, no cost. An observer that raises is dropped for
the rest of the episode (logged once); a failed watcher never fails the episode it watches.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from timely.types import EndReason, ToolCall, ToolResult

log = logging.getLogger(__name__)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: float = Field(description="Episode time in seconds since the budget started.")
    turn: int = Field(description="Model turn (0-based); -1 before the first turn.")


class EpisodeStarted(_Event):
    """The task is set up and the budget starts now."""

    type: Literal["episode_started"] = "episode_started"
    task_id: str
    seed: int
    policy: str
    clock: Literal["wall", "virtual"]
    budget_s: float
    tools: list[str] = Field(description="Names of the tools offered to the model.")


class GenerationStarted(_Event):
    """A model call was sent."""

    type: Literal["generation_started"] = "generation_started"
    max_new_tokens: int | None = Field(description="The budget-derived token cap, if any.")


class GenerationFinished(_Event):
    """A model call returned (or was cut at the deadline: ``finish_reason == "deadline"``)."""

    type: Literal["generation_finished"] = "generation_finished"
    gen_s: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    text: str
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ToolCallSent(_Event):
    """A tool call is about to be made."""

    type: Literal["tool_call"] = "tool_call"
    call: ToolCall


class ToolResultReceived(_Event):
    """A tool call came back (``result.latency_s``, ``result.fault``, ``result.error``)."""

    type: Literal["tool_result"] = "tool_result"
    result: ToolResult
    tool_s: float = Field(description="Seconds the call cost the episode.")


class TimeStatusShown(_Event):
    """The model was told its time status: pushed after a tool result, pulled through
    ``get_duration``, or ``wrap_up``: told time is almost up and to answer now."""

    type: Literal["time_status"] = "time_status"
    via: Literal["push", "pull", "wrap_up"]
    elapsed_s: float
    remaining_s: float
    text: str


class EpisodeEnded(_Event):
    """The episode is over: an answer, a cut-off, or a failure. ``at`` is the end time."""

    type: Literal["episode_ended"] = "episode_ended"
    end_reason: EndReason
    answer: str | None
    elapsed_s: float
    compliant: bool
    score: float
    reward: float
    cut_off: bool = Field(description="True when the budget ended the episode.")


StepEvent = Annotated[
    EpisodeStarted
    | GenerationStarted
    | GenerationFinished
    | ToolCallSent
    | ToolResultReceived
    | TimeStatusShown
    | EpisodeEnded,
    Field(discriminator="type"),
]

Observer = Callable[[Any], Awaitable[None] | None]


class EventSink:
    """Delivers events to one observer; drops the observer if it fails."""

    def __init__(self, observer: Observer) -> None:
        self._observer: Observer | None = observer

    async def emit(self, event: _Event) -> None:
        if self._observer is None:
            return
        try:
            out = self._observer(event)
            if inspect.isawaitable(out):
                await out
        except Exception:  # a failed watcher must not fail the episode it watches
            log.exception("step-event observer failed on %s; it gets no more events", event.type)
            self._observer = None
