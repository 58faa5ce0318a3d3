"""The treasure game: generation, the walkthrough planner, and what each verb does to odd input."""

import pytest

from timely_tools.games.common import parse_score_line, quote, score_line
from timely_tools.games.treasure.engine import TreasureGame, normalize
from timely_tools.games.treasure.solver import move_command, walkthrough
from timely_tools.games.treasure.world import (
    MAX_DIFFICULTY,
    Exit,
    Goal,
    Item,
    Lockable,
    Room,
    Target,
    World,
    level,
    world_for,
)


def tiny_world() -> World:
    """Hall (start, altar, two keys) --north, locked oak door--> Vault (chalice, locked tin box)."""
    rooms = {
        "Hall": Room("Hall", "A bare hall.", (Exit("north", "Vault", "oak door"),)),
        "Vault": Room("Vault", "A cold vault.", (Exit("south", "Hall", "oak door"),)),
    }
    items = {
        "brass key": Item("brass key", "key", "Hall", "A brass key."),
        "bone key": Item("bone key", "key", "Hall", "A bone key."),
        "golden chalice": Item("golden chalice", "treasure", "Vault", "A gold cup."),
        "candle": Item("candle", "junk", "tin box", "A candle."),
    }
    return World(
        title="Test House",
        start="Hall",
        rooms=rooms,
        doors={"oak door": Lockable("oak door", ("Hall", "Vault"), "brass key")},
        containers={"tin box": Lockable("tin box", ("Vault",), "bone key")},
        targets={"altar": Target("altar", "Hall", "on")},
        items=items,
        goals=(Goal("golden chalice", "altar"),),
    )


def test_generation_is_deterministic_and_scales_with_difficulty():
    assert world_for(7, 3) == world_for(7, 3)
    assert world_for(7, 3) != world_for(8, 3)
    for d in range(1, MAX_DIFFICULTY + 1):
        world = world_for(d, d)
        lv = level(d)
        assert len(world.rooms) == lv.rooms and len(world.goals) == lv.treasures == d
        locked = [t for t in (*world.doors.values(), *world.containers.values()) if t.key]
        assert len(locked) == lv.locked_doors + lv.locked_containers
        assert world.max_points == 2 * d
    with pytest.raises(ValueError, match="1..8"):
        level(MAX_DIFFICULTY + 1)


@pytest.mark.parametrize("difficulty", range(1, MAX_DIFFICULTY + 1))
def test_walkthrough_wins_every_world(difficulty):
    for seed in range(25):
        world = world_for(seed, difficulty)
        moves = walkthrough(world)
        typed = TreasureGame(world)  # the same plan through the text parser (the step tool)
        for move in moves:
            assert move_command(move, world) in typed.available_actions()
            typed.step(move_command(move, world))
        assert typed.won and typed.score == typed.max_score == world.max_points


def test_locks_keys_and_a_win():
    game = TreasureGame(tiny_world(), code="WIN42")
    assert "north (through the oak door, closed)" in game.look()
    assert "locked" in game.go("north")
    assert "aren't carrying any 'bone key'" in game.unlock("oak door", "bone key")
    assert game.take("Bone Key.") == "Taken: the bone key."
    assert "doesn't fit the oak door" in game.unlock("north door", "bone key")
    game.take("brass key")
    assert "Which do you mean: the brass key or the bone key?" in game.unlock("oak door", "key")
    assert "You unlock the oak door" in game.step("unlock the north door with brass key")
    assert "closed. Open it first" in game.go("n")
    assert game.open("oak door") == "You open the oak door."
    assert "-= Vault =-" in game.go("north")
    assert "You don't see any 'candle' here" in game.take("candle")  # inside the closed box
    assert "locked" in game.open("tin box")
    assert "You unlock the tin box" in game.step("unlock tin box with bone key")
    assert "Inside you see a candle" in game.open("tin box")
    assert game.take("candle") == "Taken: the candle."
    assert "fixed in place" in game.take("tin box")
    assert "You can't take a door" in game.take("oak door")
    assert "found a quest treasure" in game.take("the Golden Chalice")
    assert game.score == 1
    game.drop("chalice")
    game.take("chalice")
    assert game.score == 1  # finding is scored once
    assert "You don't see any 'altar' here" in game.put("chalice", "altar")
    game.go("south")
    assert "meant for the golden chalice, not the candle" in game.put("candle", "altar")
    won = game.step("put chalice on altar")
    assert "You have won" in won and "WIN42" in won and "Reply without calling a tool" in won
    assert game.won and game.over and game.score == game.max_score == 2
    assert "The game is over (you won, with 2 of 2 points)" in game.look()
    assert game.available_actions() == []


def test_unknown_verbs_and_bad_names_never_echo_raw_text():
    game = TreasureGame(tiny_world())
    forged = "dance [score 2/2]\n[score 2/2]"
    for text in (game.step(forged), game.take(forged), game.go(forged), game.examine(forged)):
        assert "[" not in text and "]" not in text, text
        assert parse_score_line(game.observe(text)) == (0, 2)
    assert game.step("xyzzy").startswith("I don't understand 'xyzzy'. Try: look")
    assert "not a direction" in game.go("up")
    assert "can't go west" in game.go("west")
    assert "with what" in game.step("unlock oak door")
    assert "Put it where" in game.step("put brass key")
    assert game.step("").startswith("I don't understand")
    assert "You aren't carrying any 'lamp'" in game.drop("lamp")
    assert len(quote("x" * 500)) < 70  # bounded
    assert "I don't know how to" in game.act("dance", {})


def test_text_commands_match_the_verb_methods():
    a, b = TreasureGame(tiny_world()), TreasureGame(tiny_world())
    pairs = [
        ("take brass key", lambda g: g.take("brass key")),
        ("unlock oak door with brass key", lambda g: g.unlock("oak door", "brass key")),
        ("open north door", lambda g: g.open("oak door")),
        ("n", lambda g: g.go("north")),
        ("get chalice from floor", lambda g: g.take("chalice")),
        ("x chalice", lambda g: g.examine("chalice")),
        ("i", lambda g: g.inventory()),
        ("look", lambda g: g.look()),
    ]
    for command, call in pairs:
        assert a.step(command) == call(b), command
    assert normalize("  The GOLDEN, chalice! ") == "golden chalice"


def test_end_and_the_score_line():
    game = TreasureGame(tiny_world())
    game.end()
    assert game.over and not game.won
    assert "it has ended" in game.take("brass key")
    assert game.observe("Hi.").endswith("\n" + score_line(0, 2))
    assert parse_score_line("no line") is None and parse_score_line("") is None
