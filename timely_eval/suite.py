"""Suites: what a Timely-Eval run plays, as one typed, validated config.

A suite is a YAML file (``--suite smoke`` names the shipped ``timely/configs/eval/smoke.yaml``)
naming tasks, policies, a tool-latency grid, a budget grid and the episode settings. It is
loaded like every config in the project (:func:`timely.config.load_config`: defaults < YAML <
``key=value`` overrides, unknown keys fail with a did-you-mean) and then narrowed for one
invocation (``--tasks``, ``--policy``). Everything the runner, the calibration pass and the Ray
workers need is in this one frozen object, so a worker can rebuild an episode from it and a run
directory records it in full.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from timely.budget import TIME_AWARENESS_PRESETS, Overrun, TimeAwareness
from timely.clock import SpeedProfile, speed_profile
from timely.config import load_config
from timely.configs import resolve_config
from timely.errors import ConfigError, PolicyError
from timely.loop import EpisodeOptions

# The reference release's budget multipliers (of a policy's own unconstrained time per item).
REFERENCE_MULTIPLIERS: dict[str, list[float]] = {
    "math": [0.75, 1.0, 2.0, 3.0],
    "ml": [1.0, 2.0, 3.0],
    "games": [1.0, 2.0, 3.0],
}

# The suite label of the shared budget reference (the oracle protocol's calibration episodes).
REFERENCE_LABEL = "reference"

# Speed profiles that fit a backend better than the suite default when none is given.
DEFAULT_SPEEDS: dict[str, str] = {"hf:smollm2-135m": "smollm2-cpu"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskEntry(_Frozen):
    """One task of the suite (a bare id string in YAML means all defaults)."""

    id: str = Field(description="Registered, versioned task id, e.g. 'math/arithmetic-v1'.")
    difficulty: int | None = Field(None, ge=1, description="Task difficulty (None = default).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Family-specific task options passed to make_task."
    )
    episodes: int | None = Field(
        None, ge=1, description="Episodes per cell for this task (overrides the suite's)."
    )

    @field_validator("options")
    @classmethod
    def _no_difficulty_option(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "difficulty" in v:
            raise ValueError("set difficulty as the task entry's own key, not under options")
        return v

    @property
    def family(self) -> str:
        return family_of(self.id)


class PolicyEntry(_Frozen):
    """One policy row of the leaderboard: a backend spec plus how its time is charged."""

    spec: str = Field(description="Policy spec: scripted:NAME, hf:smollm2-135m, openai:MODEL.")
    label: str | None = Field(
        None, description="Leaderboard name; default 'SPEC@SPEED' when a speed is set, else SPEC."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend options (max_new_tokens, base_url, ...)."
    )
    speed: str | SpeedProfile | None = Field(
        None,
        description="Virtual clock: speed profile preset or mapping that charges generation "
        "time (None: the backend's usual one, else episode.speed).",
    )
    time: str | TimeAwareness | None = Field(
        None, description="Time-awareness preset for this policy (None: episode.time)."
    )
    episodes: int | None = Field(
        None, ge=1, description="Episodes per cell for this policy (the smaller override wins)."
    )
    tasks: list[str] | None = Field(
        None, description="Only these tasks (ids, families or globs); None = all."
    )
    latencies: list[str] | None = Field(
        None, description="Only these latencies (a subset of the suite's); None = all."
    )
    budgets: list[str] | None = Field(
        None, description="Only these budget labels ('30s', 'x2', 'default'); None = all."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        """Accept 'SPEC' or 'SPEC@SPEED' as shorthand."""
        if isinstance(v, str):
            spec, _, speed = v.partition("@")
            return {"spec": spec, "speed": speed or None}
        return v

    @field_validator("speed")
    @classmethod
    def _known_speed(cls, v: Any) -> Any:
        if isinstance(v, str):
            speed_profile(v)  # raises with the known presets
        return v

    @field_validator("time")
    @classmethod
    def _known_time(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in TIME_AWARENESS_PRESETS:
            raise ValueError(f"unknown time preset {v!r}; use {sorted(TIME_AWARENESS_PRESETS)}")
        return v

    @property
    def name(self) -> str:
        """The label, defaulted."""
        if self.label:
            return self.label
        if self.speed is None:
            return self.spec
        return f"{self.spec}@{speed_profile(self.speed).name}"

    def speed_profile(self, default: str | SpeedProfile) -> SpeedProfile:
        """The profile that charges this policy's generation on a virtual clock."""
        return speed_profile(self.speed or DEFAULT_SPEEDS.get(self.spec) or default)


