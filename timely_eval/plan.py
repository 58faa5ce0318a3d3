"""The episode plan: a suite expanded into episodes, each with a stable key.

Resume, deduplication and the Ray backend all rest on one idea: an episode is identified by a key
hashed from what determines its outcome (task id, options, difficulty, seed and split; the policy
entry; the latency; the budget; and the fingerprint of the suite's episode settings). The runner
skips keys already in the run directory; workers receive :class:`EpisodeItem` objects and need
nothing but the suite to play them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from timely_eval.suite import PolicyEntry, Suite, TaskEntry, matches

Phase = Literal["calibration", "eval"]
CALIBRATION_LABEL = "calibration"


class EpisodeItem(BaseModel):
    """One episode to play: the cell it belongs to, its seed, its resolved budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="Unique, stable id of the episode (resume and dedup key).")
    phase: Phase = Field(description="calibration (unconstrained) or eval.")
    policy: str = Field(description="Policy label in the suite.")
    task_index: int = Field(description="Index of the task entry in suite.tasks.")
    task_id: str = Field(description="Task id.")
    seed: int = Field(description="Episode seed.")
    sample: int = Field(0, ge=0, description="Which sample of this instance (suite.epochs).")
    latency: str = Field(description="Tool latency spec (the cell's latency label).")
    budget: str = Field(description="Budget label: '30s', 'x2', 'default' or 'calibration'.")
    budget_s: float = Field(gt=0, description="Resolved budget in seconds.")
    slack: float = Field(1.0, ge=1.0, description="On-time slack factor.")


