"""What every game the tool server hosts shares: the session contract and the score line.

A game lives in one tool-server session (``ctx.state["game"]``), so concurrent episodes never
share state and the server closes it when the session ends. Every observation a game tool
returns ends with a machine-readable line ``[score P/M]``: the task scores an episode from the
last such line in the trajectory's tool results, which keeps ``Task.score`` a pure function of
the trajectory (the agent cannot write tool results, so it cannot forge the line). Text the
agent typed is never echoed raw (:func:`quote`), and commands reach an interpreter only after
:func:`clean_command`, so no bracketed text of the agent's can appear in an observation either.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

SCORE_LINE_RE = re.compile(r"^\[score (\d+)/(\d+)\]$")
GAME_OVER_HINT = "Reply without calling a tool to finish the episode."
MAX_COMMAND_CHARS = 200
_MAX_ECHO_CHARS = 60


def score_line(points: int, max_points: int) -> str:
    """The machine-readable last line of every game observation."""
    return f"[score {max(0, int(points))}/{max(0, int(max_points))}]"


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


def clean_command(text: str) -> str:
    """A command as an interpreter may see it: lower case letters, digits, spaces, ' and -.

    Interactive-fiction parsers ignore case and punctuation anyway; dropping the rest means an
    interpreter that echoes words back can never echo a bracket, a newline or a score line.
    """
    kept = re.sub(r"[^a-z0-9'\- ]+", " ", str(text).lower())
    return " ".join(kept.split())[:MAX_COMMAND_CHARS]


def win_message(code: str | None) -> str:
    """What a game says when the agent completes it (the code proves the win to ``score``)."""
    proof = f" Completion code: {code}." if code else ""
    return f"*** You have won! ***{proof} {GAME_OVER_HINT}"


def verb_command(verb: str, args: dict[str, Any]) -> str:
    """The typed command a move tool stands for: ``("unlock", {...})`` -> ``"unlock X with K"``.

    Args:
        verb: a move tool name (look, go, take, drop, open, unlock, put, examine, inventory).
        args: its arguments.
    """
    a = {k: str(v) for k, v in args.items()}
    if verb == "go":
        return f"go {a.get('direction', '')}"
    if verb == "unlock":
        return f"unlock {a.get('target', '')} with {a.get('key', '')}"
    if verb == "put":
        return f"put {a.get('item', '')} {a.get('prep', 'on')} {a.get('target', '')}"
    if verb in ("take", "drop"):
        return f"{verb} {a.get('item', '')}"
    if verb in ("open", "examine"):
        return f"{verb} {a.get('target', '')}"
    return verb  # look, inventory


class GameSession(ABC):
    """One running game: a text command in, a text observation out, and a score.

    Subclasses are the engines (our treasure world, TextWorld, Jericho). ``close`` frees what the
    game holds; the tool server calls it when the session ends.

    Attributes:
        kind: the engine name, as in ``game_new``.
        code: the completion code revealed on winning (set by ``game_new``).
        blocking: whether moves block (an interpreter): the tools then run them in a thread.
    """

    kind: str = ""
    code: str | None = None
    blocking: bool = False

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

    def act(self, verb: str, args: dict[str, Any]) -> str:
        """Play one move tool (``go``, ``take``, ...); engines with one method per verb override.

        Args:
            verb: the move tool's name.
            args: its (schema-checked) arguments.
        """
        return self.step(verb_command(verb, args))

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
            f"{GAME_OVER_HINT}"
        )

    def end_message(self) -> str:
        """What ``end_game`` answers."""
        return f"You ended the game with {self.score} of {self.max_score} points. {GAME_OVER_HINT}"


class InterpreterGame(GameSession):
    """A game run by an interpreter (TextWorld, Jericho): the state and turn logic they share.

    Subclasses set ``_lock`` (moves are serialised through it), fill ``_max`` and the intro in
    ``__init__``, and implement ``_move(text)``: play one cleaned command on the interpreter,
    update ``_score``, ``_won`` and ``_lost``, and return its output.

    Attributes:
        lost_message: said after the output of the move that lost the game.
    """

    blocking = True
    lost_message = "The game has ended."
    _lock: Any
    _score = 0
    _max = 0
    _won = _lost = _ended = False

    @property
    def score(self) -> int:
        return max(0, self._score)

    @property
    def max_score(self) -> int:
        return self._max

    @property
    def won(self) -> bool:
        return self._won

    @property
    def over(self) -> bool:
        return self._won or self._lost or self._ended

    @abstractmethod
    def _move(self, text: str) -> str:
        """Play one cleaned, non-empty command; update the score and the won/lost flags."""

    def step(self, command: str) -> str:
        with self._lock:
            if self.over:
                return self.over_message()
            text = clean_command(command)
            if not text:
                return "Say what to do, e.g. 'look', 'inventory' or 'go north'."
            out = self._move(text)
            if self._won:
                return f"{out.strip()}\n{win_message(self.code)}"
            if self._lost:
                return f"{out.strip()}\n{self.lost_message} {GAME_OVER_HINT}"
            return out

    def end(self) -> None:
        self._ended = True
