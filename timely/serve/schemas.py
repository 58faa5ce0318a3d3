"""Request and response bodies of the agent endpoint.

Two request shapes reach the same runs: :class:`RunRequest` (``POST /v1/runs``, either a
registered task or a conversation) and :class:`ChatRequest` (``POST /v1/chat/completions``, the
OpenAI shape plus ``time_budget_s``). Both become a task, a budget and the tools to offer; both
answer with a :class:`RunSummary` (the chat API wraps it in an OpenAI ``chat.completion``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from timely.serve.errors import json_type
from timely.types import Message, ToolCall, Trajectory

# OpenAI's content forms: a string, or a list of content parts of which this agent reads the
# text ones (joined); image, audio and file parts are refused with a 422 that says so.
_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
Content = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": _TEXT_PART},
                {"type": "null"},
            ],
            "description": "A string, or OpenAI content parts of type text (joined).",
        }
    ),
]
_PARTS_HINT = "send a string, or text parts [{'type': 'text', 'text': '...'}]"


class ChatMessage(BaseModel):
    """A chat message as OpenAI clients send it (content may be a list of text parts)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="plain")
    @classmethod
    def _text(cls, v: Any) -> str | None:
        """The content as one string: text parts joined, anything else refused by name."""
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"content must be a string or a list of parts, got {json_type(v)}")
        texts = []
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                continue
            if kind == "text":
                got = "a text part without a string 'text'"
            elif isinstance(kind, str):
                got = f"a part of type {kind!r}: this agent reads text only"
            else:
                got = f"{json_type(part)}, not a content part"
            raise ValueError(f"content[{i}] is {got}; {_PARTS_HINT}")
        return "".join(texts)

    def to_message(self) -> Message:
        calls = None
        if self.tool_calls:
            calls = [_tool_call(c, i) for i, c in enumerate(self.tool_calls)]
        role = "system" if self.role == "developer" else self.role
        return Message(
            role=role,
            content=self.content or "",
            tool_calls=calls,
            tool_call_id=self.tool_call_id,
            name=self.name if role == "tool" else None,
        )


def _tool_call(raw: dict[str, Any], index: int) -> ToolCall:
    fn = raw.get("function")
    if not isinstance(fn, dict):
        raise ValueError(f"tool_calls[{index}] needs a function object {{'name', 'arguments'}}")
    args = fn.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"tool_calls[{index}].function.arguments is not JSON") from None
    if not isinstance(args, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"tool_calls[{index}] needs function.name and object arguments")
    return ToolCall(id=str(raw.get("id") or f"call_{index}"), name=fn["name"], arguments=args)


class _Budgeted(BaseModel):
    # Strict types, as the tool server's bodies and OpenAI's API: "30" for a number is a 422
    # naming the type, not a guess (a client that sends strings has a bug worth seeing).
    model_config = ConfigDict(strict=True)

    time_budget_s: float | None = Field(
        None, gt=0, description="Seconds the run may take, end to end (the server's limit caps)."
    )
    max_turns: int | None = Field(None, ge=1, le=200, description="Model turns at most.")


MAX_DIFFICULTY = 100


