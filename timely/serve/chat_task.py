"""A task made from a chat request: the client's conversation, the tools it may use, no gold.

The agent loop plays tasks; a served chat is one more task. It starts from the client's messages
(system prompt, history, the last user turn), offers the named tool-server tools, and has no
reference answer, so a served chat is judged by whether it answered within its budget
(``compliant``); its ``score`` is 0 by definition.
"""

from __future__ import annotations

import contextlib
from typing import Any

from timely.errors import TaskError, ToolServerUnavailable
from timely.task import ScriptedSolution, Task, TaskSpec
from timely.types import Message, Trajectory

CHAT_TASK_ID = "serve/chat-v1"


class ChatTask(Task):
    """One chat request as a task.

    Args:
        messages: the conversation; the last message must be a user turn.
        tools: names of the tool-server tools offered.
        max_turns: model turns at most.
        budget_s: the request's budget (recorded as the spec's default budget).
    """

    family = "serve"

    def __init__(
        self, messages: list[Message], tools: tuple[str, ...], max_turns: int, budget_s: float
    ) -> None:
        if not messages or messages[-1].role != "user":
            raise TaskError("a chat request must end with a user message")
        self._messages = list(messages)
        self.spec = TaskSpec(
            id=CHAT_TASK_ID,
            seed=0,
            prompt=messages[-1].content,
            tools=tools,
            default_budget_s=budget_s,
            max_turns=max_turns,
            time_status="push",
        )

    def opening_messages(self) -> list[Message]:
        return list(self._messages)

    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        return 0.0  # no gold: a served chat is judged by answering on time

    def solution(self) -> ScriptedSolution:
        raise TaskError(
            "a chat request has no reference solution, so scripted policies cannot answer it; "
            "send a registered task instead (POST /v1/runs with {'task': 'math/arithmetic', "
            "'seed': 0}), or serve a model (timely serve --policy llamacpp:smollm2-135m)"
        )

    async def teardown(self, tools: Any, session_id: str) -> None:
        # Stateless tools create their session implicitly on the first call: end it, so a
        # finished or cancelled run leaves nothing behind on the tool server.
        if tools is not None and self.spec.tools:
            with contextlib.suppress(ToolServerUnavailable, Exception):
                await tools.end_session(session_id)
