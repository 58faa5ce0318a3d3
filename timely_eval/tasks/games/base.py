"""What the game tasks share: starting the game in the episode's session, budgets, scoring.

A game task is high-frequency tool calling: every move is a tool call that pays the tool's
latency, so how many moves fit in the budget is the whole question. The game itself lives on the
tool server, in the episode's session: ``setup`` creates the session and starts the game with
``game_new`` (which the agent is never offered, so it cannot pick its own game), ``teardown`` ends
the session, which frees the game.

Scoring reads the trajectory, not the answer: the score is the points of the last ``[score P/M]``
line a game tool returned, over the instance's max points. Tool results come from the server,
and the engines never echo raw agent text, so the agent cannot forge the line. Without a
trajectory (static checks) an answer scores 1.0 only if it carries the instance's completion
code, which the game reveals on winning and nothing else knows.

Budgets are stated in walkthrough moves: ``spec.metadata["reference_steps"]`` is the length of
the oracle's walkthrough, the default budget and turn limit grow with it, and Timely-Eval's
relative budgets multiply it by a policy's calibrated time per step.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from timely.clock import VirtualClock
from timely.errors import TaskError, ToolError
from timely.policies.base import Deadline
from timely.rng import make_rng
from timely.task import SPLITS, ScriptedSolution, Split, Task, TaskSpec
from timely.types import ToolCall
from timely_tools.games.common import parse_score_line

if TYPE_CHECKING:
    from timely.types import Trajectory

ToolSet = Literal["verbs", "reference"]
VERB_TOOLS: tuple[str, ...] = (
    "look", "go", "take", "drop", "open", "unlock", "put", "examine", "inventory",
)  # fmt: skip
REFERENCE_TOOLS: tuple[str, ...] = (
    "step", "get_available_actions", "get_score", "get_max_score", "end_game",
)  # fmt: skip
TOOL_SETS: dict[str, tuple[str, ...]] = {"verbs": VERB_TOOLS, "reference": REFERENCE_TOOLS}
NEW_GAME_TOOL = "game_new"

BUDGET_BASE_S = 20.0
BUDGET_PER_STEP_S = 8.0  # ~6x a fast model's move with 1 s tools: room to explore, not to dawdle
SETUP_TIMEOUT_S = 600.0  # generating a TextWorld game takes seconds; a ROM loads in milliseconds
_SETUP_ATTEMPTS = 3  # game_new is retried only after an injected fault
_CODE_CHARS = string.ascii_uppercase + string.digits
STOP_ANSWER = "I am out of time, so I stop here."

TOOLS_HELP = {
    "verbs": "look, go, take, drop, open, unlock, put, examine and inventory (one tool per move)",
    "reference": "step (one text command per call, e.g. 'go north'), get_available_actions, "
    "get_score, get_max_score and end_game",
}
ANSWER_HELP = (
    "Every tool call takes time, and every game observation ends with your score as "
    "`[score P/M]`. When the game says you have won, or when you decide to stop (time is "
    "short, or you are stuck), reply without calling a tool: say what you achieved, with the "
    "completion code if the game gave you one. Your score is the points you have when you reply; "
    "a reply after the time budget counts for nothing."
)

Move = tuple[str, dict[str, Any]]  # (tool name, arguments)


def completion_code(task_id: str, split: str, seed: int) -> str:
    """The secret an instance's game reveals on winning (8 letters and digits)."""
    rng = make_rng(task_id, split, seed, "completion-code")
    return "".join(_CODE_CHARS[int(i)] for i in rng.integers(len(_CODE_CHARS), size=8))


