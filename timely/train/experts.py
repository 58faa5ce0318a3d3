"""Budget-aware experts for cold-start data, played through the one loop over drawn settings
(:func:`play_experts`).

The expert replays a task's reference solution and, when the next step would not fit in the
time left, answers with the best partial result it has
(:attr:`~timely.task.ScriptedSolution.fallback_answers`: the sub-answers finished, the points
reached). ``scripted:timely`` decides on the time the conversation *shows* (the status pushed
after each tool result, or its own ``get_duration`` reads where the time is pulled) against the
step cost those readings imply, so every decision in the data follows what the model will see;
``scripted:budget-aware`` reads its deadline instead and, where the time is pulled, needs
:class:`ClockReadingExpert` to make its readings visible. An expert episode cut off at the
budget is not dropped: :func:`play_expert` replays it with the expert made to answer a step
earlier until the answer is in time (:func:`salvage`), so short budgets yield "time is short:
answer with what you have" examples. Things about the experts that matter for data:

* **Its safety margin.** It stops when less than ``safety`` x its average step time is left. At
  the scripted default (1.5) the answer turn itself often does not fit - with the embedded
  model's speed profile a turn's prefill costs as much as a fast tool call - so short budgets end
  in cut-offs rather than answers. ``DataConfig.expert_options`` sets 2.0, which leaves a whole
  step for the answer: at 0.5x-1x of its unconstrained time the expert then answers early in
  almost every episode instead of being cut off.
* **Reading the clock.** The scripted policy reads the time from its deadline, which a model never
  sees. Where the time is pushed after each tool result the conversation shows the model what
  the expert knew; where it is only *pulled* (``get_duration``), it would not. So in pull mode
  :class:`ClockReadingExpert` makes the expert call ``get_duration`` every few steps and, where
  one more turn fits, before it stops early: most early answers then follow a clock reading the
  model can see (measured on the default settings: about 80%; the rest had no time left for one).
* **What its turns cost.** The scripted policy estimates tokens as characters / 4 and counts only
  a call's name and arguments, so on a virtual clock its turns cost about half of what the
  embedded model is charged for the same text (prompts 1.3-1.7x, replies ~3x more tokens by the
  tokenizer). :class:`TokenizedExpert` reports the tokenizer's counts of exactly the prompt and
  reply text a local policy would see and write, so the clock readings in the data are the ones
  the trained model will meet; :func:`tokenized_calibrator` calibrates relative budgets against
  the same counts.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from timely.budget import GET_DURATION_TOOL
from timely.config import config_hash
from timely.policies.base import Deadline, Policy, bind_policy, make_policy
from timely.policies.scripted import CLOCK_TEXT, prompt_chars
from timely.prompting import CHARS_PER_TOKEN, ToolFormat, assistant_text, prompt_token_ids
from timely.rng import make_rng
from timely.rollout import Runtime
from timely.task import ScriptedSolution, make_task
from timely.train.config import DataConfig
from timely.train.episodes import Setting, Unconstrained, draw_setting
from timely.types import Completion, EndReason, Message, ToolCall, Trajectory

if TYPE_CHECKING:
    from timely.task import Task

# An early stop reads the clock first when this many average turns are left. A clock read costs
# one generation but no tool latency, so it fits where a full step would not; 1.2 measured: 2 in
# 60 pull-mode treasure episodes were cut off by the extra turn, against 1 in 3 early answers
# without a visible reading at 2.0.
ROOM_TURNS = 1.2


class ClockReadingExpert:
    """A scripted expert that calls the clock tool every ``every`` tool results, and before it
    stops early, so its decisions follow what the conversation shows.

    The inner expert plays on the conversation without the clock turns (it counts tool results
    to know where it is in its script); its reply is then either returned or replaced by a
    ``get_duration`` call. An early stop is preceded by a clock read only when there is room
    for one more turn (``ROOM_TURNS`` x the average turn so far), else the expert answers at once.

    Args:
        inner: a scripted policy (unbound or bound).
        every: tool results between clock reads; 0 never reads (then it is ``inner``).
        task: the task being played (set by ``bind``).
    """

    def __init__(self, inner: Policy, *, every: int, task: Task | None = None) -> None:
        self.inner, self.every, self.task = inner, every, task
        self.name = inner.name
        self._started_at: float | None = None

    def bind(self, task: Task) -> ClockReadingExpert:
        return ClockReadingExpert(bind_policy(self.inner, task), every=self.every, task=task)

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        if self._started_at is None:
            self._started_at = deadline.clock.now()
        offered = {t["function"]["name"] for t in tools}
        if self.every <= 0 or GET_DURATION_TOOL not in offered:
            return await self.inner.generate(messages, tools, deadline=deadline)
        work = without_clock_turns(messages)
        completion = await self.inner.generate(work, tools, deadline=deadline)
        # The inner expert counted the prompt without the clock turns; the model sees them.
        completion = completion.model_copy(
            update={"prompt_tokens": _prompt_tokens(messages, tools)}
        )
        since = _results_since_clock(messages)
        if since == 0:  # the start, or the clock was just read: decide on what it said
            return completion
        if completion.tool_calls:
            return self._read_clock(messages, tools) if since >= self.every else completion
        assert self.task is not None  # bound by the loop
        done = sum(1 for m in work if m.role == "tool")
        early = done < len(self.task.solution().calls)
        if early and self._room_for_a_turn(messages, deadline):
            return self._read_clock(messages, tools)
        return completion

    def _room_for_a_turn(self, messages: Sequence[Message], deadline: Deadline) -> bool:
        assert self._started_at is not None
        turns = sum(1 for m in messages if m.role == "assistant")
        per_turn = (deadline.clock.now() - self._started_at) / max(turns, 1)
        return deadline.remaining() > ROOM_TURNS * per_turn

    def _read_clock(self, messages: Sequence[Message], tools: list[dict[str, Any]]) -> Completion:
        call = ToolCall(id="clock", name=GET_DURATION_TOOL, arguments={})
        out_chars = len(CLOCK_TEXT) + len(GET_DURATION_TOOL) + 2
        return Completion(
            text=CLOCK_TEXT,
            tool_calls=[call],
            prompt_tokens=_prompt_tokens(messages, tools),
            completion_tokens=math.ceil(out_chars / CHARS_PER_TOKEN),
            finish_reason="tool_calls",
        )


class TokenizedExpert:
    """A text-only policy whose completions report a local model's token counts.

    Prompt tokens are :func:`~timely.prompting.prompt_token_ids` of the conversation, completion
    tokens the reply's :func:`~timely.prompting.assistant_text` plus the end-of-turn token: what
    :class:`~timely.policies.hf.HFPolicy` would report for the same text, so a virtual clock
    charges what the local model would be charged. ``count_prompt_tokens`` gives the loop the
    same count for its budget-derived token cap.

    Args:
        inner: the policy that decides (a scripted expert, possibly a clock reader).
        tokenizer: the local model's tokenizer.
        tool_format: how tools reach the prompt (as the local policy renders them).
    """

    def __init__(self, inner: Policy, tokenizer: Any, tool_format: ToolFormat = "auto") -> None:
        self.inner, self.tokenizer, self.tool_format = inner, tokenizer, tool_format
        self.name = inner.name

    def bind(self, task: Task) -> TokenizedExpert:
        return TokenizedExpert(bind_policy(self.inner, task), self.tokenizer, self.tool_format)

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> int:
        return len(prompt_token_ids(self.tokenizer, messages, tools, tool_format=self.tool_format))

    async def generate(
        self, messages: list[Message], tools: list[dict[str, Any]], *, deadline: Deadline
    ) -> Completion:
        completion = await self.inner.generate(messages, tools, deadline=deadline)
        text = assistant_text(completion.text, completion.tool_calls)
        reply = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        counts = {
            "prompt_tokens": self.count_prompt_tokens(messages, tools),
            "completion_tokens": reply,
        }
        return completion.model_copy(update=counts)


def make_expert(
    spec: str, options: dict[str, Any], *, clock_every: int = 0, tokenizer: Any = None
) -> Policy:
    """The expert policy for one episode.

    Args:
        spec: the scripted policy spec (``scripted:budget-aware``).
        options: its options (``safety``, ...).
        clock_every: read the clock tool every this many tool results (0: never; give it only
            where the time is pulled). ``scripted:timely`` reads it itself, ``clock_every`` as
            its option unless ``options`` set one.
        tokenizer: report this tokenizer's token counts (:class:`TokenizedExpert`); None keeps
            the scripted estimate.
    """
    if spec.removeprefix("scripted:") == "timely":  # it reads the clock itself
        expert = make_policy(spec, **({"clock_every": clock_every} | options))
        return TokenizedExpert(expert, tokenizer) if tokenizer is not None else expert
    expert = make_policy(spec, **options)
    if clock_every > 0:
        expert = ClockReadingExpert(expert, every=clock_every)
    return TokenizedExpert(expert, tokenizer) if tokenizer is not None else expert


def tokenized_calibrator(
    runtime: Runtime, speed: Any, tokenizer: Any, solution: str = "reference"
) -> Unconstrained:
    """The oracle's unconstrained time with ``tokenizer``'s token counts, for
    :func:`~timely.train.episodes.draw_setting`: relative budgets of data and RL rollouts alike
    scale the oracle's time (replaying ``solution``, see :func:`expert_view`) with turns charged
    by the tokenizer, so budgets match the clock the model's turns are charged on. Measured and
    cached by the runtime's :class:`~timely.rollout.Calibrator`."""
    expert = TokenizedExpert(make_policy("scripted:oracle"), tokenizer)
    name = f"scripted:oracle|tokenizer={getattr(tokenizer, 'name_or_path', '') or id(tokenizer)}"

    async def unconstrained(task: Task, latency: str, time_mode: str) -> float:
        view = expert_view(task, solution)
        return await runtime.calibrator.seconds(
            view,
            latency=latency,
            time_mode=time_mode,
            speed=speed,
            expert=expert,
            expert_name=name,
            variant="direct" if isinstance(view, _DirectView) else "reference",
        )

    return unconstrained


