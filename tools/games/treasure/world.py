"""The treasure world: a procedurally generated house of rooms, doors, containers and treasures.

This module is the static half of the game: the data model and a seeded generator. A world is
a tree of rooms on a grid (so "north" then "south" always leads back), some doors and
containers locked, and a quest of treasures to carry to their places. Locks are placed so the
world is always solvable: every key lies in the part of the house that is reachable before the
lock it opens (see :func:`_place_keys`). The moving half (what a command does) is
:mod:`.engine`; the reference walkthrough is :mod:`.solver`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from timely.rng import make_rng

DIRECTIONS: dict[str, tuple[int, int]] = {
    "north": (0, 1),
    "south": (0, -1),
    "east": (1, 0),
    "west": (-1, 0),
}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

TITLES = (
    "Blackwood Manor", "Greyhaven Keep", "Thornfield Abbey", "Ravensmoor Hall",
    "Ashcombe Castle", "Highmoor Tower", "Dunmere Priory", "Oakhollow Lodge",
)  # fmt: skip
ROOMS: dict[str, str] = {
    "Kitchen": "Copper pans hang above a cold hearth.",
    "Library": "Shelves of dusty books reach up to the ceiling.",
    "Chapel": "Stained glass throws coloured light across the pews.",
    "Cellar": "The air is cool and smells of damp stone.",
    "Gallery": "Empty frames line the long walls.",
    "Study": "A heavy desk sits beneath a narrow window.",
    "Conservatory": "Overgrown ferns crowd the glass walls.",
    "Pantry": "Empty jars stand in neat rows.",
    "Armory": "Racks that once held spears line the walls.",
    "Observatory": "A great brass telescope points at the sky.",
    "Workshop": "Sawdust covers a scarred workbench.",
    "Greenhouse": "Rows of clay pots hold withered herbs.",
    "Stable": "Straw is scattered across the flagstones.",
    "Forge": "An anvil squats beside the cold furnace.",
    "Crypt": "Stone tombs line the walls in silence.",
    "Ballroom": "A cracked chandelier hangs over the dance floor.",
    "Attic": "Rafters slope low over forgotten trunks.",
    "Nursery": "A rocking horse stands in the corner.",
    "Scullery": "A stone sink is stained with years of use.",
    "Parlor": "Faded armchairs face an empty fireplace.",
    "Larder": "Hooks for hams hang from the beams.",
    "Boathouse": "Water laps against a rotten jetty.",
    "Bell Tower": "A great bronze bell hangs silent overhead.",
    "Music Room": "A dusty harpsichord stands by the window.",
    "Map Room": "Yellowed charts cover a long table.",
    "Wine Cellar": "Racks of empty bottles line the walls.",
    "Guard Room": "Playing cards lie on a table, mid-game.",
    "Throne Room": "A tall chair of carved oak faces the doors.",
    "Laundry": "Lines of grey sheets hang from the ceiling.",
    "Courtyard": "Weeds push up between the cobbles.",
}
TREASURES: dict[str, str] = {
    "golden chalice": "A heavy cup of beaten gold.",
    "silver crown": "A slim crown set with tiny stones.",
    "ruby amulet": "A blood-red stone on a fine chain.",
    "jade idol": "A small green figure with a knowing smile.",
    "crystal orb": "A perfect sphere of clear crystal.",
    "ivory horn": "A hunting horn carved from ivory.",
    "emerald ring": "A ring with a deep green stone.",
    "pearl necklace": "A string of lustrous pearls.",
    "ancient scroll": "A brittle scroll tied with faded ribbon.",
    "bronze astrolabe": "An instrument of nested bronze rings.",
}
TARGETS: tuple[tuple[str, str], ...] = (
    ("altar", "on"), ("pedestal", "on"), ("display case", "in"), ("trophy shelf", "on"),
    ("velvet cushion", "on"), ("glass cabinet", "in"), ("marble plinth", "on"),
    ("reliquary", "in"), ("stone niche", "in"), ("silk-lined tray", "on"),
)  # fmt: skip
CONTAINERS = (
    "oak chest", "strongbox", "wicker basket", "sea chest", "tin box", "wardrobe",
    "cupboard", "steamer trunk", "locker", "coffer", "sideboard", "footlocker",
)  # fmt: skip
KEYS = (
    "brass key", "bone key", "copper key", "rusty key", "crooked key", "skeleton key",
    "steel key", "ornate key", "tiny key", "heavy key", "iron key", "silver key",
)  # fmt: skip
DOORS = (
    "oak door", "red door", "iron gate", "green door", "blue door", "arched door",
    "studded door", "glass door", "narrow door", "carved door",
)  # fmt: skip
JUNK = (
    "candle", "rope", "apple", "book", "spoon", "feather", "lantern", "teacup", "quill",
    "boot", "bucket", "scarf", "pillow", "hammer", "bottle", "comb",
)  # fmt: skip


@dataclass(frozen=True)
class Exit:
    """A way out of a room: the direction, the room it leads to, and the door on it (if any)."""

    direction: str
    to: str
    door: str | None = None


@dataclass(frozen=True)
class Room:
    """A room: its name, a line of description, and its exits in a fixed order."""

    name: str
    description: str
    exits: tuple[Exit, ...]


@dataclass(frozen=True)
class Lockable:
    """A door (between two rooms) or a container (in one room); locked at start iff ``key``."""

    name: str
    rooms: tuple[str, ...]
    key: str | None = None


@dataclass(frozen=True)
class Target:
    """A fixture where a treasure belongs (``prep`` is "on" or "in")."""

    name: str
    room: str
    prep: str


@dataclass(frozen=True)
class Item:
    """A portable thing; ``place`` is a room or a container name, where it starts."""

    name: str
    kind: str  # "treasure", "key" or "junk"
    place: str
    description: str


@dataclass(frozen=True)
class Goal:
    """One quest line: carry ``treasure`` to ``target``."""

    treasure: str
    target: str


@dataclass(frozen=True)
class World:
    """A whole generated world; the engine keeps the mutable state apart from it."""

    title: str
    start: str
    rooms: dict[str, Room]
    doors: dict[str, Lockable]
    containers: dict[str, Lockable]
    targets: dict[str, Target]
    items: dict[str, Item]
    goals: tuple[Goal, ...]
    difficulty: int = 1

    @property
    def max_points(self) -> int:
        """One point for first picking up each treasure, one for putting it in place."""
        return 2 * len(self.goals)

    def lock_of(self, key: str) -> Lockable | None:
        """The door or container ``key`` opens."""
        for thing in (*self.doors.values(), *self.containers.values()):
            if thing.key == key:
                return thing
        return None


@dataclass(frozen=True)
class Level:
    """What a difficulty level scales."""

    rooms: int
    treasures: int
    locked_doors: int
    plain_doors: int
    containers: int
    locked_containers: int
    junk: int


MAX_DIFFICULTY = 8


def level(difficulty: int) -> Level:
    """World size and quest length of a difficulty (1 = one treasure in four rooms).

    Args:
        difficulty: 1..MAX_DIFFICULTY; each level adds two rooms, a treasure, a locked door,
            a container and a junk item, and every second level a locked container.

    Raises:
        ValueError: the difficulty is out of range.
    """
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"treasure difficulty must be 1..{MAX_DIFFICULTY}, got {difficulty}")
    d = difficulty
    return Level(
        rooms=2 + 2 * d,
        treasures=d,
        locked_doors=d - 1,
        plain_doors=1,
        containers=d + 1,
        locked_containers=d // 2,
        junk=d + 2,
    )


def generate(rng: np.random.Generator, difficulty: int) -> World:
    """Draw one world; every random choice comes from ``rng``.

    Args:
        rng: the instance's generator.
        difficulty: 1..MAX_DIFFICULTY (see :func:`level`).
    """
    lv = level(difficulty)
    names = _pick(rng, tuple(ROOMS), lv.rooms)
    edges = _layout(rng, names)  # (room, direction, room) of a spanning tree
    door_names = _pick(rng, DOORS, lv.locked_doors + lv.plain_doors)
    door_edges = [edges[int(i)] for i in rng.permutation(len(edges))[: len(door_names)]]
    key_names = list(_pick(rng, KEYS, lv.locked_doors + lv.locked_containers))
    doors: dict[str, Lockable] = {}
    door_on: dict[frozenset[str], str] = {}
    for i, (door, (a, _, b)) in enumerate(zip(door_names, door_edges, strict=False)):
        doors[door] = Lockable(door, (a, b), key_names[i] if i < lv.locked_doors else None)
        door_on[frozenset((a, b))] = door
    container_names = _pick(rng, CONTAINERS, lv.containers)
    containers: dict[str, Lockable] = {}
    for i, name in enumerate(container_names):
        key = key_names[lv.locked_doors + i] if i < lv.locked_containers else None
        containers[name] = Lockable(name, (_choice(rng, names),), key)
    target_defs = _pick(rng, TARGETS, lv.treasures)
    treasure_names = _pick(rng, tuple(TREASURES), lv.treasures)
    targets = {t: Target(t, _choice(rng, names), prep) for t, prep in target_defs}
    goals = tuple(Goal(tr, t) for tr, (t, _) in zip(treasure_names, target_defs, strict=True))

    rooms = _rooms(names, edges, door_on)
    items: dict[str, Item] = {}
    for treasure in treasure_names:
        place = _choice(rng, names + list(container_names))
        items[treasure] = Item(treasure, "treasure", place, TREASURES[treasure])
    for key, place in _place_keys(rng, names[0], rooms, doors, containers):
        items[key] = Item(key, "key", place, f"A {key}. It must open something.")
    for junk in _pick(rng, JUNK, lv.junk):
        place = _choice(rng, names + list(container_names))
        items[junk] = Item(junk, "junk", place, f"An ordinary {junk}.")
    return World(
        title=_choice(rng, TITLES),
        start=names[0],
        rooms=rooms,
        doors=doors,
        containers=containers,
        targets=targets,
        items=items,
        goals=goals,
        difficulty=difficulty,
    )


def world_for(seed: int, difficulty: int) -> World:
    """The world a game seed stands for: what the task and the tool server both build.

    Args:
        seed: the world seed (tasks derive it from their id, split and episode seed).
        difficulty: 1..MAX_DIFFICULTY.
    """
    return generate(make_rng("games/treasure-world", int(seed)), int(difficulty))


def _pick(rng: np.random.Generator, pool: tuple, n: int) -> list:
    """``n`` distinct elements of ``pool`` in random order (plain Python values)."""
    return [pool[int(i)] for i in rng.permutation(len(pool))[:n]]


def _choice(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(len(options)))]


def _layout(rng: np.random.Generator, names: list[str]) -> list[tuple[str, str, str]]:
    """A random spanning tree on grid cells: each new room hangs off a free side of an old one."""
    pos = {names[0]: (0, 0)}
    taken = {(0, 0)}
    edges: list[tuple[str, str, str]] = []
    for name in names[1:]:
        while True:
            parent = _choice(rng, list(pos))
            direction = _choice(rng, tuple(DIRECTIONS))
            dx, dy = DIRECTIONS[direction]
            cell = (pos[parent][0] + dx, pos[parent][1] + dy)
            if cell not in taken:
                break
        pos[name] = cell
        taken.add(cell)
        edges.append((parent, direction, name))
    return edges


def _rooms(
    names: list[str], edges: list[tuple[str, str, str]], door_on: dict[frozenset[str], str]
) -> dict[str, Room]:
    exits: dict[str, list[Exit]] = {n: [] for n in names}
    for a, direction, b in edges:
        door = door_on.get(frozenset((a, b)))
        exits[a].append(Exit(direction, b, door))
        exits[b].append(Exit(OPPOSITE[direction], a, door))
    order = list(DIRECTIONS)
    return {
        n: Room(n, ROOMS[n], tuple(sorted(exits[n], key=lambda e: order.index(e.direction))))
        for n in names
    }


def _place_keys(
    rng: np.random.Generator,
    start: str,
    rooms: dict[str, Room],
    doors: dict[str, Lockable],
    containers: dict[str, Lockable],
) -> list[tuple[str, str]]:
    """Where each key goes: always somewhere reachable before the lock it opens.

    Repeatedly: compute what is reachable with the keys placed so far, pick a lock on the
    frontier of that region, and hide its key in the region (on a floor or in an open-able
    container). Every lock is eventually on the frontier of a tree, so this always terminates.
    """
    placed: list[tuple[str, str]] = []
    held: set[str] = set()
    pending = [t for t in (*doors.values(), *containers.values()) if t.key]
    while pending:
        region = reachable(start, rooms, doors, held)
        frontier = [
            t
            for t in pending
            if (t.name in doors and any(r in region for r in t.rooms))
            or (t.name in containers and t.rooms[0] in region)
        ]
        lock = _choice(rng, frontier)
        spots = sorted(region) + [
            c.name
            for c in containers.values()
            if c.rooms[0] in region and (c.key is None or c.key in held)
        ]
        assert lock.key is not None
        placed.append((lock.key, _choice(rng, spots)))
        held.add(lock.key)
        pending.remove(lock)
    return placed


def reachable(
    start: str, rooms: dict[str, Room], doors: dict[str, Lockable], keys: set[str]
) -> set[str]:
    """Rooms reachable from ``start`` through doors that are unlocked or opened by ``keys``."""
    seen = {start}
    todo = [start]
    while todo:
        room = todo.pop()
        for ex in rooms[room].exits:
            door = doors.get(ex.door) if ex.door else None
            if door is not None and door.key is not None and door.key not in keys:
                continue
            if ex.to not in seen:
                seen.add(ex.to)
                todo.append(ex.to)
    return seen
