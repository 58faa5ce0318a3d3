"""Failed prompt groups on verl: counted, shown, and fatal past a share the user sets.

verl's default (v1) agent-loop worker runs a prompt's ``rollout.n`` sessions together; when one
of them raises (our loop's :class:`~timely.errors.ToolServerUnavailable`, the reward's refusal of
a rollout it cannot score, anything else) it logs the error, marks the whole group failed and
trains on the other groups. It stops only when no group at all has a trajectory. A tool server
that died on one node would so quietly shrink every batch.

:class:`GroupFailures` counts, per agent-loop worker process, the prompt groups the timely loop
started (by verl's ``uid``) and those verl logged as failed: a logging handler on verl's agent
loop logger sees every failure, whatever raised it. Each rollout carries the share so far in
``extra_fields`` (``timely_failed_group_share``, which the reward returns as
``failed_group_share``), every failure is appended to ``logs/failed-groups.jsonl``, and past
``verl.max_failed_share`` (once ``verl.failed_min_groups`` groups ran) the worker writes the
run's abort file with the reason and refuses every later rollout. The launcher watches for that
file, stops verl and exits non-zero with the reason (:mod:`timely.train.verl.launch`).

Nothing here imports verl.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timely.errors import TimelyError

# Where verl 0.9.1's v1 worker logs a failed group ("Error in _run_prompt for uid=...").
VERL_WORKER_LOGGER = "verl.trainer.ppo.v1.agent_loop_tq"
_FAILED = re.compile(r"Error in _run_prompt(?: for uid=(?P<uid>\S+))?")

log = logging.getLogger(__name__)


class RolloutsAborted(TimelyError):
    """Too many prompt groups failed: the run is stopping (the abort file says why)."""


@dataclass(frozen=True)
class FailureRule:
    """When failed groups stop the run.

    Attributes:
        max_share: stop past this share of failed groups (1: never).
        min_groups: groups run before the share is judged.
        abort_file: written with the reason when the rule trips (the launcher watches it).
        failure_log: every failure is appended here as one JSON line.
    """

    max_share: float = 0.05
    min_groups: int = 16
    abort_file: str | None = None
    failure_log: str | None = None


@dataclass
class GroupFailures:
    """One worker's count of started and failed prompt groups, and the abort rule."""

    rule: FailureRule
    started: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    aborted: str | None = None

    @property
    def share(self) -> float:
        """Failed groups / groups started so far (0 before any)."""
        groups = len(self.started | self.failed)
        return len(self.failed) / groups if groups else 0.0

    def start(self, uid: str) -> None:
        """A rollout of group ``uid`` starts; refused once the run is aborting.

        Raises:
            RolloutsAborted: the failure rule tripped (here or, through the abort file, on
                another worker).
        """
        if self.aborted is None and self.rule.abort_file and os.path.exists(self.rule.abort_file):
            self.aborted = Path(self.rule.abort_file).read_text()
        if self.aborted is not None:
            raise RolloutsAborted(f"the run is stopping: {self.aborted}")
        self.started.add(uid)

    def fail(self, uid: str, error: str) -> None:
        """Group ``uid`` failed with ``error``; trips the rule when the share is too high."""
        self.failed.add(uid)
        share, groups = self.share, len(self.started | self.failed)
        self._append_log({"uid": uid, "error": error, "share": share, "groups": groups})
        log.warning(
            "timely: %d of %d prompt groups failed on this worker (%.1f%%; the run stops past "
            "%.1f%%): %s",
            len(self.failed),
            groups,
            100 * share,
            100 * self.rule.max_share,
            error,
        )
        if self.aborted is None and groups >= self.rule.min_groups and share > self.rule.max_share:
            self.aborted = (
                f"{len(self.failed)} of {groups} prompt groups failed ({100 * share:.1f}%, over "
                f"verl.max_failed_share={self.rule.max_share}); last error: {error}. Fix the "
                "cause (`curl URL/health` for a tool server; logs/failed-groups.jsonl lists "
                "every failure) and rerun the same command: it resumes from the last checkpoint"
            )
            if self.rule.abort_file:
                Path(self.rule.abort_file).write_text(self.aborted)

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.rule.failure_log:
            with open(self.rule.failure_log, "a") as sink:
                sink.write(json.dumps({**record, "pid": os.getpid()}) + "\n")


class _VerlFailureHandler(logging.Handler):
    """Turns verl's "Error in _run_prompt for uid=..." records into :meth:`GroupFailures.fail`."""

    def __init__(self, failures: GroupFailures) -> None:
        super().__init__(logging.ERROR)
        self.failures = failures

    def emit(self, record: logging.LogRecord) -> None:
        match = _FAILED.match(record.getMessage())
        if match is None:
            return
        uid = match["uid"] or f"unknown-{len(self.failures.failed)}"
        exc = record.exc_info[1] if record.exc_info else None
        error = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        self.failures.fail(uid, error)


_workers: dict[FailureRule, GroupFailures] = {}


def worker_failures(rule: FailureRule) -> GroupFailures:
    """This process's :class:`GroupFailures` for ``rule``, listening to verl's worker logger
    from the first call on (one per process: verl builds an agent loop per rollout)."""
    if rule not in _workers:
        failures = GroupFailures(rule)
        logging.getLogger(VERL_WORKER_LOGGER).addHandler(_VerlFailureHandler(failures))
        _workers[rule] = failures
    return _workers[rule]
