"""The treasure game engine: what each verb does to a world, and the text it answers.

One method per verb (``go``, ``take``, ``open``, ...) backs one tool per move; ``step`` parses a
typed command (``"unlock oak door with brass key"``) onto the same methods so the game also
plays through the reference tool set. A move the world does not allow (a wall, a missing item,
the wrong key) is an observation that says why and what is possible, never an error: agents
learn from it, and the episode goes on. Names are matched forgivingly ("chalice", "the Golden
Chalice") but never guessed between two candidates.
"""

from __future__ import annotations

import re
from typing import Any

from timely_tools.games.common import GameSession, quote, win_message
from timely_tools.games.treasure.world import DIRECTIONS, Lockable, Room, Target, World

_ABBREV = {"n": "north", "s": "south", "e": "east", "w": "west"}
_ARTICLES = {"the", "a", "an", "some"}
Place = tuple[str, str]  # ("room", r) | ("in", container) | ("on", target) | ("inv", "")
_INV: Place = ("inv", "")
VERBS = ("look", "go", "take", "drop", "open", "unlock", "put", "examine", "inventory")
_HELP = (
    "Try: look, inventory, go <direction>, take <item>, drop <item>, open <thing>, "
    "unlock <thing> with <key>, put <item> on <thing>, examine <thing>."
)


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (hyphens kept), leading articles removed."""
    words = re.sub(r"[^a-z0-9\- ]+", " ", str(text).lower()).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def article(name: str) -> str:
    """``a candle`` / ``an apple``."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def listing(names: list[str]) -> str:
    """``a candle, a rope and an apple``."""
    parts = [article(n) for n in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class TreasureGame(GameSession):
    """A playable treasure world (mutable state over an immutable :class:`World`).

    Args:
        world: the generated world.
        code: the completion code shown on winning.
    """

    kind = "treasure"

    def __init__(self, world: World, code: str | None = None) -> None:
        self.world = world
        self.code = code
        self.room = world.start
        self.place: dict[str, Place] = {
            name: ("in", item.place) if item.place in world.containers else ("room", item.place)
            for name, item in world.items.items()
        }
        self.locked = {t.name for t in (*world.doors.values(), *world.containers.values()) if t.key}
        self.opened: set[str] = set()
        self.found: set[str] = set()
        self.delivered: set[str] = set()
        self.moves = 0
        self._ended = False

    # -- GameSession -------------------------------------------------------------------------
    @property
    def score(self) -> int:
        return len(self.found) + len(self.delivered)

    @property
    def max_score(self) -> int:
        return self.world.max_points

    @property
    def won(self) -> bool:
        return len(self.delivered) == len(self.world.goals)

    @property
    def over(self) -> bool:
        return self.won or self._ended

    def end(self) -> None:
        self._ended = True

    def step(self, command: str) -> str:
        """Play a typed command such as ``"take brass key"`` or ``"put chalice on altar"``."""
        text = normalize(command)
        verb, _, rest = text.partition(" ")
        if text in ("look", "l", "look around"):
            return self.look()
        if text in ("inventory", "i", "inv"):
            return self.inventory()
        if text in DIRECTIONS or text in _ABBREV:
            return self.go(text)
        if verb == "go":
            return self.go(rest)
        if verb in ("take", "get") or text.startswith("pick up "):
            what = text.removeprefix("pick up ") if verb == "pick" else rest
            return self.take(what.split(" from ")[0])
        if verb == "drop":
            return self.drop(rest)
        if verb == "open":
            return self.open(rest)
        if verb == "unlock":
            target, with_, key = rest.partition(" with ")
            if not with_:
                return "Unlock it with what? Say: unlock <thing> with <key>."
            return self.unlock(target, key)
        if verb in ("put", "place", "insert"):
            match = re.fullmatch(r"(.+?) (?:on|in|into|onto|inside) (.+)", rest)
            if match:
                return self.put(match[1], match[2])
            return "Put it where? Say: put <item> on <thing> (or in <thing>)."
        if verb in ("examine", "x") or text.startswith("look at "):
            return self.examine(text.removeprefix("look at ") if verb == "look" else rest)
        return f"I don't understand {quote(command)}. {_HELP}"

    def act(self, verb: str, args: dict[str, Any]) -> str:
        """Play one move tool by calling the verb's method with the tool's arguments."""
        if verb not in VERBS:
            return f"I don't know how to {quote(verb)}. {_HELP}"
        return getattr(self, verb)(**args)

    def available_actions(self) -> list[str]:
        if self.over:
            return []
        acts = ["look", "inventory"] + [f"go {e.direction}" for e in self._room.exits]
        acts += [f"take {n}" for n in self._loose_here()]
        for thing in self._lockables_here():
            if thing.name in self.locked:
                acts += [f"unlock {thing.name} with {k}" for k in self._carried("key")]
            elif thing.name not in self.opened:
                acts.append(f"open {thing.name}")
        for item in self._carried():
            acts.append(f"drop {item}")
            acts += [f"put {item} {t.prep} {t.name}" for t in self._targets_here()]
            acts += [f"put {item} in {c}" for c in self._containers_here() if c in self.opened]
        return acts

    # -- verbs -------------------------------------------------------------------------------
    def look(self) -> str:
        """Describe the current room: things in it and its exits."""
        if self.over:
            return self.over_message()
        return self._describe_room()

    def go(self, direction: str) -> str:
        """Walk through an exit (north, south, east, west)."""
        if self.over:
            return self.over_message()
        self.moves += 1
        d = normalize(direction).removeprefix("go ").strip()
        d = _ABBREV.get(d, d)
        exits = ", ".join(e.direction for e in self._room.exits)
        if d not in DIRECTIONS:
            return f"{quote(direction)} is not a direction. Use north, south, east or west. " + (
                f"Exits here: {exits}."
            )
        ex = next((e for e in self._room.exits if e.direction == d), None)
        if ex is None:
            return f"You can't go {d} from here. Exits here: {exits}."
        if ex.door and ex.door in self.locked:
            return f"The {ex.door} is locked. Unlock it with its key, then open it."
        if ex.door and ex.door not in self.opened:
            return f"The {ex.door} is closed. Open it first."
        self.room = ex.to
        return self._describe_room()

    def take(self, item: str) -> str:
        """Pick up an item lying in the room or in an open container here."""
        if self.over:
            return self.over_message()
        self.moves += 1
        scope = (
            self._loose_here() + self._on_targets_here() + self._carried() + self._openable_names()
        )
        scope += [t.name for t in self._targets_here()]
        name, problem = self._resolve(item, scope)
        if name is None:
            return problem
        if self.place.get(name) == _INV:
            return f"You already have the {name}."
        if name in self.world.containers or name in self.world.targets:
            return f"The {name} is fixed in place."
        if name in self.world.doors:
            return "You can't take a door."
        if self.place[name][0] == "on":
            return f"The {name} is where the quest wants it; leave it there."
        self.place[name] = _INV
        if self.world.items[name].kind == "treasure" and name not in self.found:
            self.found.add(name)
            return f"Taken: the {name}. (+1 point: you found a quest treasure!)"
        return f"Taken: the {name}."

    def drop(self, item: str) -> str:
        """Put down a carried item on the floor."""
        if self.over:
            return self.over_message()
        self.moves += 1
        name, problem = self._resolve(item, self._carried(), where="are carrying")
        if name is None:
            return problem
        self.place[name] = ("room", self.room)
        return f"Dropped: the {name}."

    def open(self, target: str) -> str:
        """Open a door or container here (locked ones need ``unlock`` first)."""
        if self.over:
            return self.over_message()
        self.moves += 1
        name, problem = self._resolve(target, self._openable_names() + self._others())
        if name is None:
            return problem
        if name not in self.world.doors and name not in self.world.containers:
            return f"You can't open the {name}."
        if name in self.opened:
            return f"The {name} is already open."
        if name in self.locked:
            return f"The {name} is locked. You need its key (unlock it first)."
        self.opened.add(name)
        if name in self.world.containers:
            inside = self._contents(name)
            return f"You open the {name}. " + (
                f"Inside you see {listing(inside)}." if inside else "It is empty."
            )
        return f"You open the {name}."

    def unlock(self, target: str, key: str) -> str:
        """Unlock a door or container here with a carried key."""
        if self.over:
            return self.over_message()
        self.moves += 1
        name, problem = self._resolve(target, self._openable_names() + self._others())
        if name is None:
            return problem
        key_name, problem = self._resolve(key, self._carried(), where="are carrying")
        if key_name is None:
            return problem
        thing = self.world.doors.get(name) or self.world.containers.get(name)
        if thing is None:
            return f"You can't unlock the {name}."
        if name not in self.locked:
            return f"The {name} isn't locked."
        if thing.key != key_name:
            return f"The {key_name} doesn't fit the {name}."
        self.locked.discard(name)
        return f"You unlock the {name} with the {key_name}."

    def put(self, item: str, target: str) -> str:
        """Put a carried item on/in a quest fixture or into an open container here."""
        if self.over:
            return self.over_message()
        self.moves += 1
        name, problem = self._resolve(item, self._carried(), where="are carrying")
        if name is None:
            return problem
        where, problem = self._resolve(target, self._fixed() + self._others())
        if where is None:
            return problem
        if where in self.world.targets:
            return self._deliver(name, where)
        if where in self.world.containers:
            if where not in self.opened:
                return f"The {where} is closed."
            self.place[name] = ("in", where)
            return f"You put the {name} in the {where}."
        return f"You can't put anything on the {where}."

    def inventory(self) -> str:
        """List what the player carries."""
        if self.over:
            return self.over_message()
        carried = self._carried()
        return f"You are carrying {listing(carried)}." if carried else "You are carrying nothing."

    def examine(self, target: str) -> str:
        """Describe one thing here or in the inventory."""
        if self.over:
            return self.over_message()
        if normalize(target) in ("", "room", "here", "around", normalize(self.room)):
            return self._describe_room()
        scope = self._loose_here() + self._carried() + self._fixed() + self._openable_names()
        name, problem = self._resolve(target, scope)
        if name is None:
            return problem
        if name in self.world.items:
            return self.world.items[name].description
        if name in self.world.targets:
            goal = next(g for g in self.world.goals if g.target == name)
            on = [i for i, p in self.place.items() if p == ("on", name)]
            held = f" It holds {listing(on)}." if on else ""
            return f"The {name}. The quest: put the {goal.treasure} {self._prep(name)} it.{held}"
        thing = self.world.doors.get(name) or self.world.containers[name]
        return f"The {name}. {self._state(thing)}"

    # -- helpers -----------------------------------------------------------------------------
    @property
    def _room(self) -> Room:
        return self.world.rooms[self.room]

    def _prep(self, target: str) -> str:
        return self.world.targets[target].prep

    def _deliver(self, item: str, target: str) -> str:
        goal = next(g for g in self.world.goals if g.target == target)
        if goal.treasure != item:
            return f"The {target} is meant for the {goal.treasure}, not the {item}."
        self.place[item] = ("on", target)
        self.delivered.add(item)
        text = f"You put the {item} {self._prep(target)} the {target}. (+1 point)"
        return f"{text}\n{win_message(self.code)}" if self.won else text

    def _containers_here(self) -> list[str]:
        return [c.name for c in self.world.containers.values() if c.rooms[0] == self.room]

    def _targets_here(self) -> list[Target]:
        return [t for t in self.world.targets.values() if t.room == self.room]

    def _fixed(self) -> list[str]:
        return [t.name for t in self._targets_here()] + self._containers_here()

    def _lockables_here(self) -> list[Lockable]:
        doors = [self.world.doors[e.door] for e in self._room.exits if e.door]
        return doors + [self.world.containers[c] for c in self._containers_here()]

    def _openable_names(self) -> list[str]:
        return [t.name for t in self._lockables_here()]

    def _others(self) -> list[str]:
        """Things a verb may name but not act on (shown as a clear refusal, not 'not here')."""
        return self._loose_here() + self._carried() + [t.name for t in self._targets_here()]

    def _carried(self, kind: str | None = None) -> list[str]:
        return [
            n
            for n, p in self.place.items()
            if p == _INV and (kind is None or self.world.items[n].kind == kind)
        ]

    def _contents(self, container: str) -> list[str]:
        return [n for n, p in self.place.items() if p == ("in", container)]

    def _loose_here(self) -> list[str]:
        """Items on the floor here or in an open container here (what ``take`` can reach)."""
        out = [n for n, p in self.place.items() if p == ("room", self.room)]
        for c in self._containers_here():
            if c in self.opened:
                out += self._contents(c)
        return out

    def _on_targets_here(self) -> list[str]:
        return [
            n for t in self._targets_here() for n, p in self.place.items() if p == ("on", t.name)
        ]

    def _state(self, thing: Lockable) -> str:
        if thing.name in self.opened:
            if thing.name in self.world.containers:
                inside = self._contents(thing.name)
                return f"It is open; inside: {listing(inside)}." if inside else "It is open, empty."
            return "It is open."
        return "It is locked." if thing.name in self.locked else "It is closed."

    def _resolve(
        self, text: str, scope: list[str], *, where: str = "see"
    ) -> tuple[str | None, str]:
        """The unique name in ``scope`` that ``text`` refers to, or (None, a helpful message)."""
        query = normalize(text)
        aliases = {n: {n} for n in scope}
        for ex in self._room.exits:
            if ex.door and ex.door in aliases:
                aliases[ex.door] |= {ex.direction, f"{ex.direction} door"}
        exact = [n for n, names in aliases.items() if query in names]
        words = set(query.split())
        partial = [n for n in scope if words and words <= set(n.split())]
        found = list(dict.fromkeys(exact or partial))
        if len(found) == 1:
            return found[0], ""
        if len(found) > 1:
            return None, f"Which do you mean: {' or '.join('the ' + n for n in found)}?"
        if where == "see":
            return None, f"You don't see any {quote(text)} here."
        carried = self._carried()
        have = f" You are carrying {listing(carried)}." if carried else ""
        return None, f"You aren't carrying any {quote(text)}.{have}"

    def _describe_room(self) -> str:
        room = self._room
        lines = [f"-= {room.name} =-", room.description]
        things = []
        for c in self._containers_here():
            if c in self.opened:
                inside = self._contents(c)
                things.append(
                    f"{article(c)} (open, holding {listing(inside)})"
                    if inside
                    else f"{article(c)} (open, empty)"
                )
            else:
                things.append(f"{article(c)} (closed)")
        for t in self._targets_here():
            on = [n for n, p in self.place.items() if p == ("on", t.name)]
            things.append(
                f"{article(t.name)} ({t.prep} it: {listing(on)})" if on else article(t.name)
            )
        things += [article(n) for n, p in self.place.items() if p == ("room", self.room)]
        lines.append(f"You see {', '.join(things)}." if things else "The room is bare.")
        exits = []
        for ex in room.exits:
            if ex.door:
                status = "open" if ex.door in self.opened else "closed"
                exits.append(f"{ex.direction} (through the {ex.door}, {status})")
            else:
                exits.append(ex.direction)
        lines.append(f"Exits: {', '.join(exits)}.")
        return "\n".join(lines)
