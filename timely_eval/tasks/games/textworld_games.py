"""``games/textworld-v1``: games generated with TextWorld (what ``tw-make custom`` makes), offline.

TextWorld builds a house of rooms and a quest of ``quest_length`` moves, states the quest as its
objective, and compiles it to a Z-machine story; the walkthrough is the quest's own commands.
Difficulty d picks the world size, number of objects and quest length from :data:`LEVELS`.
Games are cached on disk (see :mod:`timely_tools.games.textworld_game`), so only the first use of an
instance pays the generation (about 0.5-5 s).

Splits are disjoint by construction: train instances use even TextWorld seeds and test
instances odd ones, and the generator is deterministic per seed, so no game is in both.
TextWorld is an optional dependency, imported only when an instance is built.
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
from timely_tools.games.textworld_game import TextWorldOptions, generate_game

# difficulty -> (world size in rooms, objects, quest length in moves)
LEVELS: dict[int, tuple[int, int, int]] = {
    1: (3, 6, 3),
    2: (5, 10, 5),
    3: (8, 15, 8),
    4: (12, 20, 12),
}


def textworld_seed(split: Split, seed: int, level: int) -> int:
    """The TextWorld seed of an instance: even for train, odd for test (below 2**31)."""
    base = derive_seed("games/textworld", level, seed) % 2**30
    return 2 * base + (split == "test")


@register_task("games/textworld-v1", help="Text games generated offline with TextWorld (tw-make).")
@register_task("games/textworld", help="Alias of the latest games/textworld version (v1).")
class TextWorldTask(GameTask):
    """A TextWorld game.

    Args:
        seed: the episode seed; with the split and difficulty it fixes the game.
        split: "train" or "test"; they never share a game.
        difficulty: 1..4 (default 2); see :data:`LEVELS`.
        cache_dir: where generated games are kept (default ``$TIMELY_TEXTWORLD_CACHE`` or
            ~/.cache/timely/textworld); passed on to the tool server, which must see it too.

    Raises:
        TaskError: TextWorld is not installed (and the game is not cached), or it generated
            no quest.
    """

    task_id: ClassVar[str] = "games/textworld-v1"
    default_difficulty: ClassVar[int] = 2
    # Not in the generic contract sweep (tests/unit/tasks/test_contracts.py): it needs the
    # optional TextWorld package and seconds per new game, so tests/unit/tasks/test_games.py
    # checks it on a few seeds with a temporary cache.
    requires_options: ClassVar[bool] = True
    requires_extra: ClassVar[str | None] = "games"
    path_options: ClassVar[frozenset[str]] = frozenset({"cache_dir"})  # games are written there

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        split = check_split(split)
        level = check_level(self.task_id, difficulty, self.default_difficulty, max(LEVELS))
        size, objects, length = LEVELS[level]
        options = TextWorldOptions(textworld_seed(split, int(seed), level), size, objects, length)
        try:
            game = generate_game(options, cache_dir)
        except (ImportError, RuntimeError) as exc:
            raise TaskError(f"{self.task_id}: {exc}") from None
        self.moves: list[Move] = [("step", {"action": c}) for c in game.walkthrough]
        self.max_score = game.max_score
        self.new_game = {
            "game": "textworld",
            "seed": options.seed,
            "world_size": size,
            "nb_objects": objects,
            "quest_length": length,
        }
        if cache_dir is not None:
            self.new_game["cache_dir"] = str(cache_dir)
        prompt = (
            f"You are playing a text adventure. {game.objective}\n"
            f"You score {game.max_score} point{'s' if game.max_score != 1 else ''} for "
            "completing the quest. Start by looking around.\n\n"
            f"You act only through the game tools: {TOOLS_HELP['reference']}. {ANSWER_HELP}"
        )
        self.spec = self._make_spec(
            seed=int(seed),
            split=split,
            difficulty=level,
            prompt=prompt,
            tool_set="reference",
            metadata={"world_size": size, "nb_objects": objects, "quest_length": length},
        )
