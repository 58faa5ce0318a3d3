"""A run's ``trajectories.jsonl``: written append-only, read back whole, deduplicated, resumed.

Every program that plays episodes appends one JSON line per finished trajectory, flushed at
once, so a killed run loses only the episodes in flight. Its last line may then be torn (the
process died mid-write): readers skip it with a warning instead of failing, and a writer cuts it
off before appending, so the next record starts on a line of its own.

An episode is identified by its **episode key**: ``metadata['key']`` (Timely-Eval, hashed from
task, seed, policy, latency, budget and settings), else ``metadata['run_id']`` (the agent
endpoint). A key written twice (a resumed run that replayed an episode in flight, a chunk a Ray
worker returned twice) is one episode, and **the first record wins**: resume skips a key as soon
as one record of it exists, so the first is the one every report already counted; a reader that
tails the file (the dashboard) never has to take back a row it showed. Records without a key
(``timely run``, expert data) are all kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from timely.errors import ConfigError
from timely.types import Trajectory

log = logging.getLogger("timely.runrecord")

TRAJECTORIES = "trajectories.jsonl"  # every finished episode, one JSON line each, append-only
CALIBRATION = "calibration.jsonl"  # Timely-Eval's unconstrained calibration episodes
ERRORS = "errors.jsonl"  # Timely-Eval episodes that raised instead of ending
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
RESULTS = "results.json"
SUMMARY = "summary.md"

_MAKE_ONE = (
    "pass a directory written by `timely run`, `timely eval --out DIR` or `timely serve --out "
    f"DIR`, or a {TRAJECTORIES} file"
)


def episode_key(metadata: Mapping[str, Any] | None) -> str | None:
    """The episode key of a record's metadata (see the module docstring); None if it has none.

    Args:
        metadata: a trajectory's ``metadata`` (a Trajectory's or a raw JSON record's).
    """
    if not isinstance(metadata, Mapping):
        return None
    for field in ("key", "run_id"):
        value = metadata.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def trajectories_file(path: str | Path) -> Path:
    """The trajectories file of a run directory (or ``path`` itself when it is a file).

    Raises:
        ConfigError: ``path`` is not a run directory; the message says what to pass instead.
    """
    path = Path(path)
    if path.is_file():
        return path
    file = path / TRAJECTORIES
    if file.is_file():
        return file
    raise ConfigError(f"{path} holds no {TRAJECTORIES}: {_not_a_run(path)}")


def _not_a_run(path: Path) -> str:
    if not path.exists():
        return f"no such file or directory; {_MAKE_ONE}"
    try:
        runs = sorted(c.name for c in path.iterdir() if (c / TRAJECTORIES).is_file())
    except OSError as exc:  # not a directory, or not readable
        return f"cannot look inside ({exc}); {_MAKE_ONE}"
    if runs:
        more = f" (+{len(runs) - 5} more)" if len(runs) > 5 else ""
        return f"it is a folder of runs ({', '.join(runs[:5])}{more}); pass one of them"
    if (path / RESULTS).is_file() and not (path / CALIBRATION).is_file():
        return (
            "it looks like a `timely leaderboard` report (results.json only); pass the run "
            "directories it was made from"
        )
    if (path / CALIBRATION).is_file():
        return "the run stopped during budget calibration; resume it with the same `timely eval`"
    return f"it is not a run directory; {_MAKE_ONE}"


def iter_trajectories(file: str | Path) -> Iterator[Trajectory]:
    """Every record of a trajectories file in order, repeats included.

    A last line without its newline that does not parse is a write torn by a killed process:
    it is skipped with a warning. Any other line that is not a trajectory is an error.

    Raises:
        ConfigError: a complete line is not a trajectory (the file is not a trajectories file,
            or a line in it is damaged); the message says what to do.
    """
    file = Path(file)
    parsed = 0
    with file.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                traj = Trajectory.model_validate_json(line)
            except ValueError as exc:
                if not line.endswith(b"\n"):
                    log.warning(
                        "%s:%d: skipped an incomplete last line (%d bytes): its writer was "
                        "killed mid-line or is still writing it",
                        file,
                        lineno,
                        len(line),
                    )
                    return
                first = str(exc).splitlines()[0]
                if parsed == 0:
                    raise ConfigError(
                        f"{file} is not a trajectories file (line {lineno}: {first}); {_MAKE_ONE}"
                    ) from None
                raise ConfigError(
                    f"{file}:{lineno} is not a trajectory ({first}); delete that line or move "
                    "the file aside, then try again"
                ) from None
            parsed += 1
            yield traj


def unique_episodes(trajectories: Iterable[Trajectory]) -> list[Trajectory]:
    """Each episode once, in file order: the first record of a key wins, unkeyed ones all stay."""
    seen: set[str] = set()
    out = []
    for traj in trajectories:
        key = episode_key(traj.metadata)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(traj)
    return out


def is_calibration(traj: Trajectory) -> bool:
    """A Timely-Eval budget-calibration episode: it measures the policy, it is not eval data."""
    return traj.metadata.get("phase") == "calibration"


def read_run(path: str | Path, *, calibration: bool = False) -> list[Trajectory]:
    """The episodes of a run directory (or a trajectories file), each episode key once.

    Args:
        path: a run directory or its trajectories file.
        calibration: keep budget-calibration episodes (a ``calibration.jsonl`` given directly
            holds only those); reports, exports and comparisons leave them out.

    Raises:
        ConfigError: ``path`` is not a run directory, or a line is damaged.
    """
    trajs = unique_episodes(iter_trajectories(trajectories_file(path)))
    return trajs if calibration else [t for t in trajs if not is_calibration(t)]


def done_keys(file: str | Path) -> set[str]:
    """The episode keys already recorded in a trajectories file: what a resume skips."""
    file = Path(file)
    if not file.exists():
        return set()
    return {k for t in iter_trajectories(file) if (k := episode_key(t.metadata)) is not None}


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``manifest.json`` ({} when it has none or it is not JSON)."""
    file = Path(run_dir) / MANIFEST
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class EpisodeLog:
    """An append-only trajectories file and the episodes it holds, by key.

    Opening it reads what is there (unless ``load=False``): :attr:`records` holds the first
    record of every key, which is what a resume skips. Every :meth:`append` is one line, written
    and flushed under a lock (concurrent episodes of one process share a log), so a killed
    process loses at most the episodes in flight. The first append cuts a torn last line off.

    Args:
        path: the JSONL file (created with its folder on the first append).
        load: read the existing records (a writer that never resumes, such as the agent
            endpoint, skips the read).
    """

    def __init__(self, path: str | Path, *, load: bool = True) -> None:
        self.path = Path(path)
        self.records: dict[str, Trajectory] = {}
        self.duplicates = 0  # records of a key seen before (kept on disk, not in records)
        self._fh: IO[bytes] | None = None
        self._lock = threading.Lock()
        if load and self.path.exists():
            for traj in iter_trajectories(self.path):
                self._index(traj)

    def _index(self, traj: Trajectory) -> None:
        key = episode_key(traj.metadata)
        if key is None:
            return
        if key in self.records:
            self.duplicates += 1
        else:
            self.records[key] = traj

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def append(self, traj: Trajectory) -> None:
        """Write one trajectory as one line and flush it."""
        line = traj.model_dump_json().encode() + b"\n"
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                seal_tail(self.path)
                self._fh = self.path.open("ab")
            self._fh.write(line)
            self._fh.flush()
            self._index(traj)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def append_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> None:
    """Append trajectories to a trajectories file once (a writer that keeps no log open)."""
    with EpisodeLog(path, load=False) as episodes:
        for traj in trajectories:
            episodes.append(traj)


def append_error(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one episode that could not be played at all (``errors.jsonl``) as one line.

    Args:
        path: the errors file (created with its folder on the first append).
        record: what was planned and why it failed; values JSON cannot hold are written as text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(json.dumps(record, default=str).encode() + b"\n")


def seal_tail(path: Path, block: int = 1 << 16) -> int:
    """Make a file end at a line boundary before appending to it; returns bytes removed.

    A last line without its newline is either a complete record whose newline was lost (it is
    kept and the newline added) or a torn write (it is cut off with a warning).
    """
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, 2)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:  # scan back block by block for the last complete line
            start = max(0, pos - block)
            f.seek(start)
            nl = f.read(pos - start).rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.seek(keep)
        tail = f.read()
        try:
            Trajectory.model_validate_json(tail)
        except ValueError:
            f.truncate(keep)
            log.warning("%s: cut off a torn last line (%d bytes)", path, size - keep)
            return size - keep
        f.seek(size)
        f.write(b"\n")
        return 0
