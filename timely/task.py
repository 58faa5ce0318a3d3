"""The task contract: a seeded, self-contained environment the agent loop plays.

A task family is a :class:`Task` subclass registered with ``@register_task("family/name-v1")``.
``make_task(id, seed=..., split=...)`` builds one instance. The frozen, serialisable half is the
:class:`TaskSpec` (prompt, tools, default budget); ``score`` turns a final answer into [0, 1].
Ids carry a version: a change that alters scores bumps it, and leaderboards key on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from timely.errors import TaskError
from timely.extras import require_extra
from timely.registry import Registry
from timely.types import Message, ToolCall

if TYPE_CHECKING:
    from timely.types import Trajectory

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


class TaskSpec(BaseModel):
    """Everything about one task instance that the agent may see."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Registered task id with version, e.g. 'math/arithmetic-v1'.")
    seed: int = Field(description="Episode seed; with split and id it fixes the instance.")
    split: Split = "test"
    difficulty: int = Field(1, ge=1, description="1 = easiest.")
    system: str | None = Field(None, description="Optional system prompt.")
    prompt: str = Field(description="The user turn (the budget line is appended by the loop).")
    tools: tuple[str, ...] = Field((), description="Names of tool-server tools this task uses.")
    default_budget_s: float = Field(60.0, gt=0)
    max_turns: int = Field(
        20, ge=1, description="Model turns this task allows unless the run sets its own limit."
    )
    time_status: Literal["push", "pull"] = Field(
        "push", description="Preferred time-status mode when the run says 'auto'."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScriptedSolution(BaseModel):
    """A reference way to solve an instance: tool calls to make, then the final answer.

    Scripted policies replay it. ``fallback_answers[i]`` is the best answer available after the
    first ``i`` tool results (what a budget-aware agent says when it must stop early).
    """

    model_config = ConfigDict(frozen=True)

    calls: list[ToolCall]
    answer: str
    fallback_answers: list[str] = Field(default_factory=list)
    idle_call: ToolCall | None = Field(
        None,
        description="A call that changes nothing (look, get_score): what a scripted policy "
        "wastes a turn on. None: repeating the previous call is harmless for this task.",
    )


class Task(ABC):
    """One task instance: built in __init__ from (seed, split, difficulty); scores answers."""

    family: ClassVar[str] = ""
    # The optional extra of timely-machine the family needs ("ml", "games"; timely/extras.py):
    # make_task and Timely-Eval's checks fail with its install line before any episode runs.
    requires_extra: ClassVar[str | None] = None
    # Constructor options that name a file or directory on the machine that builds the task
    # (a data file, a ROM, a cache): the agent endpoint refuses them from clients unless its
    # operator allows it (`timely serve --allow-task-files`, docs/serving.md#security).
    path_options: ClassVar[frozenset[str]] = frozenset()
    spec: TaskSpec

    @abstractmethod
    def score(self, answer: str | None, trajectory: Trajectory | None = None) -> float:
        """Correctness of a final answer in [0, 1]; ``None`` or malformed answers score 0."""

    @abstractmethod
    def solution(self) -> ScriptedSolution:
        """The reference solution, for scripted oracle policies and tests."""

    def well_formed(self, answer: str | None) -> bool:
        """Whether the final answer has the expected form (the paper reward's format credit)."""
        return bool(answer and answer.strip())

    def target(self) -> str | None:
        """The gold answer this instance is scored against, as text, or None when it has none.
        Tasks whose gold must stay private (a completion code the agent must discover, held-out
        labels) return a digest instead: ``"sha256:" + hexdigest``.

        The record keeps it (``Trajectory.target``), so re-scoring and audits need nothing but
        the record. It must be the same for every build of one (seed, split); see
        :func:`timely.testing.check_task`.
        """
        return None

    @staticmethod
    def digest(text: str) -> str:
        """``"sha256:" + hexdigest`` of ``text`` in UTF-8: how :meth:`target` keeps a gold private.

        Args:
            text: the private gold, serialised as its family documents.
        """
        import hashlib

        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    def opening_messages(self) -> list[Message]:
        """The conversation an episode starts from: the system prompt, then the user turn.

        The loop appends the budget line to the last message, which must be a user turn. Tasks
        built from a chat history (the agent endpoint's ``messages`` requests) override this.
        """
        messages = [Message(role="system", content=self.spec.system)] if self.spec.system else []
        return [*messages, Message(role="user", content=self.spec.prompt)]

    @property
    def id(self) -> str:
        return self.spec.id

    async def setup(self, tools: Any, session_id: str) -> None:  # noqa: B027 - optional hook
        """Create per-episode state on the tool server (stateful tasks override)."""

    async def teardown(self, tools: Any, session_id: str) -> None:  # noqa: B027 - optional hook
        """Free per-episode state."""


# The built-in families (timely_eval.tasks) are entry points of this group, declared in
# pyproject.toml: the core never imports them, a lookup does.
TASKS: Registry[type[Task]] = Registry("task", entry_point_group="timely.tasks")


def register_task(task_id: str, help: str = ""):
    """Class decorator registering a task family under ``task_id``."""
    return TASKS.register(task_id, help=help)


def make_task(
    task_id: str,
    *,
    seed: int,
    split: Split = "test",
    difficulty: int | None = None,
    **options: Any,
) -> Task:
    """Build an instance of a registered task.

    Args:
        task_id: registered id (or alias), e.g. ``math/arithmetic-v1``.
        seed: episode seed.
        split: ``train`` or ``test``; their instances never overlap.
        difficulty: family-specific level (None: the family's default).
        **options: family-specific options (e.g. ``path=`` for tasks that read data files).

    Raises:
        MissingExtra: the family needs an optional extra that is not installed.
        TaskError: the family cannot be built with these options.
    """
    cls = TASKS.get(task_id)
    require_extra(cls.requires_extra, f"task {task_id}")
    kwargs: dict[str, Any] = {"seed": seed, "split": split, **options}
    if difficulty is not None:
        kwargs["difficulty"] = difficulty
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TaskError(
            f"cannot build task {task_id!r} with options {sorted(kwargs)}: {exc}"
        ) from None


def task_names() -> list[str]:
    """Registered task ids and aliases, without importing the families behind them."""
    return TASKS.names()
