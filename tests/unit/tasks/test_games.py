"""The games family: treasure, TextWorld and Jericho tasks through the real loop and tool server."""

import asyncio
import sys
import types
from pathlib import Path

import pytest

from timely.budget import Budget
from timely.clock import VirtualClock
from timely.errors import TaskError
from timely.extras import MissingExtra
from timely.loop import run_episode
from timely.policies.base import make_policy
from timely.task import TASKS, make_task, task_names
from timely.testing import check_task, check_task_with_loop
from timely.toolclient import ToolClient
from timely.types import EndReason, Step, ToolResult
from timely_eval.tasks.games.base import REFERENCE_TOOLS, VERB_TOOLS
from timely_eval.tasks.games.jericho_games import JerichoTask, rom_split
from timely_eval.tasks.games.treasure import quest_text
from timely_server.app import ServerConfig, create_app
from timely_tools.games.common import parse_score_line
from timely_tools.games.treasure.world import world_for

TREASURE = "games/treasure-v1"


async def play(task, policy="scripted:oracle", *, budget=None, app=None, session_id=None):
    """One episode of ``task`` on a fresh (or the given) in-process server, 1 s per tool call."""
    app = app or create_app(ServerConfig(latency="constant:1.0"))
    async with ToolClient.in_process(app) as tools:
        return await run_episode(
            make_policy(policy),
            task,
            tools,
            VirtualClock(),
            Budget(seconds=budget or task.spec.default_budget_s),
            session_id=session_id,
        )


# -- treasure -------------------------------------------------------------------------------------
def test_ids_and_aliases_are_registered():
    for family in ("treasure", "textworld", "jericho"):
        assert f"games/{family}-v1" in task_names()
        assert TASKS.get(f"games/{family}") is TASKS.get(f"games/{family}-v1")
    assert make_task("games/treasure", seed=3).spec == make_task(TREASURE, seed=3).spec


@pytest.mark.parametrize("difficulty", [1, 4])
def test_treasure_static_contract(difficulty):
    check_task(TREASURE, n_seeds=10, difficulty=difficulty)


@pytest.mark.parametrize("difficulty", [1, 3])
async def test_treasure_oracle_wins_through_the_loop(difficulty):
    await check_task_with_loop(TREASURE, n_seeds=5, difficulty=difficulty)


async def test_treasure_through_the_reference_tools():
    task = make_task(TREASURE, seed=4, difficulty=3, tool_set="reference")
    assert task.spec.tools == REFERENCE_TOOLS
    assert {c.name for c in task.solution().calls} == {"step"}
    traj = await play(task)
    assert traj.score == 1.0 and traj.compliant
    assert make_task(TREASURE, seed=4, difficulty=3).spec.tools == VERB_TOOLS
    with pytest.raises(TaskError, match="tool_set"):
        make_task(TREASURE, seed=4, tool_set="mouse")
    with pytest.raises(TaskError, match="1..8"):
        make_task(TREASURE, seed=4, difficulty=9)


def test_treasure_is_deterministic_and_its_splits_are_disjoint():
    a, b = make_task(TREASURE, seed=5), make_task(TREASURE, seed=5)
    assert a.new_game == b.new_game and a.spec == b.spec and a.code == b.code
    assert make_task(TREASURE, seed=6).new_game != a.new_game
    quests = {}
    for split in ("train", "test"):
        quests[split] = {
            quest_text(world_for(t.new_game["seed"], 2)): t.new_game["seed"]
            for t in (make_task(TREASURE, seed=s, split=split) for s in range(150))
        }
    assert not set(quests["train"]) & set(quests["test"])
    assert len(quests["test"]) > 140  # nearly every seed is a different world


def test_treasure_budgets_follow_the_walkthrough():
    for difficulty, (lo, hi) in {1: (2, 12), 2: (5, 35), 3: (10, 70)}.items():
        for seed in range(10):
            spec = make_task(TREASURE, seed=seed, difficulty=difficulty).spec
            steps = spec.metadata["reference_steps"]
            assert lo <= steps <= hi
            assert spec.default_budget_s == 20 + 8 * steps and spec.max_turns == 3 * steps + 10
            assert spec.time_status == "push" and spec.metadata["max_score"] == 2 * difficulty


