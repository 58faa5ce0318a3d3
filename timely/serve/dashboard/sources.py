"""What the dashboard's directories hold, found by looking, and kept fresh as files grow.

A directory given to the dashboard is one of:

* a **run** directory: ``trajectories.jsonl`` (``timely run``, ``timely eval``, the agent
  endpoint's ``--out``), maybe with ``results.json`` from ``timely eval`` and its report in
  ``plots/`` (``results.json`` and PNGs from ``timely leaderboard``);
* a **report** directory: ``results.json`` and PNG plots from ``timely leaderboard``; the runs it
  names are shown too when their directories still exist;
* a folder holding several of those (two levels deep at most).

Files are re-read only when their size, mtime or inode changes, and an append-only
``trajectories.jsonl`` is followed by the run record's :class:`~timely.runrecord.TailReader`
from where the last read stopped, so polling the page costs a few ``stat`` calls. A line still
being written (no newline yet) waits for the next read.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timely.runrecord import RESULTS, TRAJECTORIES, TailLine, TailReader, episode_key, file_stamp
from timely.serve.dashboard import records

MAX_DEPTH = 2  # levels below a given directory searched for runs and reports
MAX_ENTRIES = 2000  # directory entries looked at per scan: a huge tree is not walked whole
_PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")


class JsonFile:
    """A JSON file parsed again only when it changes; a broken one reports why."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.value: Any = None
        self.problem: str | None = None

    def read(self) -> Any:
        stamp = file_stamp(self.path)
        if stamp != self._stamp:
            self._stamp, self.value, self.problem = stamp, None, None
            if stamp is not None:
                try:
                    self.value = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    self.problem = f"{self.path}: unreadable JSON ({exc}); rewrite the file"
        return self.value

    @property
    def version(self) -> str:
        return str(self._stamp)