_EXPRESSION = re.compile(r"^Compute the exact value of the expression (?P<expr>.+)\.$")


def direct_solution(task: Task) -> ScriptedSolution | None:
    """One calculator call with the whole expression, for a math task whose statement is an
    expression (``math/arithmetic``); None for any other task."""
    problem = getattr(task, "problem", None)
    match = _EXPRESSION.match(getattr(problem, "text", "") or "")
    reference = task.solution()
    if match is None or not reference.calls or reference.calls[0].name != "calculator":
        return None
    call = ToolCall(id="call_0", name="calculator", arguments={"expression": match["expr"]})
    fallbacks = reference.fallback_answers[:1] + [reference.answer]
    return ScriptedSolution(calls=[call], answer=reference.answer, fallback_answers=fallbacks)


class _DirectView:
    """A task that replays :func:`direct_solution`; everything else is the task's own."""

    def __init__(self, task: Task, solution: ScriptedSolution) -> None:
        self._task, self._solution = task, solution

    def solution(self) -> ScriptedSolution:
        return self._solution

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def expert_view(task: Task, solution: str) -> Task:
    """``task`` as the expert plays it: with ``solution="direct"`` its reference solution is
    replaced by :func:`direct_solution` where there is one (scoring, prompts and tools are the
    task's own)."""
    if solution != "direct":
        return task
    direct = direct_solution(task)
    return task if direct is None else _DirectView(task, direct)  # type: ignore[return-value]


