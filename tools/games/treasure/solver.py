"""The reference walkthrough of a treasure world: the moves an all-knowing player makes.

The scripted oracle replays these moves, and their count is the instance's
``reference_steps``, the unit in which the games family states budgets. The planner is greedy,
not optimal: it delivers the treasure nearest to where it stands, fetching keys on the way as
locks block it. It plays every move on a real :class:`~.engine.TreasureGame`, so the plan is
exactly what the engine accepts, and a plan that does not win raises instead of producing an
instance the oracle cannot solve. Termination follows from how keys are placed (see
:func:`.world._place_keys`): a key never lies behind the lock it opens.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from timely_tools.games.treasure.engine import TreasureGame
from timely_tools.games.treasure.world import Exit, World

Move = tuple[str, dict[str, Any]]  # (move tool name, its arguments)


def walkthrough(world: World) -> list[Move]:
    """The moves that win ``world`` from its start.

    Args:
        world: a generated world.

    Raises:
        RuntimeError: the plan does not win (a bug in the generator or the planner).
    """
    planner = _Planner(world)
    planner.solve()
    if not planner.game.won:
        raise RuntimeError(f"treasure planner failed to win {world.title!r} (a bug)")
    return planner.moves


def move_command(move: Move, world: World) -> str:
    """The typed command of a move, for the reference ``step`` tool (``"unlock X with K"``)."""
    verb, args = move
    if verb == "put":
        target = world.targets.get(args["target"])
        prep = target.prep if target else "in"
        return f"put {args['item']} {prep} {args['target']}"
    if verb == "unlock":
        return f"unlock {args['target']} with {args['key']}"
    if verb == "go":
        return f"go {args['direction']}"
    return " ".join([verb, *args.values()])


class _Planner:
    def __init__(self, world: World) -> None:
        self.world = world
        self.game = TreasureGame(world)
        self.moves: list[Move] = []

    def do(self, verb: str, **args: str) -> None:
        self.game.act(verb, args)
        self.moves.append((verb, args))

    def solve(self) -> None:
        todo = list(self.world.goals)
        while todo:
            goal = min(todo, key=lambda g: len(self.path(self.room_of(g.treasure))))
            todo.remove(goal)
            self.fetch(goal.treasure)
            self.reach(self.world.targets[goal.target].room)
            self.do("put", item=goal.treasure, target=goal.target)

    def room_of(self, item: str) -> str:
        kind, where = self.game.place[item]
        if kind == "in":
            return self.world.containers[where].rooms[0]
        return self.game.room if kind == "inv" else where

    def path(self, goal: str) -> list[Exit]:
        """The exits from the current room to ``goal`` (rooms form a tree: the path is unique)."""
        start = self.game.room
        back: dict[str, tuple[str, Exit] | None] = {start: None}
        todo = deque([start])
        while todo:
            room = todo.popleft()
            if room == goal:
                break
            for ex in self.world.rooms[room].exits:
                if ex.to not in back:
                    back[ex.to] = (room, ex)
                    todo.append(ex.to)
        exits: list[Exit] = []
        room = goal
        while (prev := back[room]) is not None:
            room, ex = prev
            exits.append(ex)
        return exits[::-1]

    def reach(self, room: str) -> None:
        """Walk to ``room``, fetching the keys of locked doors on the way before setting off."""
        while self.game.room != room:
            path = self.path(room)
            blocked = [ex.door for ex in path if ex.door and self.need_key(ex.door)]
            if blocked:
                self.fetch(self.key_of(blocked[0]))
                continue  # fetching moved us: plan the path again
            ex = path[0]
            if ex.door and ex.door not in self.game.opened:
                self.open_here(ex.door)
            self.do("go", direction=ex.direction)

    def key_of(self, lock: str) -> str:
        thing = self.world.doors.get(lock) or self.world.containers[lock]
        assert thing.key is not None
        return thing.key

    def need_key(self, lock: str) -> bool:
        """Whether ``lock`` is locked and its key is not carried."""
        return lock in self.game.locked and self.game.place[self.key_of(lock)][0] != "inv"

    def open_here(self, name: str) -> None:
        """Open a door or container of the current room (unlocking it with its carried key)."""
        if name in self.game.locked:
            self.do("unlock", target=name, key=self.key_of(name))
        self.do("open", target=name)

    def fetch(self, item: str) -> None:
        """Go and take ``item`` (opening its container, and fetching that one's key first)."""
        kind, where = self.game.place[item]
        if kind == "inv":
            return
        if kind == "in" and self.need_key(where):
            self.fetch(self.key_of(where))
        self.reach(self.room_of(item))
        if kind == "in" and where not in self.game.opened:
            self.open_here(where)
        self.do("take", item=item)
