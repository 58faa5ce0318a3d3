"""The records every part of Timely Machine shares: messages, steps and the Trajectory.

A :class:`Trajectory` is the one record of an episode. Eval turns it into leaderboard rows,
training into SFT examples and RL batches, serving into responses; nothing else is written by a
second code path. Messages follow the OpenAI chat-completions shape (``tool_calls`` on assistant
messages, role ``tool`` with ``tool_call_id`` for results) so any OpenAI-compatible backend fits.
Trajectories are written to and read from JSONL files by :mod:`timely.runrecord` alone.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 3  # 2: tools offered, target, sample, usage_estimated, work_s; 3: UTC stamps
# Fields that say when an episode was played, not what happened in it: a virtual-clock replay
# reproduces everything else byte for byte (Trajectory.replay_json).
WALL_STAMPS = frozenset({"started_at_utc", "ended_at_utc"})

Role = Literal["system", "user", "assistant", "tool"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolCall(_Record):
    """One call the model asked for; ``arguments`` is already decoded JSON."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


class Message(_Record):
    """One chat message in OpenAI chat-completions form."""

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        return out


class ToolResult(_Record):
    """What one tool call returned, and what it cost."""

    call_id: str
    name: str
    content: str
    error: str | None = Field(None, description="Error type when the call failed, else None.")
    latency_s: float = Field(0.0, description="Injected latency the server reported.")
    service_s: float = Field(0.0, description="Time the tool's own work took on the server.")
    work_s: float = Field(
        0.0,
        description="Virtual clock: seconds of the tool's deterministic work model (an ML fit, "
        "a sandboxed program), charged with the latency; 0 on a wall clock, where the real time "
        "is measured and charged instead.",
    )
    charged_s: float = Field(0.0, description="Seconds charged to the episode clock.")
    retries: int = 0
    fault: str | None = Field(None, description="Injected fault, if the server reported one.")

    @property
    def ok(self) -> bool:
        return self.error is None


class Completion(_Record):
    """What a policy returned for one model call."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    malformed: list[str] = Field(
        default_factory=list, description="Parse errors for tool calls that could not be decoded."
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gen_seconds: float = Field(0.0, description="Measured wall seconds of the call.")
    finish_reason: str = "stop"
    token_ids: list[int] | None = Field(
        None, description="Exact sampled token ids (local backends), for training."
    )
    prompt_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    usage_estimated: bool = Field(
        False,
        description="The backend reported no token usage, so the counts are estimated from the "
        "text (generation is never free).",
    )


class EndReason(StrEnum):
    """Why an episode stopped."""

    ANSWERED = "answered"
    BUDGET_EXHAUSTED = "budget_exhausted"
    MAX_TURNS = "max_turns"
    POLICY_ERROR = "policy_error"
    TOOL_SERVER_ERROR = "tool_server_error"


class Step(_Record):
    """One model turn and the tool calls it triggered."""

    index: int
    clock: Literal["wall", "virtual"]
    started_at: float
    ended_at: float
    gen_s: float
    tool_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_results: list[ToolResult] = Field(default_factory=list)
    malformed_calls: int = 0
    unknown_tool_calls: int = 0
    tool_errors: int = 0
    finish_reason: str = "stop"
    token_ids: list[int] | None = Field(None, description="Sampled token ids (local backends).")
    prompt_token_ids: list[int] | None = Field(
        None, description="The exact prompt token ids the model saw (local backends)."
    )
    logprobs: list[float] | None = Field(
        None, description="Log-probabilities of token_ids under the sampling distribution."
    )
    usage_estimated: bool = Field(
        False, description="Token counts estimated from text: the backend reported no usage."
    )


class Trajectory(_Record):
    """The complete, versioned record of one episode."""

    schema_version: int = SCHEMA_VERSION
    task_id: str
    seed: int
    split: str = "test"
    policy: str = ""
    clock: Literal["wall", "virtual"]
    budget_s: float
    overrun: Literal["hard", "late"] = "hard"
    sample: int = Field(
        0, description="Which sample of this (task, seed, policy) it is: a GRPO group member."
    )
    tools: list[dict[str, Any]] = Field(
        default_factory=list, description="The OpenAI tools array offered to the model."
    )
    target: str | None = Field(
        None, description="The gold answer (or 'sha256:...' where it must stay private)."
    )
    messages: list[Message]
    steps: list[Step] = Field(default_factory=list)
    final_answer: str | None = None
    score: float = 0.0
    elapsed_s: float = 0.0
    gen_s: float = 0.0
    tool_s: float = 0.0
    compliant: bool = False
    reward: float = 0.0
    end_reason: EndReason
    error: str | None = None
    config_hash: str = ""
    latency: str = ""
    started_at_utc: AwareDatetime | None = Field(
        None,
        description="Wall date and time (UTC, ISO 8601 in JSON) when the budget started, beside "
        "the clock's seconds, for joining runs with server and model logs; None in records "
        "older than schema 3.",
    )
    ended_at_utc: AwareDatetime | None = Field(
        None,
        description="Wall date and time (UTC, ISO 8601 in JSON) when the episode ended; on a "
        "virtual clock it is not started_at_utc + elapsed_s (simulated time passes faster).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def n_tool_calls(self) -> int:
        return sum(len(s.tool_calls) for s in self.steps)

    @property
    def n_malformed(self) -> int:
        return sum(s.malformed_calls for s in self.steps)

    def to_json(self) -> str:
        return self.model_dump_json()

    def replay_json(self) -> str:
        """The record without :data:`WALL_STAMPS`: what a virtual-clock replay reproduces."""
        return self.model_dump_json(exclude=set(WALL_STAMPS))
