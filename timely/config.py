"""Configuration: typed pydantic models, YAML files, and ``key.sub=value`` overrides.

Precedence: model defaults < ``--config file.yaml`` < command-line overrides. Unknown keys fail
with a did-you-mean, so a typo never silently runs the default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from timely.budget import Budget
from timely.configs import resolve_config
from timely.errors import ConfigError
from timely.loop import EpisodeOptions

M = TypeVar("M", bound=BaseModel)


class RunBudget(Budget):
    """A run's budget setting: a :class:`Budget` whose seconds may be left to the task."""

    seconds: float | None = Field(  # type: ignore[assignment]
        None, gt=0, description="Time budget T in seconds; None: each task's default budget."
    )

    def for_task(self, default_s: float) -> Budget:
        """The episode budget: these settings, with the task's default when seconds is unset."""
        fields = self.model_dump()
        fields["seconds"] = self.seconds if self.seconds is not None else default_s
        return Budget(**fields)


class RunConfig(BaseModel):
    """``timely run``: play episodes of one task with one policy and record them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field("math/arithmetic-v1", description="Registered task id (`timely tasks`).")
    split: Literal["train", "test"] = Field("test", description="Which seed split to draw from.")
    seed: int = Field(0, description="First episode seed; episodes use seed, seed+1, ...")
    episodes: int = Field(1, ge=1, description="Number of episodes (consecutive seeds).")
    difficulty: int | None = Field(None, ge=1, description="Task difficulty (None = default).")
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Family-specific task options, e.g. path=/data/items.jsonl for data files.",
    )
    policy: str = Field(
        "scripted:oracle",
        description="Policy spec: scripted:NAME, hf:smollm2-135m, hf:/model/dir, openai:MODEL.",
    )
    policy_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend options, e.g. temperature, max_new_tokens, base_url, api_key.",
    )
    clock: Literal["virtual", "wall"] = Field(
        "virtual", description="virtual: simulated, deterministic; wall: real time."
    )
    budget: RunBudget = Field(
        default_factory=lambda: RunBudget(),
        description="Time budget per episode (seconds unset: the task's default budget).",
    )
    latency: str = Field("constant:1.0", description="Tool latency model spec.")
    tool_latency: dict[str, str] = Field(
        default_factory=dict, description="Per-tool latency overrides: tool -> spec."
    )
    tool_server: str | None = Field(
        None, description="URL of a running tool server; None starts one in-process."
    )
    concurrency: int = Field(4, ge=1, description="Episodes run at once.")
    episode: EpisodeOptions = Field(
        default_factory=EpisodeOptions, description="Max turns, time awareness, reward, speed."
    )
    out: str = Field("runs/latest", description="Run directory.")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_from_number(cls, v: Any) -> Any:
        return {"seconds": v} if isinstance(v, int | float) else v


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
) -> M:
    """Resolve a config: defaults < YAML file < ``a.b=c`` overrides.

    Args:
        model: the pydantic config class.
        path: optional YAML file, or with ``kind`` the name of a shipped config.
        overrides: ``key.sub=value`` strings; values are parsed as YAML scalars/lists/maps.
        kind: the shipped configs ``path`` may name (``"train"``, ``"run"``; see
            :mod:`timely.configs`); None: ``path`` is a path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_config(kind, path) if kind is not None else Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        _check_key(model, key.split("."))
        _set_path(data, key.split("."), yaml.safe_load(raw) if raw != "" else "")
    _check_keys(model, data, [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_readable(exc)) from None


def config_hash(config: BaseModel, exclude: set[str] | None = None) -> str:
    """A short stable hash of a config (fields in ``exclude`` do not count)."""
    payload = config.model_dump(mode="json", exclude=exclude or set())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = data.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            data[k] = nxt
        data = nxt
    data[keys[-1]] = value


def _sub_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    ann = model.model_fields[key].annotation
    for cand in (ann, *getattr(ann, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _check_key(model: type[BaseModel], keys: list[str]) -> None:
    """Fail with a did-you-mean when a dotted key names no field."""
    current: type[BaseModel] | None = model
    for i, k in enumerate(keys):
        if current is None:
            return  # inside a free-form dict field
        if k not in current.model_fields:
            close = difflib.get_close_matches(k, list(current.model_fields), n=3)
            where = ".".join(keys[:i]) or "the top level"
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            valid = ", ".join(current.model_fields)
            raise ConfigError(
                f"unknown config key {'.'.join(keys[: i + 1])!r} at {where}.{hint} "
                f"Valid keys: {valid}"
            )
        current = _sub_model(current, k)


def _check_keys(model: type[BaseModel], data: dict[str, Any], prefix: list[str]) -> None:
    """Check every key of a (YAML) mapping, recursing into nested models."""
    for k, v in data.items():
        _check_key(model, [*prefix, k])
        if isinstance(v, dict):
            _check_keys(model, v, [*prefix, k])


def _readable(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
