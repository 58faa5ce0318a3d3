"""Progress of long commands (eval, data, training): one place for how it is shown.

On a terminal it is rich's live bar. When the stream is not a terminal (CI logs, ``make demo >
log``, nohup) rich draws nothing until the end, so a 30-minute run would look dead; there it is
a plain line such as ``eval: 120/648 episodes (18%) elapsed 3m12s`` at most every ``every_s``
seconds of wall time, and a last one at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from timely.clock import wall_seconds

DEFAULT_EVERY_S = 10.0


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Bar:
    """One counter of a :class:`ProgressDisplay` (a phase, a split, the steps of a run)."""

    def __init__(self, display: ProgressDisplay, label: str, total: int, done: int, unit: str):
        self.display, self.label, self.unit = display, label, unit
        self.total, self.done = total, done
        self.note = ""
        self.started = display.clock()
        self.shown = self.started  # when the last plain line was printed
        self.dirty = False
        self.job: Any = None
        if display.live is not None:
            self.job = display.live.add_task(label, total=max(total, 1), completed=done, note="")

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """Count ``n`` more done (and replace the note, when given)."""
        self.update(self.done + n, note=note)

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """Set how much is done (of ``total``, when it changes) and the note."""
        self.done = done
        self.total = self.total if total is None else total
        self.note = self.note if note is None else note
        self.display.show(self)

    def line(self) -> str:
        """The plain line, e.g. ``eval: 120/648 episodes (18%) elapsed 3m12s · note``."""
        pct = f" ({100 * self.done // self.total}%)" if self.total > 0 else ""
        unit = f" {self.unit}" if self.unit else ""
        text = f"{self.label}: {self.done}/{self.total}{unit}{pct} elapsed "
        text += _elapsed(self.display.clock() - self.started)
        return text + (f" · {self.note}" if self.note else "")


class ProgressDisplay:
    """Live bars on a terminal, rate-limited plain lines elsewhere; nothing when disabled.

    Use as a context manager; :meth:`bar` adds a counter. Plain lines are printed through
    ``console`` (so they go where its bars would have gone).

    Args:
        console: where to show progress (default: a console on stderr).
        enabled: ``False`` shows nothing (``--quiet``, ``progress=False``).
        every_s: the least wall seconds between two plain lines of one bar.
        clock: the wall reading in seconds (injectable for tests).
        transient: on a terminal, remove the bars when done.
        live: force live bars (``True``) or plain lines (``False``); default: the console's
            ``is_terminal``.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        enabled: bool = True,
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = wall_seconds,
        transient: bool = False,
        live: bool | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled, self.every_s, self.clock = enabled, every_s, clock
        self.bars: list[Bar] = []
        self.live: Any = None
        if enabled and (self.console.is_terminal if live is None else live):
            from rich import progress as rp

            self.live = rp.Progress(
                rp.SpinnerColumn(),
                rp.TextColumn("[bold]{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                rp.TextColumn("{task.fields[note]}"),
                console=self.console,
                transient=transient,
            )

    def __enter__(self) -> ProgressDisplay:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
        elif self.enabled:
            for bar in self.bars:
                if bar.dirty:
                    self._print(bar)

    def bar(self, label: str, total: int, *, done: int = 0, unit: str = "") -> Bar:
        """A new counter, ``done`` of ``total`` already (e.g. skipped on resume)."""
        new = Bar(self, label, total, done, unit)
        self.bars.append(new)
        return new

    def show(self, bar: Bar) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(bar.job, completed=bar.done, total=max(bar.total, 1), note=bar.note)
            return
        bar.dirty = True
        if self.clock() - bar.shown >= self.every_s or bar.done >= bar.total:
            self._print(bar)

    def _print(self, bar: Bar) -> None:
        self.console.print(bar.line(), markup=False, highlight=False, soft_wrap=True)
        bar.shown, bar.dirty = self.clock(), False
