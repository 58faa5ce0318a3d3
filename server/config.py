"""The tool server's settings.

Kept apart from the app so that configs and the CLI can build and validate them without importing
FastAPI and uvicorn; ``timely_server.app`` re-exports :class:`ServerConfig`. Nothing in the server
reads the environment: the CLI turns flags and ``TIMELY_TOOL_SERVER_API_KEY`` into a ServerConfig,
and ``create_app`` reads nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from timely.configs import resolve_config
from timely.errors import ConfigError
from timely_server.faults import FaultConfig, FaultField, FaultSpec
from timely_server.latency import LatencyConfig, LatencySpec
from timely_server.profiles import load_latency_profile


class ServerConfig(BaseModel):
    """Everything a tool server needs; ``create_app`` reads nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless you mean it.")
    port: int = Field(8700, ge=0, le=65535, description="TCP port (0 = any free port).")
    seed: int = Field(0, description="Seed of every latency and fault stream the server draws.")

    # -- latency -------------------------------------------------------------------------------
    latency: LatencySpec = Field(
        "constant:0",
        validate_default=True,
        description="Default latency model, e.g. 'constant:0.5', 'lognormal:1.0,0.6', "
        "'replay:trace.csv'.",
    )
    per_tool_latency: dict[str, LatencySpec] = Field(
        default_factory=dict,
        description="Latency overrides by tool name: {tool: spec}; an unknown tool is an error.",
    )
    latency_profile: str | None = Field(
        None, description="Name of the latency profile the latencies came from (for the record)."
    )
    profile_per_tool_latency: dict[str, LatencySpec] = Field(
        default_factory=dict,
        description="Per-tool latencies from a profile; entries for tools this server lacks are "
        "logged and ignored. per_tool_latency wins over them.",
    )

    # -- faults --------------------------------------------------------------------------------
    faults: FaultField = Field(
        default_factory=FaultSpec,
        description="Fault rates of every tool, e.g. 'error=0.05,5xx=0.01,hang=0.01'.",
    )
    per_tool_faults: dict[str, FaultField] = Field(
        default_factory=dict, description="Fault rates by tool name, replacing `faults` for it."
    )
    hang_timeout_s: float = Field(
        60.0, gt=0, description="How long an injected hang lasts when the call has no deadline."
    )
    virtual_work_cap_s: float = Field(
        120.0,
        gt=0,
        description="Virtual-clock calls: real seconds a tool's own work may take. Virtual "
        "deadlines do not cut real work (replays must not depend on machine load); this cap "
        "stops a runaway handler.",
    )
    work_scale: float = Field(
        1.0,
        ge=0,
        description="Virtual-clock calls: factor on the work tools report from their "
        "deterministic work model (ML fits, sandboxed programs), charged with the latency; "
        "2 emulates a machine half as fast, 0 charges the latency alone.",
    )

    # -- sessions ------------------------------------------------------------------------------
    session_ttl_s: float = Field(
        1800.0, gt=0, description="Idle seconds after which a session expires and is freed."
    )
    max_live_sessions: int = Field(
        10_000, gt=0, description="Live sessions at most; beyond it calls answer 429."
    )
    remember_ended_sessions: int = Field(
        100_000, gt=0, description="Ended session ids remembered to answer 410 (oldest go)."
    )
    session_sweep_s: float = Field(
        10.0, gt=0, description="How often expired sessions are swept and their state closed."
    )

    # -- limits and security -------------------------------------------------------------------
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted.")
    drain_body_bytes: int = Field(
        32 << 20,
        ge=0,
        description="Unread request bytes read and discarded before an early answer (a 413, "
        "401 or 404 sent before the body arrived), so the client reads the answer instead of a "
        "connection reset; larger bodies are answered at once with Connection: close.",
    )
    max_concurrency: int = Field(
        4096, gt=0, description="Tool calls in flight at most; beyond it calls answer 429."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token required on every route but /health (None = open)."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the /admin routes (None: the api_key; with neither, "
        "/admin answers loopback clients only).",
    )
    mcp: bool = Field(True, description="Serve the MCP façade at /mcp.")
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers /mcp accepts besides loopback and the bind host (DNS-rebinding "
        "protection), e.g. ['timely_tools.internal:*']; ['*'] turns the check off.",
    )
    access_log: bool = Field(
        False, description="Log one JSON line per request to the 'timely.server.access' logger."
    )
    keep_alive_s: float = Field(
        75.0, gt=0, description="Idle keep-alive seconds (longer than clients keep connections)."
    )

    def latency_config(self, known_tools: set[str] | None = None) -> LatencyConfig:
        """The latency settings as one :class:`LatencyConfig`.

        Args:
            known_tools: when given, profile entries for other tools are left out.
        """
        profile = {
            name: spec
            for name, spec in self.profile_per_tool_latency.items()
            if known_tools is None or name in known_tools
        }
        return LatencyConfig(default=self.latency, per_tool={**profile, **self.per_tool_latency})

    def fault_config(self) -> FaultConfig:
        """The fault settings as one :class:`FaultConfig`."""
        return FaultConfig(default=self.faults, per_tool=dict(self.per_tool_faults))

    @classmethod
    def from_profile(cls, profile: str | Path, **overrides: Any) -> ServerConfig:
        """A config whose latencies come from a latency profile.

        Args:
            profile: a shipped profile's name (``"slow"``) or a YAML path.
            **overrides: other fields; an explicit ``latency`` replaces the profile's default
                and ``per_tool_latency`` entries win over the profile's.

        Raises:
            timely.errors.ConfigError: the profile is unknown or invalid.
        """
        prof = load_latency_profile(profile)
        overrides.setdefault("latency", prof.default)
        overrides.setdefault("latency_profile", prof.name)
        overrides.setdefault("profile_per_tool_latency", prof.per_tool)
        return cls(**overrides)


def build_server_config(config_file: str | Path | None = None, **fields: Any) -> ServerConfig:
    """A ServerConfig from an optional YAML file and explicit fields (the CLI's precedence).

    Precedence: defaults < the file < ``fields`` (None values are ignored, so unset CLI flags
    do not override the file). A ``latency_profile`` (from either) supplies the latencies that
    ``latency`` and ``per_tool_latency`` do not.

    Args:
        config_file: a shipped server config's name (``example``) or a YAML path.
        **fields: ServerConfig fields; None, ``{}`` and ``[]`` mean unset.

    Raises:
        timely.errors.ConfigError: unknown name, unreadable file or unknown profile.
        pydantic.ValidationError: an invalid or unknown field.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        config_file = resolve_config("server", config_file)
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read server config {str(config_file)!r}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"server config {str(config_file)!r} must be a YAML mapping")
        data.update(loaded)
    data.update({k: v for k, v in fields.items() if v is not None and v != {} and v != []})
    profile = data.pop("latency_profile", None)
    if profile is not None:
        return ServerConfig.from_profile(profile, **data)
    return ServerConfig(**data)