class EpisodeFile:
    """An append-only trajectories.jsonl: episode rows in memory, full records left on disk.

    Each row keeps its line's byte offset, so an episode's detail is one seek and one line's
    parse, and memory stays small for runs whose records carry long conversations. Episodes are
    deduplicated by the run record's episode key, the first record winning (as on resume).
    """

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self._tail = TailReader(path)
        self._clear()

    def _clear(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # episode id -> row, in file order
        self._spans: dict[str, tuple[int, int]] = {}  # episode id -> (offset, length)
        self._keys: set[str] = set()
        self.problems: list[str] = []
        self.skipped = 0  # duplicate keys (a resumed run) and calibration episodes

    @property
    def torn_tail(self) -> bool:
        return self._tail.torn_tail

    def refresh(self) -> None:
        """Read what was appended since the last call (everything if the file was replaced)."""
        try:
            lines = self._tail.read()
        except OSError as exc:
            self.problems = [f"{self.path}: cannot read ({exc})"]
            return
        if self._tail.restarted or self._tail.stamp is None:
            self._clear()  # replaced, truncated or removed: what was read is gone
        for line in lines:
            self._add(line)

    def _add(self, line: TailLine) -> None:
        if not line.data.strip():
            return
        try:
            record = records.parse_line(line.data)
            if isinstance(record.get("metadata"), dict) and (
                record["metadata"].get("phase") == "calibration"
            ):
                self.skipped += 1  # budget calibration, not eval: the leaderboard skips it too
                return
            key = episode_key(record.get("metadata"))
            if key is not None and key in self._keys:
                self.skipped += 1  # the first record of a key wins, as when a run resumes
                return
            episode_id = f"{self.source}:{records.episode_id(record, line.number)}"
            row = records.summarize(record, episode_id, self.source)
        except records.NotATrajectory as exc:
            if len(self.problems) < 20:
                self.problems.append(f"{self.path}:{line.number}: not a trajectory: {exc}")
            return
        if key is not None:
            self._keys.add(key)
        self.rows[episode_id] = row
        self._spans[episode_id] = (line.offset, len(line.data))

    def record(self, episode_id: str) -> dict[str, Any] | None:
        """The full record of one episode, read back from the file; None if unknown."""
        span = self._spans.get(episode_id)
        if span is None:
            return None
        try:
            return records.parse_line(self._tail.read_span(*span))
        except (OSError, records.NotATrajectory):
            return None  # replaced under us: the next refresh re-reads it

    @property
    def version(self) -> str:
        return str(self._tail.stamp)


@dataclass
class Source:
    """One run or report the dashboard shows."""

    id: str
    name: str
    path: Path
    kind: str  # "run" | "report"
    episodes: EpisodeFile | None = None
    results: JsonFile | None = None
    report_dir: Path | None = None  # where the PNG plots are
    linked_from: str | None = None  # the report that named this run

    def plots(self) -> list[str]:
        if self.report_dir is None:
            return []
        try:
            names = sorted(p.name for p in self.report_dir.iterdir() if p.is_file())
        except OSError:
            return []
        # The headline plot (score against tool latency) first, as in leaderboard.md.
        names.sort(key=lambda n: (not n.startswith("score_vs_latency"), n))
        return [n for n in names if _PLOT_NAME.match(n)]


def _kind(path: Path) -> tuple[str, Path | None, Path | None] | None:
    """(kind, results.json, plot dir) of a directory, or None if it is neither."""
    if (path / TRAJECTORIES).is_file():
        report = path / "plots"
        if (report / RESULTS).is_file():
            return "run", report / RESULTS, report  # the run's own leaderboard
        return "run", (path / RESULTS) if (path / RESULTS).is_file() else None, None
    if (path / RESULTS).is_file():
        return "report", path / RESULTS, path
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "dir"


@dataclass
class Sources:
    """The dashboard's directories and what was found in them, rescanned on every refresh."""

    dirs: list[Path]
    found: dict[Path, Source] = field(default_factory=dict)  # resolved path -> source
    problems: list[str] = field(default_factory=list)
    # Held by each API request for its whole answer: rows must not change while one is read.
    lock: threading.RLock = field(default_factory=threading.RLock)

    def refresh(self) -> list[Source]:
        """Look again (new runs appear, files grow) and return the sources in display order."""
        with self.lock:
            seen: dict[Path, tuple[str, str, str | None]] = {}
            self.problems = []
            budget = [MAX_ENTRIES]
            for root in self.dirs:
                if not root.is_dir():
                    self.problems.append(f"{root}: no such directory (yet)")
                    continue
                self._scan(root, root.name or str(root), 0, seen, budget)
            for path in list(seen):
                src = self._source(path, *seen[path])
                if src.kind == "report" and src.results is not None:
                    self._link_runs(src, seen)
            for path in list(self.found):
                if path not in seen:
                    del self.found[path]  # moved or deleted
            out = [self._source(path, *seen[path]) for path in seen]
            for src in out:
                if src.episodes is not None:
                    src.episodes.refresh()
                if src.results is not None:
                    src.results.read()
            return out

    def _scan(
        self,
        path: Path,
        name: str,
        depth: int,
        seen: dict[Path, tuple[str, str, str | None]],
        budget: list[int],
    ) -> None:
        kind = _kind(path)
        if kind is not None:
            seen.setdefault(path.resolve(), (name, kind[0], None))
            return
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir())
        except OSError as exc:
            self.problems.append(f"{path}: cannot list ({exc})")
            return
        for child in children:
            if budget[0] <= 0:
                self.problems.append(f"{path}: more than {MAX_ENTRIES} folders; give run dirs")
                return
            budget[0] -= 1
            if not child.name.startswith("."):
                # Below a given folder a source is named by its path from that folder.
                sub = f"{name}/{child.name}" if depth else child.name
                self._scan(child, sub, depth + 1, seen, budget)

    def _link_runs(self, report: Source, seen: dict[Path, tuple[str, str, str | None]]) -> None:
        """Show the runs a report was made from, where their directories still exist."""
        results = report.results.read() if report.results else None
        runs = results.get("runs") if isinstance(results, dict) else None
        for run in runs if isinstance(runs, list) else []:
            raw = run.get("path") if isinstance(run, dict) else None
            if not isinstance(raw, str):
                continue
            path = Path(raw)
            if not path.is_absolute():
                # A relative path was relative to where `timely leaderboard` ran: most often the
                # project root, the current directory or a folder just above the report.
                anchors = [Path.cwd(), report.path, *list(report.path.parents)[:3]]
                path = next((a / raw for a in anchors if (a / raw / TRAJECTORIES).is_file()), path)
            if (path / TRAJECTORIES).is_file():
                seen.setdefault(
                    path.resolve(), (str(run.get("name") or path.name), "run", report.id)
                )

    def _source(self, path: Path, name: str, kind: str, linked_from: str | None) -> Source:
        src = self.found.get(path)
        if src is not None and src.kind == kind:
            return src
        taken = {s.id for p, s in self.found.items() if p != path}
        base = _slug(name)
        sid, i = base, 2
        while sid in taken:
            sid, i = f"{base}-{i}", i + 1
        layout = _kind(path)
        results_file, report_dir = (layout[1], layout[2]) if layout else (None, None)
        src = Source(
            id=sid,
            name=name,
            path=path,
            kind=kind,
            episodes=EpisodeFile(path / TRAJECTORIES, sid) if kind == "run" else None,
            results=JsonFile(results_file) if results_file else None,
            report_dir=report_dir,
            linked_from=linked_from,
        )
        self.found[path] = src
        return src

    def version(self, sources: list[Source]) -> str:
        """Changes whenever anything shown changes: the page polls it to know when to reload."""
        parts = [
            f"{s.id}|{s.episodes.version if s.episodes else ''}|"
            f"{s.results.version if s.results else ''}|{','.join(s.plots())}"
            for s in sources
        ]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]
