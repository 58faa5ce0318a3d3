"""What every game the tool server hosts shares: the session contract and the score line.

A game lives in one tool-server session (``ctx.state["game"]``), so concurrent episodes never
share state and the server closes it when the session ends. Every observation a game tool
returns ends with a machine-readable line ``[score P/M]``: the task scores an episode from the
last such line in the trajectory's tool results, which keeps ``Task.score`` a pure function of
the trajectory (the agent cannot write tool results, so it cannot forge the line). Text the
agent typed is never echoed raw, so it cannot smuggle a fake score line in either.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

SCORE_LINE_RE = re.compile(r"^\[score (\d+)/(\d+)\]$")
_GAME_OVER_HINT = "Reply without calling a tool to finish the episode."
_MAX_ECHO_CHARS = 60


def score_line(points: int, max_points: int) -> str:
    """The machine-readable last line of every game observation."""
    return f"[score {points}/{max_points}]"


def parse_score_line(text: str) -> tuple[int, int] | None:
    """``(points, max_points)`` from the last line of an observation, or None if it has none."""
    lines = text.rstrip().splitlines()
    if not lines:
        return None
    match = SCORE_LINE_RE.match(lines[-1].strip())
    return (int(match[1]), int(match[2])) if match else None


def quote(text: str) -> str:
    """Agent text made safe to show inside an observation: one line, no brackets, bounded."""
    flat = " ".join(str(text).split())
    flat = flat.replace("[", "(").replace("]", ")")
    if len(flat) > _MAX_ECHO_CHARS:
        flat = flat[: _MAX_ECHO_CHARS - 3] + "..."
    return f"'{flat}'"


def win_message(code: str | None) -> str:
    """What a game says when the agent completes it (the code proves the win to ``score``)."""
    proof = f" Completion code: {code}." if code else ""
    return f"*** You have won! ***{proof} {_GAME_OVER_HINT}"


class GameSession(ABC):
    """One running game: a text command in, a text observation out, and a score.

    Subclasses are the engines (our treasure world, TextWorld, Jericho). ``close`` frees what the
    game holds; the tool server calls it when the session ends.

    Attributes:
        kind: the engine name, as in ``game_new``.
        code: the completion code revealed on winning (set by ``game_new``).
    """

    kind: str = ""
    code: str | None = None

    @property
    @abstractmethod
    def score(self) -> int:
        """Points earned so far."""

    @property
    @abstractmethod
    def max_score(self) -> int:
        """Points available in the whole game."""

    @property
    @abstractmethod
    def won(self) -> bool:
        """Whether the game was completed."""

    @property
    @abstractmethod
    def over(self) -> bool:
        """Whether the game accepts no more moves (won, lost or ended)."""

    @abstractmethod
    def step(self, command: str) -> str:
        """Play one text command (``"go north"``) and return the observation, without score line."""

    @abstractmethod
    def available_actions(self) -> list[str]:
        """Commands that make sense now (may be empty when the engine cannot tell)."""

    @abstractmethod
    def end(self) -> None:
        """Stop the game (the agent gave up); the score stays what it is."""

    def close(self) -> None:  # noqa: B027 - engines without resources have nothing to free
        """Free interpreter resources; the tool server calls it when the session ends."""

    def observe(self, text: str) -> str:
        """``text`` with the score line appended: what a game tool returns."""
        body = text.strip() or "Nothing happens."
        return f"{body}\n{score_line(self.score, self.max_score)}"

    def over_message(self) -> str:
        """The observation for any move after the game is over."""
        how = "you won" if self.won else "it has ended"
        return (
            f"The game is over ({how}, with {self.score} of {self.max_score} points). "
            f"{_GAME_OVER_HINT}"
        )