class BudgetGrid(_Frozen):
    """The budgets every (policy, task, latency) cell is played at."""

    seconds: list[float] = Field(
        default_factory=list, description="Absolute budgets in seconds, for every task."
    )
    task_default: bool = Field(False, description="Also play each task at its default budget.")
    multipliers: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Relative budgets: family (or task id, or '*') -> multiples of the policy's "
        "calibrated unconstrained time per item. Reference: math 0.75/1/2/3, ml 1/2/3.",
    )
    slack: dict[str, float] = Field(
        default_factory=lambda: {"math": 1.1},
        description="On-time slack by family (or task id, or '*'): answers up to slack x T count "
        "(the reference release uses 1.1 for reasoning). Matters with overrun 'late'.",
    )
    overrun: Overrun = Field(
        "hard", description="hard: stop at T; late: let episodes finish, mark them late."
    )
    late_limit_factor: float = Field(
        2.0, ge=1.0, description="Under 'late', calls stop at this multiple of T."
    )
    reference: Literal["policy", "oracle", "both"] = Field(
        "policy",
        description="What relative budgets multiply. policy: each policy's own unconstrained "
        "time on the item (the reference release's protocol; labels 'x2'); oracle: the "
        "reference policy's time on the same instance and latency, calibrated once and shared "
        "by every policy (labels 'x2@oracle'); both: every multiplier under each protocol.",
    )
    reference_policy: str = Field(
        "scripted:oracle",
        description="The shared reference of the oracle protocol: a policy spec, SPEC@SPEED "
        "for its speed profile (default: episode.speed).",
    )

    @field_validator("seconds")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"budgets must be > 0 seconds, got {v}")
        return v

    @field_validator("multipliers")
    @classmethod
    def _positive_multipliers(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for key, values in v.items():
            if any(m <= 0 for m in values):
                raise ValueError(f"multipliers for {key!r} must be > 0, got {values}")
        return v

    @field_validator("slack")
    @classmethod
    def _slack_at_least_one(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if value < 1.0:
                raise ValueError(f"slack for {key!r} must be >= 1.0, got {value}")
        return v

    @field_validator("reference_policy")
    @classmethod
    def _reference_spec(cls, v: str) -> str:
        PolicyEntry.model_validate(v)  # raises on an unknown speed preset
        return v

    def multipliers_for(self, task_id: str) -> list[float]:
        return by_family(self.multipliers, task_id, [])

    @property
    def protocols(self) -> list[str]:
        """The relative-budget protocols played: policy, oracle or both."""
        return ["policy", "oracle"] if self.reference == "both" else [self.reference]

    def slack_for(self, task_id: str) -> float:
        return by_family(self.slack, task_id, 1.0)


class Calibration(_Frozen):
    """The unconstrained pass that relative budgets are multiples of."""

    budget_s: float = Field(
        600.0, gt=0, description="Budget of a calibration episode (large = unconstrained)."
    )
    min_budget_s: float = Field(0.5, gt=0, description="Floor of a relative budget, in seconds.")
    time: str | TimeAwareness = Field(
        "blind", description="Time awareness during calibration (blind: no budget is shown)."
    )
    mode: dict[str, Literal["elapsed", "steps"]] = Field(
        default_factory=lambda: {"games": "steps"},
        description="By family: elapsed = multiple of the item's calibrated time; steps = "
        "multiple of spec.metadata['reference_steps'] x the calibrated mean step time "
        "(falls back to elapsed when the task has no reference_steps).",
    )


class RayOptions(_Frozen):
    """Settings of the Ray backend (``backend: ray``): episodes are played by a pool of
    ``EpisodeWorker`` actors, each holding its own policies for the whole run."""

    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto' (the cluster `ray start` set up on this "
        "machine), HOST:PORT or ray://HOST:PORT; None starts a private local Ray.",
    )
    num_cpus: int = Field(
        2, ge=1, description="CPUs of the private local Ray (ignored when address is set)."
    )
    workers: int = Field(
        0,
        ge=0,
        description="EpisodeWorker actors to start; each loads its own copy of a local model, "
        "once. 0: as many as the cluster's free CPUs allow (free CPUs / num_cpus_per_worker), "
        "never more than there are chunks.",
    )
    num_cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs Ray reserves for each worker actor (its num_cpus)."
    )
    num_gpus_per_worker: float = Field(
        0.0,
        ge=0,
        description="GPUs Ray reserves for each worker actor (its num_gpus; e.g. 1 for one "
        "local model per GPU, 0.5 to pack two).",
    )
    chunk_size: int = Field(
        0,
        ge=0,
        description="Episodes handed to a worker at a time (0: about four chunks per worker, "
        "at most 64 episodes). Smaller chunks balance load better and lose less when a worker "
        "dies.",
    )
    max_retries: int = Field(
        3,
        ge=0,
        description="Times a chunk whose worker died is played again on another worker; "
        "after max_retries + 1 deaths its episodes go to errors.jsonl (retried on resume). "
        "An exception raised by an episode is that episode's error, not a death.",
    )
    max_restarts: int = Field(
        3,
        ge=-1,
        description="Times each worker slot gets a fresh actor after its actor died "
        "(-1: no limit); when every slot is used up the remaining episodes go to errors.jsonl.",
    )


