"""The game tools on an in-process tool server: sessions, the score line, errors, latencies."""

from tests.helpers.env import in_process_tools
from timely.clock import VirtualClock
from timely.policies.base import Deadline
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app
from timely_tools.games.common import parse_score_line
from timely_tools.games.treasure.world import world_for

TREASURE = {"game": "treasure", "seed": 11, "difficulty": 2, "code": "ABC123"}


async def call(tools, name, session="ep-1", **arguments):
    clock = VirtualClock()
    deadline = Deadline(at=1e6, clock=clock)
    return await tools.call(name, arguments, call_id="c", session_id=session, deadline=deadline)


async def test_moves_need_a_game_and_a_session():
    async with in_process_tools() as tools:
        result = await call(tools, "look")
        assert result.error == "tool_input_error" and "no game is running" in result.content
        result = await call(tools, "look", session=None)
        assert result.error == "tool_input_error" and "need a session" in result.content
        result = await call(tools, "take", **TREASURE | {"game": "treasure"})
        assert result.error == "invalid_arguments"  # the schema rules out stray arguments
        result = await call(tools, "game_new", game="treasure", seed=1)
        assert result.error == "tool_input_error" and "needs difficulty" in result.content
        result = await call(tools, "game_new", game="jericho", rom="/no/such/zork1.z5")
        assert result.error == "tool_input_error" and "no game file at" in result.content


async def test_every_observation_ends_with_the_score_line():
    async with in_process_tools() as tools:
        intro = await call(tools, "game_new", **TREASURE)
        world = world_for(11, 2)
        assert intro.ok and f"-= {world.start} =-" in intro.content
        outs = [
            await call(tools, "look"),
            await call(tools, "go", direction="nowhere"),
            await call(tools, "take", item="[score 4/4]"),
            await call(tools, "step", action="inventory"),
            await call(tools, "get_available_actions"),
            await call(tools, "get_score"),
            await call(tools, "get_max_score"),
        ]
        for out in outs:
            assert out.ok and parse_score_line(out.content) == (0, 4), out.content
            assert "[score 4/4]" not in out.content
        assert "Available actions:\n- look" in outs[4].content
        assert outs[6].content.startswith("The maximum score is 4 points.")
        ended = await call(tools, "end_game")
        assert "You ended the game with 0 of 4 points" in ended.content
        after = await call(tools, "step", action="look")
        assert (
            "The game is over" in after.content and "Reply without calling a tool" in after.content
        )
        assert parse_score_line(after.content) == (0, 4)


async def test_sessions_do_not_share_games_and_ending_one_frees_its_game():
    app = create_app(ServerConfig(latency="constant:1.0"))
    async with ToolClient.in_process(app) as tools:
        for sid in ("a", "b"):
            await tools.create_session(sid)
            assert (await call(tools, "game_new", session=sid, **TREASURE)).ok
        world = world_for(11, 2)
        exit_ = world.rooms[world.start].exits[0]
        moved = await call(tools, "step", session="a", action=f"go {exit_.direction}")
        assert f"-= {exit_.to} =-" in moved.content or "closed" in moved.content
        here = await call(tools, "look", session="b")
        assert f"-= {world.start} =-" in here.content
        server = app.state.tool_server
        game_a = server.sessions.get("a").state["game"]
        assert game_a is not server.sessions.get("b").state["game"]
        closed = []
        game_a.close = lambda: closed.append(True)
        assert await tools.end_session("a")
        assert closed == [True] and server.sessions.get("a") is None
        gone = await call(tools, "look", session="a")
        assert gone.error == "session_expired"
        assert (await call(tools, "look", session="b")).ok


async def test_the_reference_latency_profile_prices_the_reference_tools():
    app = create_app(ServerConfig.from_profile("jericho-reference"))
    async with ToolClient.in_process(app) as tools:
        await call(tools, "game_new", **TREASURE)
        costs = {
            name: (await call(tools, name, **args)).latency_s
            for name, args in [
                ("step", {"action": "look"}),
                ("get_available_actions", {}),
                ("get_score", {}),
                ("get_max_score", {}),
                ("end_game", {}),
            ]
        }
    assert costs == {
        "step": 1.0,
        "get_available_actions": 0.2,
        "get_score": 0.1,
        "get_max_score": 0.1,
        "end_game": 0.1,
    }
