"""``ServeConfig``: everything ``timely serve`` is started with, as one typed, frozen model."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_KEY_ENV = "TIMELY_SERVE_API_KEY"


class ServeConfig(BaseModel):
    """Settings of the agent endpoint (``timely serve --help`` shows the flags that set them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: str = Field(
        "llamacpp:smollm2-135m",
        description="The policy that answers: llamacpp:smollm2-135m (the embedded GGUF on "
        "llama.cpp), llamacpp:smollm2-135m-timely, hf:NAME, openai:MODEL, scripted:...",
    )
    policy_options: dict[str, Any] = Field(
        default_factory=dict, description="Backend options (temperature, base_url, ...)."
    )
    tools: str | None = Field(
        None,
        description="URL of a running tool server (`timely tool-server`); None: the built-in "
        "tools in-process, with tool_latency.",
    )
    tool_latency: str = Field(
        "constant:0", description="In-process tools only: the latency spec of every tool."
    )
    host: str = Field("127.0.0.1", description="Bind address (loopback unless you mean it).")
    port: int = Field(8800, ge=0, le=65535)
    api_key: str | None = Field(
        None,
        description=f"Bearer token every route but /health needs (default: ${API_KEY_ENV}, "
        "else none).",
    )
    max_concurrent_runs: int = Field(
        8, ge=1, description="Runs in flight at once; more get 429 with Retry-After."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After of a 429, in seconds.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted.")
    default_budget_s: float = Field(
        60.0, gt=0, description="Budget of a chat request that names none."
    )
    max_budget_s: float = Field(600.0, gt=0, description="Largest budget a request may ask for.")
    default_tools: tuple[str, ...] = Field(
        ("calculator",), description="Tools a chat request that names none is offered."
    )
    max_turns: int = Field(12, ge=1, le=200, description="Model turns a run may take at most.")
    time_status: str = Field(
        "default", description="Time awareness preset: default, paper, push, pull, both, blind."
    )
    wrap_up_fraction: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="When this fraction of the budget is left, the agent is told to answer now "
        "and offered no more tools (0: never).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Cap on new tokens per model turn (None: the backend's own)."
    )
    keep_runs: int = Field(1000, ge=1, description="Finished runs kept for GET /v1/runs/{id}.")
    allow_task_files: bool = Field(
        False,
        description="Let clients set task options that name files or directories on this "
        "machine (math/jsonl path, math/hf dataset, ml/dir path, games/jericho rom, caches; "
        "Task.path_options): the server then reads whatever a client names. Off: such "
        "requests get 403 forbidden_option.",
    )
    out: str | None = Field(
        None,
        description="Run directory: every finished run is appended to trajectories.jsonl "
        "there (the dashboard at / shows it).",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_from_env(cls, v: Any) -> Any:
        return v if v is not None else (os.environ.get(API_KEY_ENV) or None)

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Names a request may give as ``model``: the policy spec and its bare name."""
        prefix, _, name = self.policy.partition(":")
        return (self.policy, name) if name else (self.policy,)