class RunRequest(_Budgeted):
    """``POST /v1/runs``: a registered task, or a conversation, under a time budget."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str | None = Field(None, description="Registered task id, e.g. math/arithmetic.")
    seed: int = Field(0, description="Task instance seed.")
    split: Literal["train", "test"] = "test"
    # No family has more than 8 levels; the cap stops a request for a problem of a billion
    # operations (math/arithmetic builds difficulty + 1 of them) from eating the server.
    difficulty: int | None = Field(
        None, ge=1, le=MAX_DIFFICULTY, description="Family-specific level (None: its default)."
    )
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Family-specific options (not seed, split or difficulty: those are fields).",
    )
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[str] | None = Field(
        None, description="Conversation runs: names of tool-server tools to offer."
    )
    stream: bool = Field(False, description="Answer with Server-Sent Events of the step events.")
    wait: bool = Field(
        True, description="False: answer 202 with the run id at once; poll GET /v1/runs/{id}."
    )

    @model_validator(mode="after")
    def _one_source(self) -> RunRequest:
        if (self.task is None) == (self.messages is None):
            raise ValueError("give exactly one of 'task' (a registered task) or 'messages'")
        if self.task is not None and self.tools is not None:
            raise ValueError("'tools' is for conversations; a task brings its own tools")
        if self.stream and not self.wait:
            raise ValueError("'stream' needs 'wait' (a detached run is polled, not streamed)")
        fields = sorted({"seed", "split", "difficulty"} & set(self.task_options))
        if fields:
            raise ValueError(f"set {fields} as top-level fields, not in task_options")
        return self


class ChatRequest(_Budgeted):
    """``POST /v1/chat/completions``: the OpenAI shape; the agent runs tools server-side.

    Sampling fields (temperature, max_tokens, ...) are accepted and ignored: the server's
    policy settings decide them. ``tools`` name tool-server tools (their schemas are the
    server's own); ``tool_choice: "none"`` offers none.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")

    def tool_names(self) -> list[str] | None:
        if self.tool_choice == "none":
            return []
        if self.tools is None:
            return None
        names = []
        for i, tool in enumerate(self.tools):
            fn = tool.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str):
                raise ValueError(
                    f"tools[{i}] needs {{'type': 'function', 'function': {{'name': ...}}}} "
                    "naming a tool-server tool"
                )
            names.append(name)
        return names


RunStatus = Literal["running", "done", "cancelled", "failed"]


class RunSummary(BaseModel):
    """What a run did: the answer, the time it took and whether it was within budget."""

    id: str
    status: RunStatus
    created_at: str = Field(description="UTC ISO time the request arrived.")
    task_id: str
    policy: str
    budget_s: float
    answer: str | None = None
    end_reason: str | None = Field(None, description="answered, budget_exhausted, max_turns, ...")
    elapsed_s: float | None = Field(None, description="Seconds from budget start to the end.")
    compliant: bool | None = Field(None, description="Answered within the budget.")
    score: float | None = Field(None, description="Registered tasks: correctness in [0, 1].")
    reward: float | None = None
    steps: int | None = Field(None, description="Model turns taken.")
    tool_calls: int | None = None
    gen_s: float | None = Field(None, description="Seconds spent generating.")
    tool_s: float | None = Field(None, description="Seconds spent in tools.")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @classmethod
    def of(cls, base: dict[str, Any], traj: Trajectory | None) -> RunSummary:
        if traj is None:
            return cls(**base)
        return cls(
            **base,
            answer=traj.final_answer,
            end_reason=str(traj.end_reason),
            elapsed_s=round(traj.elapsed_s, 6),
            compliant=traj.compliant,
            score=traj.score,
            reward=traj.reward,
            steps=len(traj.steps),
            tool_calls=traj.n_tool_calls,
            gen_s=round(traj.gen_s, 6),
            tool_s=round(traj.tool_s, 6),
            prompt_tokens=sum(s.prompt_tokens for s in traj.steps),
            completion_tokens=sum(s.completion_tokens for s in traj.steps),
            error=traj.error,
        )


# -- response bodies, for the OpenAPI schema (the routes build them as dicts) --------------------
class RunDetail(RunSummary):
    """``GET /v1/runs/{id}``: the summary, with ``?trajectory=true`` the full record."""

    trajectory: dict[str, Any] | None = Field(
        None, description="The trajectory record (timely.types.Trajectory), once it has ended."
    )


class RunList(BaseModel):
    """``GET /v1/runs``: recent runs, newest first."""

    object: Literal["list"] = "list"
    data: list[RunSummary]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``: the one model (policy) this server serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's ``chat.completion`` plus the run's timing."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    timely: RunSummary = Field(description="The run: budget, elapsed_s, compliant, steps, ...")


class Health(BaseModel):
    status: Literal["ok", "starting"]
    policy: str
    in_flight: int
