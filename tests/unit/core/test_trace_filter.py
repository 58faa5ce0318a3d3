"""`timely show` filters (timely.trace): matching rules, showing a run, errors.

Outcomes and reading a run are the run record's: tests/unit/core/test_runrecord.py.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from timely.errors import ConfigError
from timely.runrecord import TRAJECTORIES, append_trajectories
from timely.trace import TraceFilter, show_run
from timely.types import EndReason, Message, Trajectory


def _traj(
    *,
    task="math/arithmetic-v1",
    seed=0,
    label="oracle",
    spec="scripted:oracle",
    latency="constant:0.2",
    budget_s=30.0,
    budget_label="30s",
    end=EndReason.ANSWERED,
    compliant=True,
    score=1.0,
    key=None,
) -> Trajectory:
    meta = {"label": label, "budget_label": budget_label}
    if key is not None:
        meta["key"] = key
    return Trajectory(
        task_id=task,
        seed=seed,
        policy=spec,
        clock="virtual",
        budget_s=budget_s,
        latency=latency,
        target="42",
        messages=[Message(role="user", content="q")],
        end_reason=end,
        compliant=compliant,
        score=score,
        metadata=meta,
    )


def test_each_field_narrows_and_values_within_a_field_are_alternatives():
    runs = [
        _traj(task="math/arithmetic-v1", seed=0),
        _traj(task="math/multistep-v1", seed=1, label="budget-aware", spec="scripted:budget-aware"),
        _traj(task="games/treasure-v1", seed=2, latency="lognormal:1.0,0.6", budget_label="1x"),
        _traj(seed=3, latency="constant:3.0", budget_s=5.0, budget_label="5s", score=0.0),
    ]

    def pick(**kw) -> list[int]:
        f = TraceFilter.build(**kw)
        return [t.seed for t in runs if f.matches(t)]

    assert pick() == [0, 1, 2, 3]
    assert pick(tasks=["math"]) == [0, 1, 3]  # a family
    assert pick(tasks=["math/arithmetic"]) == [0, 3]  # the unversioned id
    assert pick(tasks=["games/*,math/multi*"]) == [1, 2]  # globs, comma-separated
    assert pick(policies=["budget-aware"]) == [1]
    assert pick(policies=["scripted:oracle"]) == [0, 2, 3]  # the spec, or its name alone
    assert pick(seeds=[1, 3]) == [1, 3]
    assert pick(latencies=["3"]) == [3] == pick(latencies=["3.0s"])  # constant seconds
    assert pick(latencies=["lognormal:*"]) == [2]
    assert pick(budgets=["1x"]) == [2] and pick(budgets=["5"]) == [3]
    assert pick(outcomes=["wrong"]) == [3] and pick(outcomes=["ok"]) == [0, 1, 2]
    assert pick(tasks=["math"], outcomes=["on_time"], policies=["oracle"]) == [0]


def test_an_unknown_outcome_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown outcome 'nope'.*cut_off"):
        TraceFilter.build(outcomes=["nope"])
    assert TraceFilter.build(outcomes=["Cut-Off"]).outcomes == ("cut_off",)


def test_show_run_prints_matches_and_explains_an_empty_match(tmp_path):
    append_trajectories(tmp_path / TRAJECTORIES, [_traj(seed=s) for s in range(3)])
    console = Console(record=True, width=160)
    n = show_run(tmp_path, TraceFilter.build(seeds=[1, 2]), console, limit=1, as_list=True)
    text = console.export_text()
    assert n == 2 and "2 of 3 episodes match seed 1, 2; showing 1 (--limit)" in text
    with pytest.raises(ConfigError, match=r"matches outcome late \(3 episodes; tasks: math"):
        show_run(tmp_path, TraceFilter.build(outcomes=["late"]), console)
    with pytest.raises(ConfigError, match="--limit"):
        show_run(tmp_path, TraceFilter(), console, limit=0)