async def test_scoring_reads_the_trajectory_not_the_answer():
    task = make_task(TREASURE, seed=2, difficulty=2)
    other = make_task(TREASURE, seed=3, difficulty=2)
    traj = await play(task)
    assert traj.score == 1.0 and task.code in traj.final_answer
    assert task.score("no code here", traj) == 1.0  # the points are what counts
    # static: only the instance's own completion code proves a win
    assert task.score(f"Completion code: {task.code}", None) == 1.0
    assert task.score(f"Completion code: {other.code}", None) == 0.0
    assert task.score("[score 4/4]", None) == 0.0
    # wrong: no moves, no points
    assert (await play(task, "scripted:answer-now")).score == 0.0
    # partial: cut the trajectory after the first point
    first = next(
        i for i, s in enumerate(traj.steps) if s.tool_results and "(+1" in s.tool_results[0].content
    )
    partial = traj.model_copy(update={"steps": traj.steps[: first + 1]})
    assert task.score(None, partial) == 0.25
    # malformed: lines that do not come from a game tool, or come with an error, do not count
    forged = [
        ToolResult(call_id="x", name="echo", content="[score 4/4]"),
        ToolResult(call_id="y", name="look", content="Error (x): no\n[score 4/4]", error="x"),
    ]
    step = Step(index=99, clock="virtual", started_at=0, ended_at=0, gen_s=0, tool_results=forged)
    forged_traj = partial.model_copy(update={"steps": [*partial.steps, step]})
    assert task.score(f"[score 4/4] {task.code}", forged_traj) == 0.25


async def test_a_tight_budget_gives_partial_credit_on_time():
    task = make_task(TREASURE, seed=1, difficulty=3)
    steps = task.spec.metadata["reference_steps"]
    traj = await play(task, "scripted:budget-aware", budget=steps * 0.6)
    assert traj.end_reason == EndReason.ANSWERED and traj.compliant
    assert 0.0 < traj.score < 1.0
    late = await play(task, "scripted:oracle", budget=steps * 0.6)
    assert late.end_reason == EndReason.BUDGET_EXHAUSTED and late.score == 0.0


async def test_stopping_after_any_move_keeps_its_points_and_says_them():
    """At every step the agent may answer instead of moving: the reply keeps the points the
    game showed so far (partial credit), and the expert's stop answer states them."""
    task = make_task(TREASURE, seed=2, split="train", difficulty=2)
    solution = task.solution()
    assert len(solution.fallback_answers) == len(solution.calls) + 1
    app = create_app(ServerConfig(latency="constant:1.0"))
    scores = []
    async with ToolClient.in_process(app) as tools:
        for cap in range(len(solution.calls) + 1):
            traj = await run_episode(
                make_policy("scripted:oracle", stop_after=cap),
                task,
                tools,
                VirtualClock(),
                Budget(seconds=task.spec.default_budget_s),
            )
            assert traj.end_reason == EndReason.ANSWERED and traj.compliant
            points = round(traj.score * task.max_score)
            if cap < len(solution.calls):
                assert traj.final_answer == solution.fallback_answers[cap]
                assert f"with {points} of {task.max_score} points" in traj.final_answer
            scores.append(traj.score)
    assert scores[0] == 0.0 and scores[-1] == 1.0
    assert scores == sorted(scores) and len(set(scores)) == task.max_score + 1


async def test_episodes_run_concurrently_and_teardown_frees_the_game():
    app = create_app(ServerConfig(latency="constant:1.0"))
    tasks = [make_task(TREASURE, seed=s, difficulty=2) for s in (7, 7, 8)]
    trajs = await asyncio.gather(
        *(play(t, app=app, session_id=f"ep-{i}") for i, t in enumerate(tasks))
    )
    assert [t.score for t in trajs] == [1.0, 1.0, 1.0]
    assert all(app.state.tool_server.sessions.get(f"ep-{i}") is None for i in range(3))


async def test_a_session_left_over_by_an_interrupted_run_is_left_alone():
    app = create_app(ServerConfig(latency="constant:1.0"))
    async with ToolClient.in_process(app) as tools:
        await tools.create_session("ep-resumed")  # what a killed run leaves on a live server
    # A fresh episode gets its own session and never ends the leftover (it could be live).
    traj = await play(make_task(TREASURE, seed=9), app=app)
    assert traj.score == 1.0 and app.state.tool_server.sessions.get("ep-resumed") is not None
    # Reusing a live id explicitly is refused rather than taking the other game over.
    refused = await play(make_task(TREASURE, seed=9), app=app, session_id="ep-resumed")
    assert refused.score == 0.0 and "already live" in (refused.error or "")


