"""timely.progress: plain, rate-limited lines off a terminal; nothing when disabled."""

from __future__ import annotations

import io

from rich.console import Console

from timely.progress import ProgressDisplay


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_off_a_terminal_lines_are_rate_limited_and_the_last_is_printed():
    console, out = plain_console()
    clock = FakeClock()
    with ProgressDisplay(console, every_s=10, clock=clock) as display:
        bar = display.bar("eval", 648, unit="episodes")
        for _ in range(120):  # 1 s apart: a line every 10 s, not every episode
            clock.t += 1
            bar.advance(note="failed 0")
        bar.update(130)  # within 10 s of the last line: only the end shows it
    lines = out.getvalue().splitlines()
    assert len(lines) == 12 + 1
    assert lines[0] == "eval: 10/648 episodes (1%) elapsed 10s · failed 0"
    assert lines[-2] == "eval: 120/648 episodes (18%) elapsed 2m00s · failed 0"
    assert lines[-1].startswith("eval: 130/648 episodes (20%)")


def test_a_finished_bar_prints_its_last_line_once():
    console, out = plain_console()
    with ProgressDisplay(console, every_s=1e9, clock=FakeClock()) as display:
        bar = display.bar("SFT", 3, done=1, unit="steps")
        bar.advance()
        bar.advance(note="loss 0.1")
    assert out.getvalue().splitlines() == ["SFT: 3/3 steps (100%) elapsed 0s · loss 0.1"]


def test_disabled_prints_nothing_on_or_off_a_terminal():
    for terminal in (False, True):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=80)
        with ProgressDisplay(console, enabled=False, every_s=0) as display:
            bar = display.bar("experts", 5)
            for _ in range(5):
                bar.advance(note="x")
        assert out.getvalue() == ""


def test_on_a_terminal_the_live_bar_is_drawn_not_plain_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with ProgressDisplay(console, every_s=0) as display:
        bar = display.bar("eval", 4)
        for _ in range(4):
            bar.advance()
    assert "4/4" in out.getvalue()
    assert "eval: " not in out.getvalue()
