"""Classic interactive fiction through Jericho, for Z-machine game files the user supplies.

The reference release plays Jericho's games (Zork and friends). No package ships those game
files, so this module only plays files a user points at: ``rom`` is a path on the machine that
runs the tool server (and the task, which reads the walkthrough). Only games Jericho fully
supports are accepted, because only they have the score, max-score and walkthrough bindings a
scored, oracle-checked task needs. ``jericho`` is imported lazily: without it only these games
fail, with a message that says what to install.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timely_tools.games.common import InterpreterGame

INSTALL_HINT = (
    "Jericho games need the `jericho` package (pip install jericho; it builds a C interpreter, "
    "so it needs a C compiler) and a Z-machine game file you supply, e.g. rom=/path/zork1.z5"
)
ROM_SUFFIXES = (".z1", ".z2", ".z3", ".z4", ".z5", ".z6", ".z7", ".z8", ".zblorb", ".zlb", ".dat")


def require_jericho() -> Any:
    """The ``jericho`` module.

    Raises:
        ImportError: it is not installed; the message says how to install it.
    """
    try:
        import jericho
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return jericho


def check_rom(path: str | Path) -> Path:
    """``path`` as a game file, or a ValueError saying what is wrong with it."""
    rom = Path(path).expanduser()
    if not rom.is_file():
        raise ValueError(f"no game file at {str(rom)!r}; pass rom=<path to a .z3/.z5/.z8 file>")
    if rom.suffix.lower() not in ROM_SUFFIXES:
        raise ValueError(
            f"{rom.name!r} does not look like a Z-machine game file ({', '.join(ROM_SUFFIXES)})"
        )
    return rom


@dataclass(frozen=True)
class RomInfo:
    """What a task needs to know about a game file: its name, walkthrough and max score."""

    name: str
    walkthrough: tuple[str, ...]
    max_score: int


def _open(rom: Path) -> Any:
    jericho = require_jericho()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = jericho.FrotzEnv(str(rom))
    if not env.is_fully_supported:
        env.close()
        raise ValueError(
            f"{rom.name!r} is not a game Jericho fully supports (no score or walkthrough "
            "bindings), so it cannot be scored; use one of Jericho's supported games"
        )
    return env


def rom_info(path: str | Path) -> RomInfo:
    """Load a game file once and read its walkthrough and max score.

    Raises:
        ImportError: jericho is not installed.
        ValueError: not a game file, or not one Jericho supports.
    """
    rom = check_rom(path)
    env = _open(rom)
    try:
        return RomInfo(rom.stem, tuple(env.get_walkthrough()), int(env.get_max_score()))
    finally:
        env.close()


class JerichoGame(InterpreterGame):
    """A Jericho-supported game being played.

    Args:
        path: the game file.
        code: the completion code shown on winning.

    Raises:
        ImportError: jericho is not installed.
        ValueError: not a game file, or not one Jericho supports.
    """

    kind = "jericho"

    def __init__(self, path: str | Path, code: str | None = None) -> None:
        self.code = code
        self._lock = threading.Lock()
        self._env = _open(check_rom(path))
        self.intro, info = self._env.reset()
        self._score = int(info.get("score", 0))
        self._max = int(self._env.get_max_score())
        self._won = self._lost = self._ended = False

    def _move(self, text: str) -> str:
        obs, _, done, info = self._env.step(text)
        self._score = int(info.get("score", self._score))
        self._won = bool(self._env.victory())
        self._lost = bool(done and not self._won) or bool(self._env.game_over())
        return obs

    def available_actions(self) -> list[str]:
        with self._lock:
            if self.over:
                return []
            try:
                return sorted(self._env.get_valid_actions(use_parallel=False))
            except Exception:  # noqa: BLE001 - the analysis is best effort; moves still work
                return []

    def close(self) -> None:
        with self._lock:
            self._ended = True
            self._env.close()