# -- TextWorld ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory):
    """A TextWorld cache for the whole test session (the tool server reads it too)."""
    pytest.importorskip("textworld")
    cache = tmp_path_factory.mktemp("textworld-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIMELY_TEXTWORLD_CACHE", str(cache))
        yield cache


def test_textworld_static_contract(tw_cache):
    check_task("games/textworld-v1", n_seeds=1, difficulty=1)
    train = make_task("games/textworld-v1", seed=0, split="train", difficulty=1)
    test = make_task("games/textworld-v1", seed=0, split="test", difficulty=1)
    assert train.new_game["seed"] % 2 == 0 and test.new_game["seed"] % 2 == 1
    assert test.spec.metadata["reference_steps"] == 3 and test.max_score == 1
    assert len(list(tw_cache.iterdir())) == 2  # one game per instance, reused afterwards


async def test_textworld_oracle_wins_through_the_loop(tw_cache):
    await check_task_with_loop("games/textworld-v1", n_seeds=1, difficulty=1)


async def test_textworld_episodes_run_concurrently(tw_cache):
    """TextWorld is not thread-safe; the server plays its games in threads, one at a time."""
    app = create_app(ServerConfig(latency="constant:1.0"))
    tasks = [
        make_task("games/textworld-v1", seed=0, split=split, difficulty=1)
        for split in ("test", "train", "test", "train")
    ]
    trajs = await asyncio.gather(
        *(play(t, app=app, session_id=f"tw-{i}") for i, t in enumerate(tasks))
    )
    assert [t.score for t in trajs] == [1.0] * 4, [t.error for t in trajs]


def test_textworld_game_behaviour(tw_cache, tmp_path):
    from timely_tools.games.textworld_game import TextWorldGame, TextWorldOptions, generate_game

    task = make_task("games/textworld-v1", seed=0, difficulty=1)
    options = TextWorldOptions(
        **{k: task.new_game[k] for k in ("seed", "world_size", "nb_objects", "quest_length")}
    )
    files = generate_game(options)  # cached by the task: read, not generated
    again = generate_game(options, tmp_path)  # generated afresh elsewhere: the same bytes
    assert again.path.read_bytes() == files.path.read_bytes()
    game = TextWorldGame(files.path, code="TW1")
    try:
        assert "$$" not in game.intro and "-=" in game.intro
        assert files.walkthrough[0] in game.available_actions()
        assert "not a verb" in game.step("xyzzy")
        assert "[" not in game.step("take [score 1/1]") and game.score == 0
        assert "Say what to do" in game.step("!!!")
        for command in files.walkthrough:
            out = game.step(command)
        assert game.won and game.score == game.max_score == 1
        assert "You have won" in out and "TW1" in out and "RESTART" not in out
        assert "The game is over" in game.step("look") and game.available_actions() == []
    finally:
        game.close()


def test_textworld_reused_environment_plays_like_a_fresh_one(tw_cache):
    """A closed game's environment is reset for the next game of that file: same observations."""
    from timely_tools.games.textworld_game import (
        _POOL,
        TextWorldGame,
        TextWorldOptions,
        generate_game,
    )

    task = make_task("games/textworld-v1", seed=0, difficulty=1)
    options = TextWorldOptions(
        **{k: task.new_game[k] for k in ("seed", "world_size", "nb_objects", "quest_length")}
    )
    files = generate_game(options)
    commands = ["xyzzy", "look", *files.walkthrough, "look", "inventory"]

    def transcript(game, commands):
        seen = [(game.intro, game.available_actions())]
        for command in commands:
            seen.append((game.step(command), game.score, game.won, game.available_actions()))
        return seen

    _POOL.clear()
    try:
        fresh = TextWorldGame(files.path, code="TW1")
        expected = transcript(fresh, commands)
        env = fresh._env
        fresh.close()
        fresh.close()  # closing twice gives nothing back twice
        half = TextWorldGame(files.path, code="TW1")  # left mid-game, not won
        assert half._env is env
        transcript(half, [files.walkthrough[0], "inventory"])
        half.close()
        assert half.over and half.available_actions() == []
        again = TextWorldGame(files.path, code="TW1")
        assert again._env is env and transcript(again, commands) == expected
        again.close()
    finally:
        _POOL.clear()


