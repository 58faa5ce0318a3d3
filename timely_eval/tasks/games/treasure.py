"""``games/treasure-v1``: our own room/item/quest game, so the family never depends on a library.

A generated house of rooms on a grid, doors and containers (some locked, their keys hidden
where they can be reached first), and a quest: carry each treasure to its place. One point for
first picking up each treasure, one for putting it in place. Difficulty d gives 2 + 2d rooms,
d treasures, d - 1 locked doors and d // 2 locked containers (walkthroughs of about 5 moves at
d = 1, 15 at 2, 27 at 3, up to ~115 at 8).

Splits are disjoint by construction: a world is kept only by the split its quest text (the part
of the prompt that describes the world) hashes to, so no world, and no prompt, is in both.
"""

from __future__ import annotations

from typing import ClassVar

from timely.errors import TaskError
from timely.rng import derive_seed
from timely.task import ScriptedSolution, Split, register_task
from timely_eval.tasks.games.base import (
    ANSWER_HELP,
    STOP_ANSWER,
    TOOLS_HELP,
    GameTask,
    Move,
    ToolSet,
    check_level,
    check_split,
    check_tool_set,
)
from timely_tools.games.treasure.engine import TreasureGame
from timely_tools.games.treasure.solver import move_command, walkthrough
from timely_tools.games.treasure.world import MAX_DIFFICULTY, World, world_for

_MAX_ATTEMPTS = 1000  # a draw is kept with probability 1/2


def split_of(text: str) -> Split:
    """The only split a world with this quest text may appear in (hash parity)."""
    canonical = " ".join(text.split())
    return "train" if derive_seed("timely-games-split", canonical) % 2 == 0 else "test"


def quest_text(world: World) -> str:
    """The world as the prompt describes it: house, size, start and quest."""
    goals = [
        f"put the {g.treasure} {world.targets[g.target].prep} the {g.target}" for g in world.goals
    ]
    quest = "; ".join(goals[:-1]) + (" and " if len(goals) > 1 else "") + goals[-1]
    return (
        f"You are a treasure hunter in {world.title}, a house of {len(world.rooms)} rooms. "
        f"You start in the {world.start}. Your quest: {quest}."
    )


@register_task(
    "games/treasure-v1", help="Our own text game: find treasures behind locks, put them in place."
)
@register_task("games/treasure", help="Alias of the latest games/treasure version (v1).")
class TreasureTask(GameTask):
    """A generated treasure world.

    Args:
        seed: the episode seed; with the split and difficulty it fixes the world.
        split: "train" or "test"; they never share a world.
        difficulty: 1..8 (default 2); see the module docstring.
        tool_set: "verbs" (one tool per move, the default) or "reference" (``step`` and the
            reference release's query tools).
    """

    task_id: ClassVar[str] = "games/treasure-v1"
    default_difficulty: ClassVar[int] = 2

    def __init__(
        self,
        seed: int,
        split: Split = "test",
        difficulty: int | None = None,
        tool_set: ToolSet = "verbs",
    ) -> None:
        split = check_split(split)
        level = check_level(self.task_id, difficulty, self.default_difficulty, MAX_DIFFICULTY)
        tool_set = check_tool_set(self.task_id, tool_set, ("verbs", "reference"))
        world_seed, world = self._draw(int(seed), split, level)
        self.world = world
        plan = walkthrough(world)
        if tool_set == "reference":
            plan = [("step", {"action": move_command(m, world)}) for m in plan]
        self.moves: list[Move] = plan
        self.max_score = world.max_points
        self.new_game = {"game": "treasure", "seed": world_seed, "difficulty": level}
        scoring = (
            "You score 1 point the first time you pick up each quest treasure and 1 more for "
            f"each treasure you put in its place ({world.max_points} points in all). Doors and "
            "containers may be closed or locked; the keys are somewhere in the house."
        )
        prompt = (
            f"{quest_text(world)}\n{scoring}\n\n"
            f"You act only through the game tools: {TOOLS_HELP[tool_set]}. {ANSWER_HELP}"
        )
        self.spec = self._make_spec(
            seed=int(seed),
            split=split,
            difficulty=level,
            prompt=prompt,
            tool_set=tool_set,
            metadata={"rooms": len(world.rooms), "treasures": len(world.goals)},
        )

    @classmethod
    def _draw(cls, seed: int, split: Split, level: int) -> tuple[int, World]:
        for attempt in range(_MAX_ATTEMPTS):
            world_seed = derive_seed(cls.task_id, split, level, seed, attempt)
            world = world_for(world_seed, level)
            if split_of(quest_text(world)) == split:
                return world_seed, world
        raise TaskError(f"{cls.task_id}: no {split} world after {_MAX_ATTEMPTS} draws (a bug)")

    def solution(self) -> ScriptedSolution:
        """The walkthrough; stopping after ``i`` moves says the points they earned.

        The score is read from the game's own lines whatever the reply says, so these answers
        change no score; they make an early stop report the game state reached (what the
        prompt asks for, "say what you achieved"), so data built from them teaches it.
        """
        reference = super().solution()
        game = TreasureGame(self.world)
        points = [0]
        for verb, args in self.moves:
            game.step(args["action"]) if verb == "step" else game.act(verb, args)
            points.append(game.score)
        stops = [stop_answer(p, self.max_score) for p in points]
        return reference.model_copy(update={"fallback_answers": stops})


def stop_answer(points: int, max_points: int) -> str:
    """What an agent that stops early says: the points it has (``STOP_ANSWER`` plus them)."""
    return f"{STOP_ANSWER.removesuffix('.')} with {points} of {max_points} points."
