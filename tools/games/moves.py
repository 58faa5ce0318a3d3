"""The game tools: one per move, each call paying its latency, plus the reference release's set.

Two tool sets play the game a session holds, whichever engine it is:

- moves, one tool per verb: ``look``, ``go``, ``take``, ``drop``, ``open``, ``unlock``, ``put``,
  ``examine``, ``inventory`` (typed arguments, so a model cannot misspell the grammar, only the
  names, which the engines match forgivingly);
- the reference release's Jericho tools: ``step`` (a free-text command), ``get_available_actions``,
  ``get_score``, ``get_max_score``, ``end_game``, whose per-call costs
  ``configs/latency/jericho-reference.yaml`` reproduces.

``game_new`` starts a game in the session. Tasks call it from ``setup`` (an episode's agent is never
offered it), so the agent cannot choose its own game. Every observation ends with the
``[score P/M]`` line (see :mod:`timely_tools.games.common`). Interpreter-backed games block for a
few milliseconds a move and seconds to generate, so they run in a worker thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread

from timely_tools.base import ToolContext, ToolDef, ToolInputError, tool
from timely_tools.games.common import MAX_COMMAND_CHARS, GameSession
from timely_tools.games.treasure.engine import TreasureGame
from timely_tools.games.treasure.world import MAX_DIFFICULTY, world_for

GAME_KEY = "game"
GAMES = ("treasure", "textworld", "jericho")
_T = TypeVar("_T")


def _name(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_COMMAND_CHARS,
        "description": description,
    }


def _schema(**properties: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: _name(v) for k, v in properties.items()},
        "required": list(properties),
        "additionalProperties": False,
    }


def _game(ctx: ToolContext) -> GameSession:
    if ctx.state is None:
        raise ToolInputError("game tools need a session: call them with a session_id")
    game = ctx.state.get(GAME_KEY)
    if not isinstance(game, GameSession):
        raise ToolInputError("no game is running in this session (the task starts one)")
    return game


async def _run(game: GameSession, fn: Callable[[], _T]) -> _T:
    """``fn()``, in a worker thread when the game's moves block."""
    return await anyio.to_thread.run_sync(fn) if game.blocking else fn()


def _move_tool(verb: str, description: str, **properties: str) -> ToolDef:
    async def handler(arguments: dict[str, Any], ctx: ToolContext) -> str:
        game = _game(ctx)
        if game.over:
            return game.observe(game.over_message())
        return game.observe(await _run(game, partial(game.act, verb, dict(arguments))))

    # Every move is a turn of the game and may end it (in a Jericho game even a `look` lets
    # the lamp burn down, and a step into the dark is fatal), so none is read-only and all keep
    # MCP's default destructive hint.
    return tool(
        verb,
        description=description,
        parameters=_schema(**properties),
        title=f"Game move: {verb}",
    )(handler)


# -- one tool per move -------------------------------------------------------------------------
look = _move_tool("look", "Look around: the room you are in, what is in it, and its exits.")
go = _move_tool(
    "go", "Walk through an exit.", direction="north, south, east or west (n, s, e, w work too)."
)
take = _move_tool(
    "take",
    "Pick up an item lying here or in an open container here.",
    item="The item, e.g. 'brass key'.",
)
drop = _move_tool("drop", "Put down an item you are carrying.", item="The item you carry.")
open_ = _move_tool(
    "open",
    "Open a door or a container here (a locked one must be unlocked first).",
    target="The door or container, e.g. 'oak chest' or 'north door'.",
)
unlock = _move_tool(
    "unlock",
    "Unlock a door or a container here with a key you carry.",
    target="The door or container.",
    key="The key you carry, e.g. 'brass key'.",
)
put = _move_tool(
    "put",
    "Put an item you carry on or in something here: its place in the quest, or an open container.",
    item="The item you carry.",
    target="Where it goes, e.g. 'altar'.",
)
examine = _move_tool(
    "examine", "Look closely at something here or that you carry.", target="The thing."
)
inventory = _move_tool("inventory", "List what you are carrying.")