def check_split(split: str) -> Split:
    """``split`` if it is one, else a TaskError."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def check_level(task_id: str, difficulty: Any, default: int, top: int) -> int:
    """The difficulty level to build (``default`` for None), or a TaskError naming the range."""
    level = default if difficulty is None else difficulty
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= top:
        raise TaskError(f"{task_id}: difficulty must be an integer 1..{top}, got {difficulty!r}")
    return level


def check_tool_set(task_id: str, tool_set: str, allowed: Sequence[str]) -> ToolSet:
    """``tool_set`` if this family offers it, else a TaskError."""
    if tool_set not in allowed:
        raise TaskError(f"{task_id}: unknown tool_set {tool_set!r}; use one of {list(allowed)}")
    return tool_set  # type: ignore[return-value]


def budget_for(reference_steps: int) -> float:
    """Default budget: 20 s plus 8 s a walkthrough move."""
    return BUDGET_BASE_S + BUDGET_PER_STEP_S * reference_steps


def turns_for(reference_steps: int) -> int:
    """Default turn limit: three turns a walkthrough move (exploring costs moves), plus 10."""
    return 3 * reference_steps + 10


class GameTask(Task):
    """A game played on the tool server; subclasses build the spec, game and walkthrough.

    A subclass's ``__init__`` sets ``spec`` (through :meth:`_make_spec`), ``new_game`` (the
    ``game_new`` arguments, without the code), ``moves`` (the walkthrough as tool calls) and
    ``max_score``.
    """

    family: ClassVar[str] = "games"
    task_id: ClassVar[str]
    new_game: dict[str, Any]
    moves: list[Move]
    max_score: int
    code: str

    def _make_spec(
        self,
        *,
        seed: int,
        split: Split,
        difficulty: int,
        prompt: str,
        tool_set: ToolSet,
        metadata: dict[str, Any],
    ) -> TaskSpec:
        self.code = completion_code(self.task_id, split, seed)
        steps = len(self.moves)
        return TaskSpec(
            id=self.task_id,
            seed=seed,
            split=split,
            difficulty=difficulty,
            prompt=prompt,
            tools=TOOL_SETS[tool_set],
            default_budget_s=budget_for(steps),
            max_turns=turns_for(steps),
            time_status="push",
            metadata={
                "family": self.family,
                "reference_steps": steps,
                "max_score": self.max_score,
                "tool_set": tool_set,
            }
            | metadata,
        )

    # -- scoring -----------------------------------------------------------------------------
    def target(self) -> str | None:
        """``"sha256:" + hexdigest`` of the completion code (its 8 characters in UTF-8).

        The code is what the agent must discover by winning, so the record keeps only its
        digest: an audit checks a claimed code against it without the record giving it away.
        The score itself is read from the trajectory's ``[score P/M]`` lines.
        """
        return self.digest(self.code)

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """Points of the last game observation over the max points (see the module docstring).

        Args:
            answer: the final answer; only read without a trajectory (the completion code).
            trajectory: the episode; its last ``[score P/M]`` line from a game tool counts.
        """
        if trajectory is None:
            found = answer and re.search(rf"\b{re.escape(self.code)}\b", answer)
            return 1.0 if found else 0.0
        points = None
        for step in trajectory.steps:
            for result in step.tool_results:
                if result.ok and result.name in self.spec.tools:
                    parsed = parse_score_line(result.content)
                    if parsed is not None:
                        points = parsed[0]
        if points is None or self.max_score <= 0:
            return 0.0
        return min(1.0, max(0.0, points / self.max_score))

    def solution(self) -> ScriptedSolution:
        """The walkthrough, one move per call, then an answer that carries the completion code."""
        calls = [
            ToolCall(id=f"move_{i}", name=name, arguments=args)
            for i, (name, args) in enumerate(self.moves)
        ]
        # A move that changes nothing, for policies that waste turns (scripted ``slip``).
        idle = "look" if "look" in self.spec.tools else "get_score"
        return ScriptedSolution(
            calls=calls,
            answer=f"I won the game. Completion code: {self.code}.",
            fallback_answers=[STOP_ANSWER],
            idle_call=ToolCall(id="idle", name=idle, arguments={}),
        )

    # -- the game on the tool server ---------------------------------------------------------
    async def setup(self, tools: Any, session_id: str) -> None:
        """Create the episode's session and start its game there.

        Raises:
            TaskError: no tool backend, or the server cannot start this game (it does not serve
                ``game_new``, lacks an optional package, or cannot read the game file).
            ToolError: the server kept failing (injected faults) or refused the session.
        """
        if tools is None:
            raise TaskError(f"{self.id} needs a tool server (it hosts the game)")
        create = getattr(tools, "create_session", None)
        if create is not None:
            try:
                await create(session_id)
            except ToolError as exc:
                if "session_exists" not in str(exc):
                    raise
                # Never end a live session to take its id: it is another episode's game.
                raise ToolError(
                    f"{self.id}: session {session_id!r} is already live on the tool server, "
                    "so another episode is playing in it; give every episode its own "
                    "session_id (run_episode makes a unique one when none is given)"
                ) from None
            self._sessions().add(session_id)
        # A private clock: starting the game is the harness's time, not the agent's.
        clock = VirtualClock()
        arguments = {**self.new_game, "code": self.code}
        for attempt in range(_SETUP_ATTEMPTS):
            result = await tools.call(
                NEW_GAME_TOOL,
                arguments,
                call_id=f"setup_{attempt}",
                session_id=session_id,
                deadline=Deadline(at=clock.now() + SETUP_TIMEOUT_S, clock=clock),
            )
            if result.ok:
                return
            if result.fault is None:
                break
        if result.error in ("unknown_tool", "tool_input_error", "invalid_arguments"):
            raise TaskError(f"{self.id}: the tool server cannot start the game: {result.content}")
        raise ToolError(f"{self.id}: starting the game failed: {result.content}")

    async def teardown(self, tools: Any, session_id: str) -> None:
        """End the session ``setup`` created (the server then closes the game)."""
        sessions = self._sessions()
        end = getattr(tools, "end_session", None)
        if session_id in sessions:
            sessions.discard(session_id)
            if end is not None:
                await end(session_id)

    def _sessions(self) -> set[str]:
        if not hasattr(self, "_live_sessions"):
            self._live_sessions: set[str] = set()
        return self._live_sessions