def fingerprint(suite: Suite) -> str:
    """Hash of the settings that change what an episode does beyond its own key fields.

    Grids (tasks, policies, latencies, budget values), seeds and run-time knobs (concurrency,
    backend) are left out: they either enter each key directly or do not change outcomes, so a
    run can be extended with more policies or latencies and resumed.
    """
    budgets = suite.budgets.model_dump(
        mode="json", exclude={"seconds", "multipliers", "task_default", "reference"}
    )
    if suite.budgets.reference_policy == "scripted:oracle":
        budgets.pop("reference_policy")  # the default leaves fingerprints as they were
    payload = {
        "split": suite.split,
        "clock": suite.clock,
        "episode": suite.episode.model_dump(mode="json"),
        "tool_server": suite.tool_server,
        "calibration": suite.calibration.model_dump(mode="json"),
        "budgets": budgets,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def episode_key(
    suite_fp: str,
    phase: Phase,
    task: TaskEntry,
    seed: int,
    split: str,
    policy: PolicyEntry,
    latency: str,
    budget: str,
    sample: int = 0,
) -> str:
    """The unique key of one episode (16 hex digits).

    Sample 0 leaves ``sample`` out of the hash, so the keys of runs made before epochs existed
    still match and ``--epochs`` extends such a run instead of replaying it.
    """
    payload = {
        "fp": suite_fp,
        "phase": phase,
        "task": task.model_dump(mode="json", exclude={"episodes"}),
        "seed": seed,
        "split": split,
        "policy": policy.model_dump(
            mode="json", exclude={"episodes", "tasks", "latencies", "budgets", "label"}
        ),
        "label": policy.name,
        "latency": latency,
        "budget": budget,
    }
    if sample:
        payload["sample"] = sample
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# The suffix of a budget label relative to the shared reference ('x2@oracle').
ORACLE_SUFFIX = "@oracle"


def budget_label(kind: str, value: float, protocol: str = "policy") -> str:
    """'30s' for absolute seconds; 'x2' for a multiple of the policy's own time, 'x2@oracle'
    for a multiple of the shared reference's.

    The protocol is part of the label (and so of the episode key): the two protocols give the
    same multiplier different seconds, and a report must never pool them.
    """
    if kind == "seconds":
        return f"{value:g}s"
    return f"x{value:g}" + (ORACLE_SUFFIX if protocol == "oracle" else "")


def parse_budget(label: str) -> tuple[str, float] | None:
    """(protocol, multiplier) of a relative budget label, None for any other budget.

    ``x2`` -> ("policy", 2.0); ``x0.5@oracle`` -> ("oracle", 0.5); ``30s`` -> None.
    """
    if not label.startswith("x"):
        return None
    body, protocol = label[1:], "policy"
    if body.endswith(ORACLE_SUFFIX):
        body, protocol = body[: -len(ORACLE_SUFFIX)], "oracle"
    try:
        value = float(body)
    except ValueError:
        return None
    return (protocol, value) if value > 0 else None


def budget_sort_key(label: str) -> tuple[int, float]:
    """Order budget labels: default, absolute by seconds, relative by multiplier (per-policy
    before shared-reference), calibration."""
    if label == "default":
        return (0, 0.0)
    if label.endswith("s") and label[:-1].replace(".", "", 1).isdigit():
        return (1, float(label[:-1]))
    parsed = parse_budget(label)
    if parsed is not None:
        return (2 if parsed[0] == "policy" else 3, parsed[1])
    return (4, 0.0)


def _n_episodes(suite: Suite, task: TaskEntry, policy: PolicyEntry) -> int:
    overrides = [n for n in (task.episodes, policy.episodes) if n is not None]
    n = min(overrides) if overrides else suite.episodes
    return min(n, suite.limit) if suite.limit is not None else n


def _cells(suite: Suite) -> Iterator[tuple[PolicyEntry, int, TaskEntry, int, str]]:
    """(policy, task index, task, seed, latency) for every item the policy plays."""
    latencies = _latencies(suite)
    for policy in suite.policies:
        for ti, task in enumerate(suite.tasks):
            if policy.tasks is not None and not any(matches(task.id, p) for p in policy.tasks):
                continue
            for i in range(_n_episodes(suite, task, policy)):
                for latency in latencies:
                    if not _policy_plays_latency(policy, latency):
                        continue
                    yield policy, ti, task, suite.seed + i, latency


def _latencies(suite: Suite) -> list[str]:
    if suite.tool_server:
        return [f"server:{suite.tool_server}"]  # latency is whatever that server does
    return suite.latencies


def _policy_plays_latency(policy: PolicyEntry, latency: str) -> bool:
    if policy.latencies is None or latency.startswith("server:"):
        return True
    from timely_server.latency import parse_latency

    return latency in {parse_latency(x).spec for x in policy.latencies}


def _budget_labels(suite: Suite, task: TaskEntry, policy: PolicyEntry) -> list[tuple[str, float]]:
    """(label, value) pairs of the task's budgets that the policy plays; relative values are
    multipliers, absolute ones seconds, 'default' carries 0. A policy's ``budgets`` filter
    names labels; 'x2' also selects 'x2@oracle'."""
    grid = suite.budgets
    out: list[tuple[str, float]] = []
    if grid.task_default:
        out.append(("default", 0.0))
    out += [(budget_label("seconds", s), s) for s in grid.seconds]
    out += [
        (budget_label("x", m, protocol), m)
        for protocol in grid.protocols
        for m in grid.multipliers_for(task.id)
    ]
    if policy.budgets is not None:
        keep = set(policy.budgets)
        out = [(lb, v) for lb, v in out if lb in keep or lb.removesuffix(ORACLE_SUFFIX) in keep]
    return out


def plan_calibration(suite: Suite) -> list[EpisodeItem]:
    """The unconstrained episodes that relative budgets need.

    Per-policy budgets need one per policy x item x latency; shared-reference budgets one
    episode of the reference policy per item x latency, whichever policies need it (its key
    names no eval policy, so it is planned, played and recorded once).
    """
    fp = fingerprint(suite)
    items: dict[str, EpisodeItem] = {}
    for policy, ti, task, seed, latency in _cells(suite):
        parsed = [parse_budget(label) for label, _ in _budget_labels(suite, task, policy)]
        protocols = {p[0] for p in parsed if p is not None}
        entries = [policy] if "policy" in protocols else []
        entries += [suite.reference_entry] if "oracle" in protocols else []
        for entry in entries:
            item = _calibration_item(suite, fp, entry, ti, task, seed, latency)
            items.setdefault(item.key, item)
    return list(items.values())


def _calibration_item(
    suite: Suite,
    fp: str,
    policy: PolicyEntry,
    task_index: int,
    task: TaskEntry,
    seed: int,
    latency: str,
) -> EpisodeItem:
    """The calibration episode of one (policy, task, seed, latency) cell."""
    return EpisodeItem(
        key=episode_key(
            fp, "calibration", task, seed, suite.split, policy, latency, CALIBRATION_LABEL
        ),
        phase="calibration",
        policy=policy.name,
        task_index=task_index,
        task_id=task.id,
        seed=seed,
        latency=latency,
        budget=CALIBRATION_LABEL,
        budget_s=suite.calibration.budget_s,
    )


BudgetResolver = Callable[[EpisodeItem, float], float | None]


def plan_eval(
    suite: Suite,
    *,
    default_budget: Callable[[TaskEntry, int], float],
    relative_budget: BudgetResolver | None = None,
) -> tuple[list[EpisodeItem], list[str]]:
    """The eval episodes, with budgets resolved.

    Args:
        suite: the suite.
        default_budget: (task entry, seed) -> the task's default budget (builds the task).
        relative_budget: (calibration item, multiplier) -> seconds, or None when that item has no
            calibration record yet.

    Returns:
        The items, and messages about episodes that could not be planned (missing calibration).
    """
    fp = fingerprint(suite)
    items: list[EpisodeItem] = []
    problems: list[str] = []
    for policy, ti, task, seed, latency in _cells(suite):
        slack = suite.budgets.slack_for(task.id)
        for label, value in _budget_labels(suite, task, policy):
            if label == "default":
                seconds: float | None = default_budget(task, seed)
            elif (parsed := parse_budget(label)) is not None:
                reference = policy if parsed[0] == "policy" else suite.reference_entry
                calib = _calibration_item(suite, fp, reference, ti, task, seed, latency)
                seconds = relative_budget(calib, value) if relative_budget else None
                if seconds is None:
                    problems.append(
                        f"{policy.name} {task.id} seed={seed} {latency} {label}: "
                        f"no calibration record of {reference.name}"
                    )
                    continue
            else:
                seconds = value
            for sample in range(suite.epochs):  # every sample shares the cell's calibration
                key = episode_key(
                    fp, "eval", task, seed, suite.split, policy, latency, label, sample
                )
                items.append(
                    EpisodeItem(
                        key=key,
                        phase="eval",
                        policy=policy.name,
                        task_index=ti,
                        task_id=task.id,
                        seed=seed,
                        sample=sample,
                        latency=latency,
                        budget=label,
                        budget_s=seconds,
                        slack=slack,
                    )
                )
    return items, problems