class Suite(_Frozen):
    """A Timely-Eval suite: tasks x policies x tool latencies x budgets, and how to play them."""

    name: str = Field("custom", description="Suite name (shown in reports).")
    description: str = Field("", description="What the suite is for.")
    tasks: list[TaskEntry] = Field(description="Tasks to play (ids or entries).")
    policies: list[PolicyEntry] = Field(description="Policies: spec strings or entries.")
    episodes: int = Field(3, ge=1, description="Episodes (consecutive seeds) per cell.")
    limit: int | None = Field(
        None,
        ge=1,
        description="At most this many seeds per cell, for a quick look (None: all of them).",
    )
    epochs: int = Field(
        1,
        ge=1,
        description="Samples of each instance (same task, seed, latency and budget), played as "
        "samples 0..K-1: the mean counts them all; binary tasks also report pass@k. Useful "
        "with sampling policies (temperature > 0).",
    )
    seed: int = Field(0, description="First seed; a cell plays seed, seed+1, ...")
    split: Literal["train", "test"] = Field("test", description="Seed split to draw from.")
    latencies: list[str] = Field(
        default_factory=lambda: ["constant:1.0"], description="Tool-latency grid (specs)."
    )
    budgets: BudgetGrid = Field(default_factory=BudgetGrid, description="Budget grid.")
    calibration: Calibration = Field(
        default_factory=Calibration, description="Calibration pass for relative budgets."
    )
    clock: Literal["virtual", "wall"] = Field(
        "virtual", description="virtual: simulated, deterministic; wall: real time."
    )
    episode: EpisodeOptions = Field(
        default_factory=EpisodeOptions,
        description="Defaults for every episode: max_turns, time, reward, speed.",
    )
    concurrency: int = Field(8, ge=1, description="Episodes in flight at once.")
    tool_server: str | None = Field(
        None, description="URL of a running tool server; None: one in-process server per latency."
    )
    backend: Literal["local", "ray"] = Field("local", description="Where episodes run.")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray backend settings.")

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_strings(cls, v: Any) -> Any:
        return [{"id": t} if isinstance(t, str) else t for t in v] if isinstance(v, list) else v

    @field_validator("latencies")
    @classmethod
    def _canonical_latencies(cls, v: list[str]) -> list[str]:
        from timely_server.latency import parse_latency

        out = [parse_latency(spec).spec for spec in v]  # raises with the valid forms
        if not out:
            raise ValueError("latencies must name at least one latency model")
        if len(set(out)) != len(out):
            raise ValueError(f"latencies repeat: {v}")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        if not self.tasks:
            raise ValueError("a suite needs at least one task")
        if not self.policies:
            raise ValueError("a suite needs at least one policy")
        names = [p.name for p in self.policies]
        if REFERENCE_LABEL in names:
            raise ValueError(
                f"the policy label {REFERENCE_LABEL!r} is reserved for the shared budget "
                "reference (budgets.reference_policy); set another 'label'"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"policy labels must be unique; repeated: {dupes} (set 'label')")
        grid = self.budgets
        if not (grid.seconds or grid.task_default or grid.multipliers):
            raise ValueError(
                "the budget grid is empty: set budgets.seconds, "
                "budgets.task_default or budgets.multipliers"
            )
        for p in self.policies:
            if p.latencies is not None:
                from timely_server.latency import parse_latency

                extra = {parse_latency(x).spec for x in p.latencies} - set(self.latencies)
                if extra:
                    raise ValueError(
                        f"policy {p.name}: latencies {sorted(extra)} are not in "
                        f"the suite's grid {self.latencies}"
                    )
        return self

    @property
    def reference_entry(self) -> PolicyEntry:
        """The policy whose unconstrained time the oracle protocol's budgets multiply.

        It is no leaderboard row: it plays only calibration episodes, once per (task, seed,
        latency), under the reserved label ``reference``.
        """
        entry = PolicyEntry.model_validate(self.budgets.reference_policy)
        return entry.model_copy(update={"label": REFERENCE_LABEL})

    def policy(self, label: str) -> PolicyEntry:
        """The entry of a suite label (``reference`` is the shared budget reference)."""
        for p in self.policies:
            if p.name == label:
                return p
        if label == REFERENCE_LABEL:
            return self.reference_entry
        raise ConfigError(f"no policy labelled {label!r}; known: {[p.name for p in self.policies]}")