def without_clock_turns(messages: Sequence[Message]) -> list[Message]:
    """``messages`` without ``get_duration`` calls and results (an assistant turn that only
    read the clock disappears)."""
    out: list[Message] = []
    for m in messages:
        if m.role == "tool" and m.name == GET_DURATION_TOOL:
            continue
        if m.role == "assistant" and m.tool_calls:
            calls = [c for c in m.tool_calls if c.name != GET_DURATION_TOOL]
            if not calls:
                continue
            if len(calls) != len(m.tool_calls):
                m = m.model_copy(update={"tool_calls": calls})
        out.append(m)
    return out


def clock_reads(messages: Sequence[Message]) -> int:
    """How many times the conversation called the clock tool."""
    return sum(
        1
        for m in messages
        if m.role == "assistant"
        for c in m.tool_calls or []
        if c.name == GET_DURATION_TOOL
    )


def _results_since_clock(messages: Sequence[Message]) -> int:
    count = 0
    for m in reversed(messages):
        if m.role == "tool":
            if m.name == GET_DURATION_TOOL:
                return count
            count += 1
    return count


def _prompt_tokens(messages: Sequence[Message], tools: list[dict[str, Any]]) -> int:
    return math.ceil(prompt_chars(list(messages), tools) / CHARS_PER_TOKEN)


