"""Contract checks for task families, in the spirit of Gymnasium's ``check_env``.

A family that passes :func:`check_task` is deterministic per (id, seed, split), keeps its train
and test splits apart, scores in [0, 1] with its own gold answer at 1 and junk at 0, ships a
solution that only calls the tools it declares, and states a deterministic target (None, the
gold as text, or a ``sha256:`` digest of a private one). Run it in the tests of every
registered family; third-party families can run it in theirs.
"""

from __future__ import annotations

import re

from timely.budget import GET_DURATION_TOOL
from timely.task import SPLITS, TASKS, ScriptedSolution, Task, TaskSpec, make_task

# Answers no task should accept: empty, junk, and a number no generator produces.
JUNK_ANSWERS: tuple[str | None, ...] = (
    None,
    "",
    "   ",
    "I don't know.",
    "Answer:",
    "Answer: banana",
    "<answer></answer>",
    "<answer>banana</answer>",
    "\\boxed{}",
    "Answer: -987654321.123456789",
    "}{)(%$#@!" * 20,
)


_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def check_task(task_id: str, n_seeds: int = 20, *, difficulty: int | None = None) -> None:
    """Check the static task contract over ``n_seeds`` seeds of both splits.

    Args:
        task_id: a registered task id (or alias).
        n_seeds: seeds 0..n_seeds-1 are built in each split.
        difficulty: passed to every instance (None: the family's default).

    Raises:
        AssertionError: with a message naming the id, seed, split and what to fix.
    """
    prompts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for seed in range(n_seeds):
        by_split: dict[str, Task] = {}
        for split in SPLITS:
            where = f"{task_id} seed={seed} split={split}"
            task = make_task(task_id, seed=seed, split=split, difficulty=difficulty)
            again = make_task(task_id, seed=seed, split=split, difficulty=difficulty)
            _check_spec(task, task_id, seed, split, where)
            _check(
                task.spec == again.spec,
                f"{where}: two builds gave different specs; "
                "derive every random choice from timely.rng.make_rng(id, split, seed)",
            )
            solution = task.solution()
            _check(solution == again.solution(), f"{where}: two builds gave different solutions")
            _check_solution(task, solution, where)
            _check_scores(task, solution, where)
            _check_target(task, again, where)
            by_split[split] = task
            prompts[split].setdefault(task.spec.prompt, seed)
        _check(
            by_split["train"].spec.prompt != by_split["test"].spec.prompt,
            f"{task_id} seed={seed}: train and test built the same instance; put the split "
            "in the RNG stream",
        )
    shared = set(prompts["train"]) & set(prompts["test"])
    if shared:
        prompt = next(iter(shared))
        raise AssertionError(
            f"{task_id}: train seed {prompts['train'][prompt]} and test seed "
            f"{prompts['test'][prompt]} share a prompt; splits must be disjoint by construction "
            f"(e.g. keep a problem only in the split its text hashes to):\n{prompt[:300]}"
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_spec(task: Task, task_id: str, seed: int, split: str, where: str) -> None:
    spec = task.spec
    _check(isinstance(spec, TaskSpec), f"{where}: task.spec must be a TaskSpec")
    _check(
        spec.seed == seed and spec.split == split,
        f"{where}: spec says seed={spec.seed} split={spec.split}",
    )
    _check(
        spec.id in TASKS and TASKS.get(spec.id) is TASKS.get(task_id),
        f"{where}: spec.id {spec.id!r} must be the registered (versioned) id of this class",
    )
    _check(bool(spec.prompt.strip()), f"{where}: empty prompt")
    _check(
        TaskSpec.model_validate_json(spec.model_dump_json()) == spec,
        f"{where}: the spec does not survive a JSON round trip; keep metadata JSON-safe",
    )


def _check_solution(task: Task, solution: ScriptedSolution, where: str) -> None:
    allowed = set(task.spec.tools) | {GET_DURATION_TOOL}
    ids = [c.id for c in solution.calls]
    _check(len(ids) == len(set(ids)), f"{where}: solution tool-call ids repeat: {ids}")
    idle = [solution.idle_call] if solution.idle_call is not None else []
    for call in [*solution.calls, *idle]:
        _check(
            call.name in allowed,
            f"{where}: solution calls {call.name!r}, not in spec.tools {task.spec.tools}",
        )
    n_fallbacks = len(solution.fallback_answers)
    _check(
        n_fallbacks <= len(solution.calls) + 1,
        f"{where}: {n_fallbacks} fallback answers for {len(solution.calls)} calls; "
        "fallback_answers[i] is the answer after i results, so at most calls + 1",
    )


def _check_scores(task: Task, solution: ScriptedSolution, where: str) -> None:
    gold = task.score(solution.answer, None)
    _check(gold == 1.0, f"{where}: the solution's own answer {solution.answer!r} scores {gold}")
    for junk in JUNK_ANSWERS:
        value = task.score(junk, None)
        _check(value == 0.0, f"{where}: junk answer {junk!r} scores {value}, expected 0.0")
    for answer in solution.fallback_answers:
        value = task.score(answer, None)
        _check(0.0 <= value <= 1.0, f"{where}: answer {answer!r} scores {value}, outside [0, 1]")


def _check_target(task: Task, again: Task, where: str) -> None:
    target = task.target()
    _check(
        target == again.target(),
        f"{where}: two builds gave different targets {target!r} and {again.target()!r}; "
        "derive the gold from (seed, split) only",
    )
    if target is None:
        return
    _check(
        isinstance(target, str) and bool(target.strip()),
        f"{where}: target() must be None or non-empty text, got {target!r}",
    )
    if target.startswith("sha256:"):
        _check(
            _DIGEST_RE.fullmatch(target) is not None,
            f"{where}: target {target!r} starts like a digest but is not 'sha256:' and 64 "
            "lowercase hex digits; use Task.digest(text)",
        )


async def check_task_with_loop(
    task_id: str,
    n_seeds: int = 5,
    *,
    latency: str = "constant:1.0",
    difficulty: int | None = None,
) -> None:
    """Check that the scripted oracle solves the task within its default budget.

    Plays ``n_seeds`` test episodes through the real agent loop on a
    :class:`~timely.rollout.Runtime`: a virtual clock and an in-process tool server (the
    ``default`` of :mod:`timely.tool_servers`) with ``latency`` per call.

    Raises:
        AssertionError: naming the seed, how the episode ended and how long it took.
    """
    from timely.budget import Budget
    from timely.rollout import EpisodeSpec, Runtime

    async with Runtime(clock="virtual") as runtime:
        policy = await runtime.policy("scripted:oracle")
        for seed in range(n_seeds):
            task = make_task(task_id, seed=seed, split="test", difficulty=difficulty)
            budget = Budget(seconds=task.spec.default_budget_s)
            spec = EpisodeSpec(
                task_id=task_id,
                seed=seed,
                difficulty=difficulty,
                policy="scripted:oracle",
                latency=latency,
                budget=budget,
            )
            traj = await runtime.play(spec, policy, task=task)
            _check(
                traj.score == 1.0 and traj.compliant,
                f"{task_id} seed={seed}: the scripted oracle ended {traj.end_reason.value} "
                f"with score {traj.score} after {traj.elapsed_s:.2f}s of a "
                f"{budget.seconds:g}s default budget ({traj.error or 'no error'}); the default "
                "budget must leave room for the reference solution",
            )