# -- the reference release's tools -------------------------------------------------------------
@tool(
    "step",
    description="Play one text command in the game, e.g. 'go north', 'take lamp', "
    "'open mailbox', 'put key in box', and get the game's response.",
    parameters=_schema(action="The command, in plain words."),
    title="Game command",
)
async def step(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """Play ``arguments["action"]`` as a typed command."""
    game = _game(ctx)
    if game.over:
        return game.observe(game.over_message())
    return game.observe(await _run(game, partial(game.step, arguments["action"])))


@tool(
    "get_available_actions",
    description="List commands that make sense right now.",
    parameters=_schema(),
    title="Available game commands",
    read_only=True,  # engines list them from a saved and restored state
    idempotent=True,
)
async def get_available_actions(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The engine's list of sensible commands."""
    game = _game(ctx)
    if game.over:
        return game.observe(game.over_message())
    actions = await _run(game, game.available_actions)
    if not actions:
        return game.observe("This game cannot list its actions here; try look or inventory.")
    return game.observe("Available actions:\n" + "\n".join(f"- {a}" for a in actions))


@tool(
    "get_score",
    description="Your score so far.",
    parameters=_schema(),
    title="Game score",
    read_only=True,
    idempotent=True,
)
async def get_score(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The current score."""
    game = _game(ctx)
    return game.observe(f"Score: {game.score} of {game.max_score} points.")


@tool(
    "get_max_score",
    description="The most points this game gives.",
    parameters=_schema(),
    title="Maximum game score",
    read_only=True,
    idempotent=True,
)
async def get_max_score(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The maximum score."""
    game = _game(ctx)
    return game.observe(f"The maximum score is {game.max_score} points.")


@tool(
    "end_game",
    description="Give up: end the game now, keeping the points you have.",
    parameters=_schema(),
    title="End the game",
    destructive=True,
    idempotent=True,  # a second call finds the game over and changes nothing
)
async def end_game(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """End the game; the score stays."""
    game = _game(ctx)
    if game.over:
        return game.observe(game.over_message())
    game.end()
    return game.observe(game.end_message())


# -- starting a game ---------------------------------------------------------------------------
def _int(**extra: Any) -> dict[str, Any]:
    return {"type": "integer", **extra}


@tool(
    "game_new",
    description="Start a game in this session (tasks call it in setup; agents are not offered "
    "it). Replaces the session's game if it has one.",
    parameters={
        "type": "object",
        "properties": {
            "game": {"type": "string", "enum": list(GAMES), "description": "The engine."},
            "seed": _int(minimum=0, description="treasure: world seed; textworld: tw-make seed."),
            "difficulty": _int(minimum=1, maximum=MAX_DIFFICULTY, description="treasure only."),
            "world_size": _int(minimum=1, maximum=50, description="textworld: rooms."),
            "nb_objects": _int(minimum=1, maximum=100, description="textworld: objects."),
            "quest_length": _int(minimum=1, maximum=50, description="textworld: quest moves."),
            "cache_dir": {"type": "string", "maxLength": 4096, "description": "textworld cache."},
            "rom": {"type": "string", "maxLength": 4096, "description": "jericho: game file."},
            "code": {"type": "string", "pattern": "^[A-Z0-9]{0,16}$", "description": "Win code."},
        },
        "required": ["game"],
        "additionalProperties": False,
    },
    latency="constant:0",
    title="Start a game",
    destructive=True,  # replaces the session's game
)
async def game_new(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """Start the game ``arguments`` describe and return its opening observation."""
    if ctx.state is None:
        raise ToolInputError("game_new needs a session: call it with a session_id")
    kind = arguments["game"]
    try:
        game, intro = (
            _new_treasure(arguments)
            if kind == "treasure"
            else await anyio.to_thread.run_sync(partial(_new_interpreted, arguments))
        )
    except (ImportError, ValueError, RuntimeError, OSError) as exc:
        raise ToolInputError(f"cannot start the {kind} game: {exc}") from None
    old = ctx.state.pop(GAME_KEY, None)
    if isinstance(old, GameSession):
        old.close()
    ctx.state[GAME_KEY] = game
    return game.observe(intro)


def _need(arguments: dict[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if n not in arguments]
    if missing:
        raise ValueError(f"game_new for {arguments['game']} needs {', '.join(missing)}")
    return [arguments[n] for n in names]


def _new_treasure(arguments: dict[str, Any]) -> tuple[GameSession, str]:
    seed, difficulty = _need(arguments, "seed", "difficulty")
    game = TreasureGame(world_for(seed, difficulty), arguments.get("code") or None)
    return game, game.look()


def _new_interpreted(arguments: dict[str, Any]) -> tuple[GameSession, str]:
    code = arguments.get("code") or None
    if arguments["game"] == "jericho":
        from timely_tools.games.jericho_game import JerichoGame

        (rom,) = _need(arguments, "rom")
        jgame = JerichoGame(rom, code)
        return jgame, jgame.intro
    from timely_tools.games.textworld_game import TextWorldGame, TextWorldOptions, generate_game

    seed, size, objects, length = _need(
        arguments, "seed", "world_size", "nb_objects", "quest_length"
    )
    options = TextWorldOptions(seed, size, objects, length)
    files = generate_game(options, arguments.get("cache_dir"))
    tgame = TextWorldGame(files.path, code)
    return tgame, tgame.intro