# -- playing the experts ---------------------------------------------------------------------
async def play_experts(
    config: DataConfig, *, tokenizer: Any = None, progress: bool = True
) -> list[Trajectory]:
    """Every expert episode of ``config``: per task, train seeds 0..N-1, one drawn setting each.

    Settings are drawn from one Generator per task (seeded by ``config.seed`` and the task id),
    so adding a task does not change the others' episodes.

    Args:
        config: the data config.
        tokenizer: the tokenizer whose counts charge expert turns (needed with ``timing:
            tokenizer``).
        progress: show a rich progress bar.
    """
    played: list[Trajectory] = []
    with _bar(progress, sum(config.episodes_for(t) for t in config.tasks)) as advance:
        async with Runtime(clock="virtual", seed=config.seed) as runtime:
            for task_id in config.tasks:
                rng = make_rng("cold-start", config.seed, task_id)
                options = dict(config.task_options.get(task_id, {}))
                for seed in range(config.episodes_for(task_id)):
                    task = make_task(task_id, seed=seed, split="train", **options)
                    traj = await play_expert(config, runtime, task, rng, options, tokenizer)
                    played.append(traj)
                    advance(task_id)
    return played


async def play_expert(
    config: DataConfig,
    runtime: Runtime,
    task: Task,
    rng: Any,
    options: dict[str, Any],
    tokenizer: Any = None,
) -> Trajectory:
    """One expert episode of ``task`` under a setting drawn from ``rng``; with ``timing:
    tokenizer`` its turns are charged by ``tokenizer``'s counts, and so is the unconstrained
    time its budget is a multiple of."""
    if config.timing == "estimate":
        tokenizer = None
    elif tokenizer is None:
        raise ValueError("timing: tokenizer needs the SFT model's tokenizer (load_tokenizer)")
    setting = await draw_setting(
        rng,
        runtime,
        task,
        latencies=config.latencies,
        time_modes=config.time_modes,
        multipliers=config.budget_multipliers,
        no_limit_share=config.no_limit_share,
        speed=config.speed,
        unconstrained=(
            tokenized_calibrator(runtime, config.speed, tokenizer, config.solution)
            if tokenizer
            else None
        ),
    )
    view = expert_view(task, config.solution)
    every = config.clock_every if setting.time_mode == "pull" else 0

    async def play(expert_options: dict[str, Any]) -> Trajectory:
        return await runtime.play(
            setting.episode(view, task_options=options),
            make_expert(config.expert, expert_options, clock_every=every, tokenizer=tokenizer),
            task=view,
            reward=config.reward,
            config_hash=config_hash(config),
        )

    traj = await play(dict(config.expert_options))
    if traj.end_reason == EndReason.BUDGET_EXHAUSTED and setting.limited:
        traj = await salvage(traj, lambda cap: play(config.expert_options | {"stop_after": cap}))
    answered = traj.end_reason == EndReason.ANSWERED
    traj.metadata["setting"] = setting_record(setting)
    traj.metadata["task_options"] = options
    traj.metadata["early"] = answered and task_steps(traj) < len(view.solution().calls)
    return traj


async def salvage(cut: Trajectory, replay: Callable[[int], Awaitable[Trajectory]]) -> Trajectory:
    """An expert episode answered in time in place of ``cut``, which the budget cut off.

    The expert is replayed with a cap on its task steps (``stop_after``), one step fewer each
    time, from the steps the cut episode finished down to none, until it answers on time; the
    replay's metadata records ``salvaged`` (the cut episode's steps and elapsed time). Where
    even answering at once is late, ``cut`` comes back unchanged (and the data drops it).

    Args:
        cut: the cut-off episode.
        replay: plays the same episode with the expert capped at the given number of steps.
    """
    for cap in range(task_steps(cut), -1, -1):
        again = await replay(cap)
        if again.end_reason == EndReason.ANSWERED and again.compliant:
            again.metadata["salvaged"] = {"steps": task_steps(cut), "elapsed_s": cut.elapsed_s}
            return again
    return cut


def task_steps(trajectory: Trajectory) -> int:
    """Task tool calls of an episode (clock reads are no steps)."""
    return trajectory.n_tool_calls - clock_reads(trajectory.messages)


def setting_record(setting: Setting) -> dict[str, Any]:
    """What a trajectory's ``metadata["setting"]`` records of its drawn setting (the dataset's
    ``multiplier`` and ``time_mode`` columns come from it)."""
    return {
        "latency": setting.latency,
        "time_mode": setting.time_mode,
        "budget_s": setting.budget_s if setting.limited else None,
        "multiplier": setting.multiplier,
        "speed": setting.speed.name,
    }


@contextlib.contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Any]:
    from timely.progress import ProgressDisplay

    with ProgressDisplay(enabled=enabled) as display:
        bar = display.bar("experts", total, unit="episodes")
        yield lambda what: bar.advance(note=what)
