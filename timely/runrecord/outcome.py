"""How an episode ended, in the one vocabulary every reader of a run uses.

``timely show --outcome``, the dashboard's outcome filter, ``timely export``'s ``outcome``
column and the agent endpoint's ``timely_runs_total{outcome=…}`` all place an episode with
:func:`classify`, so a word means the same on the terminal, the page, a table and a metric.
The classification works on the three plain fields it needs, so a reader that keeps records as
raw JSON (the dashboard, tolerant of other schema versions) uses it as well as one holding a
:class:`~timely.types.Trajectory`.
"""

from __future__ import annotations

from enum import StrEnum

from timely.errors import ConfigError
from timely.types import Trajectory


class Outcome(StrEnum):
    """An episode's outcome; the values are the names people type and metrics carry."""

    ON_TIME = "on_time"
    WRONG = "wrong"
    LATE = "late"
    CUT_OFF = "cut_off"
    NO_ANSWER = "no_answer"
    FAILED = "failed"


# Display order and the label shown beside each name (`timely show`, the dashboard's facets).
OUTCOMES: dict[str, str] = {
    Outcome.ON_TIME.value: "answered on time",
    Outcome.WRONG.value: "answered on time, wrong (score 0)",
    Outcome.LATE.value: "answered after the budget",
    Outcome.CUT_OFF.value: "cut off at the budget",
    Outcome.NO_ANSWER.value: "turn limit reached without an answer",
    Outcome.FAILED.value: "failed (model or tool server error)",
}
# What people type: `ok` is the short word for on time, and dashes read like the CLI's flags.
OUTCOME_ALIASES: dict[str, str] = {"ok": "on_time", "cutoff": "cut_off", "error": "failed"}


def graded(target: object, schema_version: object) -> bool:
    """Whether a record's score tells right from wrong.

    A task with no gold answer (the agent endpoint's chat task: its score is 0 by definition)
    records ``target`` None; records of schema 1 predate ``target`` and are taken as graded.

    Args:
        target: the record's ``target``.
        schema_version: the record's ``schema_version``.
    """
    old = isinstance(schema_version, int) and schema_version < 2
    return target is not None or old


def classify(end_reason: str, compliant: bool, score: float, *, graded: bool = True) -> Outcome:
    """Place an episode from its end reason, compliance and score.

    Args:
        end_reason: the trajectory's ``end_reason`` value (``answered``, ``budget_exhausted``,
            ``max_turns``, ``policy_error``, ``tool_server_error``, or one this code predates).
        compliant: whether the answer came within the budget.
        score: the task's score of the answer.
        graded: whether the score can say the answer is wrong (:func:`graded`); an ungraded
            answer in time is on time.
    """
    if end_reason == "answered":
        if not compliant:
            return Outcome.LATE  # only an overrun="late" budget keeps an answer past the budget
        return Outcome.WRONG if graded and score <= 0 else Outcome.ON_TIME
    if end_reason == "budget_exhausted":
        return Outcome.CUT_OFF
    if end_reason == "max_turns":
        return Outcome.NO_ANSWER
    return Outcome.FAILED  # an error, or an end reason newer than this code: not a success


def outcome(traj: Trajectory) -> Outcome:
    """The outcome of a trajectory (see :func:`classify`)."""
    return classify(
        str(traj.end_reason),
        traj.compliant,
        traj.score,
        graded=graded(traj.target, traj.schema_version),
    )


def parse_outcome(raw: str) -> Outcome:
    """An outcome from what a person typed (any case, dashes or underscores, an alias).

    Raises:
        ConfigError: not an outcome; the message lists the names.
    """
    name = raw.strip().lower().replace("-", "_")
    name = OUTCOME_ALIASES.get(name, name)
    if name not in OUTCOMES:
        known = ", ".join([*OUTCOMES, *OUTCOME_ALIASES])
        raise ConfigError(f"unknown outcome {raw!r}; use one of {known}")
    return Outcome(name)
