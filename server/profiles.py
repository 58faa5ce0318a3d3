"""Named latency profiles: the shipped ``timely/configs/latency/`` files (``fast``, ``slow``, ...).

A sweep over tool speed is the paper's main experiment, so the grid points are files with
documented values rather than numbers retyped on every command line. A profile holds a default
latency spec and optional per-tool specs; because one profile is shared by servers with
different tool sets, per-tool entries for tools a server lacks are logged and ignored (an
explicit ``ServerConfig.per_tool_latency`` entry for an unknown tool is still an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from timely.configs import config_names, resolve_config
from timely.errors import ConfigError
from timely_server.latency import ConstantLatency, LatencySpec


class LatencyProfile(BaseModel):
    """One latency profile file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("", description="The profile's name (the file stem when omitted).")
    description: str = Field("", description="What the profile models, with sources.")
    default: LatencySpec = Field(
        default_factory=lambda: ConstantLatency(seconds=0.0),
        description="Latency of tools without a per-tool entry.",
    )
    per_tool: dict[str, LatencySpec] = Field(
        default_factory=dict, description="Latency by tool name; unknown tools are ignored."
    )


def _relative_to(spec: Any, base: Path) -> Any:
    """A replay trace named relative to the profile file is read from next to it."""
    if isinstance(spec, str) and spec.strip().lower().startswith("replay:"):
        trace = Path(spec.split(":", 1)[1].strip())
        if not trace.is_absolute():
            return f"replay:{base / trace}"
    if isinstance(spec, dict) and spec.get("kind") == "replay" and "path" in spec:
        trace = Path(str(spec["path"]))
        if not trace.is_absolute():
            return {**spec, "path": str(base / trace)}
    return spec


def available_profiles() -> list[str]:
    """Names of the shipped profiles (``timely/configs/latency/``)."""
    return config_names("latency")


def load_latency_profile(name_or_path: str | Path) -> LatencyProfile:
    """Load a profile by name (``"slow"``) or from a YAML file path.

    Args:
        name_or_path: a shipped profile's name or a path to a YAML file.

    Raises:
        ConfigError: unknown name (with the available ones), missing, unreadable or invalid
            file.
    """
    path = resolve_config("latency", name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read latency profile {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"latency profile {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"latency profile {str(path)!r} must be a mapping with 'default'")
    data.setdefault("name", path.stem)
    if data.get("per_tool") is None:  # a section holding only commented-out examples
        data.pop("per_tool", None)
    base = path.resolve().parent
    if "default" in data:
        data["default"] = _relative_to(data["default"], base)
    if isinstance(data.get("per_tool"), dict):
        data["per_tool"] = {k: _relative_to(v, base) for k, v in data["per_tool"].items()}
    try:
        return LatencyProfile.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"latency profile {str(path)!r} is invalid: {reasons}") from None