def family_of(task_id: str) -> str:
    """The family of a task id: the part before the first '/'."""
    return task_id.split("/", 1)[0]


def by_family(table: dict[str, Any], task_id: str, default: Any) -> Any:
    """Look a task up in a per-family table: exact id, then family, then '*'."""
    for key in (task_id, family_of(task_id), "*"):
        if key in table:
            return table[key]
    return default


def matches(task_id: str, pattern: str) -> bool:
    """Whether a task id matches a filter: exact id, unversioned id, family, or glob."""
    return (
        task_id == pattern
        or task_id.rsplit("-v", 1)[0] == pattern
        or family_of(task_id) == pattern.rstrip("/")
        or fnmatch.fnmatchcase(task_id, pattern)
    )


# ---- loading ---------------------------------------------------------------------------------


def suite_path(name_or_path: str | Path) -> Path:
    """Resolve ``--suite``: a shipped suite's name (``smoke``) or a YAML path.

    Raises:
        ConfigError: an unknown name (the message lists the shipped suites) or a missing file.
    """
    return resolve_config("eval", name_or_path)


def load_suite(name_or_path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Load a suite by name or path, with ``key.sub=value`` overrides on top.

    Args:
        name_or_path: ``smoke``, ``standard`` or a path to a suite YAML file.
        overrides: e.g. ``["episodes=2", "clock=wall"]``.
    """
    return load_config(Suite, suite_path(name_or_path), overrides)


def select(
    suite: Suite,
    *,
    tasks: list[str] | None = None,
    policies: list[str] | None = None,
    policy_options: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
) -> Suite:
    """Narrow a suite for one invocation (``--tasks``, ``--policy``, ``-T``).

    Args:
        suite: the loaded suite.
        tasks: keep task entries matching any pattern (id, unversioned id, family, glob); a
            pattern that matches none of the suite's tasks adds the registered tasks it
            matches (by family or glob only those that need no options), so any registered
            task can be played with any suite's policies and grid.
        policies: the policies to run. A name that matches suite policies (label, or spec:
            every entry with that spec) selects them with their settings; ``suite`` selects all
            of the suite's; anything else (``SPEC`` or ``SPEC@SPEED``) is added as a new policy.
            Suite policies not named are not run.
        policy_options: backend options for the policies added here (e.g. base_url).
        task_options: options of every selected task (``-T key=value``); ``difficulty`` sets
            the entries' difficulty. Each task is built once with them, so a bad one fails now.

    Raises:
        ConfigError: a task pattern matches no registered task, or a task refuses its options.
    """
    update: dict[str, Any] = {}
    if tasks:
        kept = [t for t in suite.tasks if any(matches(t.id, p) for p in tasks)]
        for pattern in tasks:
            if not any(matches(t.id, pattern) for t in suite.tasks):
                kept += [TaskEntry(id=i) for i in _registered(pattern, suite) if i not in kept]
        update["tasks"] = kept
    if task_options:
        options = dict(task_options)
        difficulty = options.pop("difficulty", None)
        fields = {"difficulty": difficulty} if difficulty is not None else {}
        update["tasks"] = [
            t.model_copy(update={"options": {**t.options, **options}, **fields})
            for t in update.get("tasks", suite.tasks)
        ]
    if policies:
        chosen: list[PolicyEntry] = []
        for name in policies:
            found = (
                list(suite.policies)
                if name == "suite"
                else [p for p in suite.policies if p.name == name]
                or [p for p in suite.policies if p.spec == name]
            )
            if not found:
                entry = PolicyEntry.model_validate(name)
                found = [entry.model_copy(update={"options": dict(policy_options or {})})]
            chosen += [p for p in found if p not in chosen]
        update["policies"] = chosen
    if not update:
        return suite
    try:
        selected = Suite.model_validate({**suite.model_dump(), **_dump(update)})
    except ValueError as exc:
        raise ConfigError(f"invalid selection: {exc}") from None
    if task_options:
        _check_task_options(selected, task_options)
    return selected


def _dump(update: dict[str, Any]) -> dict[str, Any]:
    return {k: [x.model_dump() for x in v] for k, v in update.items()}


def _registered(pattern: str, suite: Suite) -> list[str]:
    """The versioned registered task ids a ``--tasks`` pattern names.

    An id or unversioned id names its task; a family or glob names those of its tasks that need
    no options (a data directory, a game file), which it could not play without them.

    Raises:
        ConfigError: nothing registered matches; the message suggests close names.
    """
    import difflib
    import re

    from timely.task import TASKS, task_names

    names = task_names()
    versioned = [n for n in names if re.search(r"-v\d+$", n)]
    exact = [n for n in versioned if n == pattern or n.rsplit("-v", 1)[0] == pattern]
    if exact:
        return exact
    found = [
        n
        for n in versioned
        if matches(n, pattern) and not getattr(TASKS.get(n), "requires_options", False)
    ]
    if not found:
        close = difflib.get_close_matches(pattern, names, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"--tasks {pattern!r} matches none of suite {suite.name!r}'s tasks "
            f"({', '.join(t.id for t in suite.tasks)}) and no registered task.{hint} "
            "`timely tasks` lists them all."
        )
    return found


def _check_task_options(suite: Suite, task_options: dict[str, Any]) -> None:
    """Build each task once with its options, so ``-T`` typos fail before any episode."""
    from timely.errors import TaskError
    from timely.task import make_task

    for t in suite.tasks:
        try:
            make_task(
                t.id, seed=suite.seed, split=suite.split, difficulty=t.difficulty, **t.options
            )
        except (TaskError, ValueError, TypeError) as exc:
            raise ConfigError(f"task {t.id} with -T {task_options}: {exc}") from None


def check_policies(suite: Suite) -> None:
    """Fail before anything runs when a policy cannot be built (a mistyped backend, option or
    model; see :func:`timely.policies.base.check_policy`), naming the policy."""
    from timely.policies.base import check_policy

    reference = [suite.reference_entry] if suite.budgets.reference != "policy" else []
    for p in [*suite.policies, *reference]:
        try:
            check_policy(p.spec, **p.options)
        except (ConfigError, PolicyError) as exc:
            raise type(exc)(f"policy {p.name}: {exc}") from None


def check_registered(suite: Suite) -> None:
    """Fail before anything runs when a suite names a task nobody registered.

    Raises:
        ConfigError: listing the unknown ids and every registered task.
    """
    from timely.task import task_names

    known = task_names()
    missing = [t.id for t in suite.tasks if t.id not in known]
    if missing:
        raise ConfigError(
            f"suite {suite.name!r} names unregistered task(s) {missing}. Registered tasks: "
            f"{', '.join(n for n in known)}. Drop them with --tasks (e.g. --tasks math) or fix "
            "the suite."
        )
