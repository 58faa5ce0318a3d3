"""``games/jericho-v1``: classic interactive fiction (Zork and friends) from game files you supply.

The reference release evaluates on Jericho's games; their files are not redistributable, so
nothing ships here. Pass ``rom=`` a Z-machine game file, or a directory of them, that Jericho
fully supports (only those have the score and walkthrough bindings scoring and the oracle need);
the tool server must be able to read the same path. The tools are the reference release's
(``step``, ``get_available_actions``, ``get_score``, ``get_max_score``, ``end_game``), and
``configs/latency/jericho-reference.yaml`` reproduces its per-call costs.

With a directory, each file belongs to one split by a hash of its name, so train and test never
share a game; seed ``i`` plays the ``i``-th file of the split (modulo their number). A single file
is in both splits: one game cannot be split. ``jericho`` is an optional dependency, imported
only when an instance is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from timely.errors import TaskError
from timely.rng import derive_seed
from timely.task import Split, register_task
from timely_eval.tasks.games.base import (
    ANSWER_HELP,
    TOOLS_HELP,
    GameTask,
    Move,
    check_level,
    check_split,
)
from timely_tools.games.jericho_game import ROM_SUFFIXES, rom_info

NO_ROM = (
    "games/jericho-v1 needs rom=<a Z-machine game file, or a directory of them> that Jericho "
    "supports (e.g. zork1.z5); no game files ship with this project"
)


def rom_split(path: Path) -> Split:
    """The split a game file of a directory belongs to (hash parity of its file name)."""
    return "train" if derive_seed("timely-jericho-split", path.name) % 2 == 0 else "test"


def roms_for(rom: str | Path, split: Split) -> list[Path]:
    """The game files ``rom`` names for ``split`` (a file: itself; a directory: its half).

    Raises:
        TaskError: no such path, no game files, or none in this split.
    """
    path = Path(rom).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TaskError(f"no game file or directory at {str(path)!r}; {NO_ROM}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in ROM_SUFFIXES and p.is_file())
    if not files:
        raise TaskError(f"no game files ({', '.join(ROM_SUFFIXES)}) in {str(path)!r}")
    mine = [p for p in files if rom_split(p) == split]
    if not mine:
        names = ", ".join(p.name for p in files)
        raise TaskError(
            f"none of the game files in {str(path)!r} ({names}) falls in the {split} split; "
            "add more files, or pass one file to play it in both splits"
        )
    return mine


@register_task(
    "games/jericho-v1", help="Classic text adventures from game files you supply (needs jericho)."
)
@register_task("games/jericho", help="Alias of the latest games/jericho version (v1).")
class JerichoTask(GameTask):
    """A Jericho-supported game file.

    Args:
        seed: the episode seed: which file of the split's files (modulo their number).
        split: "train" or "test".
        difficulty: only 1 (a game is as hard as it is).
        rom: a game file or a directory of game files (required).

    Raises:
        TaskError: no ``rom``, an unreadable or unsupported file, or jericho is not installed.
    """

    task_id: ClassVar[str] = "games/jericho-v1"
    requires_options: ClassVar[bool] = True
    requires_extra: ClassVar[str | None] = "jericho"
    path_options: ClassVar[frozenset[str]] = frozenset({"rom"})  # a game file or directory

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        rom: str | Path | None = None,
    ) -> None:
        split = check_split(split)
        level = check_level(self.task_id, difficulty, 1, 1)
        if rom is None:
            raise TaskError(NO_ROM)
        files = roms_for(rom, split)
        path = files[int(seed) % len(files)].resolve()
        try:
            info = rom_info(path)
        except (ImportError, ValueError) as exc:
            raise TaskError(f"{self.task_id}: {exc}") from None
        self.moves: list[Move] = [("step", {"action": c}) for c in info.walkthrough]
        self.max_score = info.max_score
        self.new_game = {"game": "jericho", "rom": str(path)}
        prompt = (
            f"You are playing {info.name}, a classic text adventure. Explore, solve its puzzles "
            f"and score as many points as you can (the maximum is {info.max_score}).\n\n"
            f"You act only through the game tools: {TOOLS_HELP['reference']}. {ANSWER_HELP}"
        )
        self.spec = self._make_spec(
            seed=int(seed),
            split=split,
            difficulty=level,
            prompt=prompt,
            tool_set="reference",
            metadata={"rom": path.name},
        )
