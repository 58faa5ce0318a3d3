"""The run record: one module that writes, reads, deduplicates, resumes and classifies a run.

A run directory holds ``config.yaml`` (the resolved config), ``manifest.json`` (schema version,
package versions, git sha, seeds, hardware), the append-only ``trajectories.jsonl`` (one line per
finished episode), and, from Timely-Eval, ``calibration.jsonl``, ``errors.jsonl``,
``results.json`` and ``summary.md``. ``timely run``, Timely-Eval, the agent endpoint and the
training data write it through here; ``timely show``, the leaderboard, the dashboard,
``timely export``, the serving metrics and the training results read it through here, and name
an episode's outcome with the one vocabulary of :mod:`timely.runrecord.outcome`.

* :mod:`~timely.runrecord.trajectories`: file names, the episode key, the append-only
  :class:`EpisodeLog` (resume), :func:`append_trajectories` / :func:`iter_trajectories` (any
  trajectories file), :func:`read_run` (deduplicated, tolerant of a torn last line).
* :mod:`~timely.runrecord.tail`: :class:`TailReader`, for viewers that poll a live run.
* :mod:`~timely.runrecord.outcome`: :func:`classify` / :func:`outcome` and :data:`OUTCOMES`.
* :mod:`~timely.runrecord.manifest`: :func:`write_run_record` (``config.yaml``, manifest).
"""

from __future__ import annotations

from timely.runrecord.manifest import git_sha, package_versions, write_run_record
from timely.runrecord.outcome import (
    OUTCOME_ALIASES,
    OUTCOMES,
    Outcome,
    classify,
    graded,
    outcome,
    parse_outcome,
)
from timely.runrecord.tail import TailLine, TailReader, file_stamp
from timely.runrecord.trajectories import (
    CALIBRATION,
    CONFIG,
    ERRORS,
    MANIFEST,
    RESULTS,
    SUMMARY,
    TRAJECTORIES,
    EpisodeLog,
    append_error,
    append_trajectories,
    done_keys,
    episode_key,
    is_calibration,
    iter_trajectories,
    read_manifest,
    read_run,
    seal_tail,
    trajectories_file,
    unique_episodes,
)

__all__ = [
    "CALIBRATION",
    "CONFIG",
    "ERRORS",
    "MANIFEST",
    "OUTCOMES",
    "OUTCOME_ALIASES",
    "RESULTS",
    "SUMMARY",
    "TRAJECTORIES",
    "EpisodeLog",
    "Outcome",
    "TailLine",
    "TailReader",
    "append_error",
    "append_trajectories",
    "classify",
    "done_keys",
    "episode_key",
    "file_stamp",
    "git_sha",
    "graded",
    "is_calibration",
    "iter_trajectories",
    "outcome",
    "package_versions",
    "parse_outcome",
    "read_manifest",
    "read_run",
    "seal_tail",
    "trajectories_file",
    "unique_episodes",
    "write_run_record",
]