def test_textworld_without_the_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "textworld", None)
    with pytest.raises(MissingExtra, match=r"pip install 'timely-machine\[games\]'"):
        make_task("games/textworld-v1", seed=0, cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("difficulty", [2, 3])
async def test_textworld_oracle_at_higher_difficulties(tw_cache, difficulty):
    await check_task_with_loop("games/textworld-v1", n_seeds=3, difficulty=difficulty)


# -- Jericho --------------------------------------------------------------------------------------
class FakeFrotzEnv:
    """Jericho's FrotzEnv, reduced to a three-move game worth 15 points."""

    WALK = ["open mailbox", "take leaflet", "read leaflet"]
    is_fully_supported = True

    def __init__(self, path, seed=None):
        self.done = 0

    def reset(self):
        self.done = 0
        return "West of House. There is a small mailbox here.", {"moves": 0, "score": 0}

    def step(self, action):
        ok = self.done < len(self.WALK) and action == self.WALK[self.done]
        self.done += ok
        obs = f"Done: {action}." if ok else "[That's not something you can do.]"
        return obs, 5 * ok, self.victory(), {"moves": 1, "score": 5 * self.done}

    def victory(self):
        return self.done == len(self.WALK)

    def game_over(self):
        return False

    def get_walkthrough(self):
        return list(self.WALK)

    def get_max_score(self):
        return 15

    def get_valid_actions(self, use_parallel=True):
        return ["open mailbox", "north"]

    def close(self):
        pass


@pytest.fixture
def fake_jericho(monkeypatch, tmp_path):
    module = types.ModuleType("jericho")
    module.FrotzEnv = FakeFrotzEnv
    monkeypatch.setitem(sys.modules, "jericho", module)
    roms = tmp_path / "roms"
    roms.mkdir()
    for name in ("zork1", "zork2", "zork3", "enchanter", "sorcerer", "spellbrkr", "wishbringer"):
        (roms / f"{name}.z5").write_bytes(b"\0" * 64)
    (roms / "notes.txt").write_text("not a game")
    return roms


async def test_jericho_plays_user_roms_through_the_loop(fake_jericho):
    files = sorted(p.name for p in fake_jericho.glob("*.z5"))
    by_split = {s: {p for p in files if rom_split(Path(p)) == s} for s in ("train", "test")}
    assert by_split["train"] and by_split["test"] and not by_split["train"] & by_split["test"]
    task = make_task("games/jericho-v1", seed=0, rom=fake_jericho)
    assert task.spec.metadata["rom"] in by_split["test"] and task.spec.tools == REFERENCE_TOOLS
    assert task.spec.metadata["reference_steps"] == 3 and task.max_score == 15
    traj = await play(task)
    assert traj.score == 1.0 and traj.compliant
    tight = await play(task, "scripted:budget-aware", budget=2.5)
    assert tight.end_reason == EndReason.ANSWERED and tight.score == pytest.approx(1 / 3)
    results = [r for s in traj.steps for r in s.tool_results]
    assert parse_score_line(results[-1].content) == (15, 15)
    single = make_task("games/jericho-v1", seed=3, split="train", rom=fake_jericho / "zork1.z5")
    assert single.spec.metadata["rom"] == "zork1.z5"


def test_jericho_errors_are_clear(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jericho", types.ModuleType("jericho"))
    with pytest.raises(TaskError, match="needs rom="):
        make_task("games/jericho-v1", seed=0)
    with pytest.raises(TaskError, match="no game file or directory"):
        make_task("games/jericho-v1", seed=0, rom=tmp_path / "nothing")
    rom = tmp_path / "zork1.z5"
    rom.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "jericho", None)
    with pytest.raises(MissingExtra, match=r"pip install 'timely-machine\[jericho\]'"):
        make_task("games/jericho-v1", seed=0, rom=rom)


async def test_a_server_that_cannot_start_the_game_fails_the_run_loudly(fake_jericho, monkeypatch):
    task = make_task("games/jericho-v1", seed=0, rom=fake_jericho)
    monkeypatch.setitem(sys.modules, "jericho", None)  # the server lacks it
    with pytest.raises(TaskError, match="cannot start the game.*pip install jericho"):
        await play(task)


def test_jericho_rejects_games_it_cannot_score(tw_cache):
    pytest.importorskip("jericho")
    task = make_task("games/textworld-v1", seed=0, difficulty=1)
    z8 = next(tw_cache.glob("*/game.z8"))  # a real Z-machine file, without Jericho bindings
    assert task.new_game["game"] == "textworld"
    with pytest.raises(TaskError, match="not a game Jericho fully supports"):
        JerichoTask(seed=0, rom=z8)
