"""Following a growing trajectories file: read only what was appended since the last look.

A viewer that polls a live run (the dashboard) must not re-read megabytes of conversations on
every poll. :class:`TailReader` remembers the file's identity and how far it has read: an
unchanged file costs one ``stat``, a grown one is read from where the last read stopped, and a
replaced or truncated one is read again from the start (the caller is told to drop what it
holds). A last line without its newline is still being written: it waits for the next read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Stamp = tuple[int, int, int]  # (inode, size, mtime_ns)


def file_stamp(path: Path) -> Stamp | None:
    """What changes when a file is written, replaced or removed (None: it does not exist)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class TailLine:
    """One complete line of the file.

    Attributes:
        number: the line's number in the file, from 1.
        offset: the byte offset where it starts (for :meth:`TailReader.read_span`).
        data: its bytes, without the newline.
    """

    number: int
    offset: int
    data: bytes


class TailReader:
    """Reads the complete lines appended to a file since the previous :meth:`read`.

    Args:
        path: the file to follow (it may not exist yet).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: Stamp | None = None
        self.restarted = False  # the last read started over: drop what earlier reads gave
        self.torn_tail = False  # the file ends in a line still being written
        self._ino: int | None = None
        self._offset = 0
        self._lines = 0

    def read(self) -> list[TailLine]:
        """The complete lines written since the last call (all of them after a restart).

        Raises:
            OSError: the file exists but cannot be read (the next call tries again).
        """
        self.restarted = False
        stamp = file_stamp(self.path)
        if stamp == self.stamp:
            return []
        if stamp is None:  # removed: whatever was read is gone with it
            self._start_over(None)
            self.stamp = None
            return []
        ino, size, _ = stamp
        fresh = ino != self._ino or size < self._offset  # replaced or truncated
        offset = 0 if fresh else self._offset
        with self.path.open("rb") as f:  # state changes only once the read succeeded
            f.seek(offset)
            data = f.read(size - offset)
        if fresh:
            self._start_over(ino)
        end = data.rfind(b"\n") + 1
        self.torn_tail = end < len(data)
        out, pos = [], 0
        while pos < end:
            nl = data.index(b"\n", pos)
            self._lines += 1
            out.append(TailLine(self._lines, self._offset + pos, data[pos:nl]))
            pos = nl + 1
        self._offset += end
        self.stamp = stamp
        return out

    def _start_over(self, ino: int | None) -> None:
        self.restarted = self._offset > 0 or self._lines > 0  # only if a read gave something
        self._ino, self._offset, self._lines, self.torn_tail = ino, 0, 0, False

    def read_span(self, offset: int, length: int) -> bytes:
        """The bytes of one line read earlier (a viewer keeps offsets, not whole records).

        Raises:
            OSError: the file cannot be read.
        """
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)
