"""The training view of a trajectory: token ids, loss mask and sampling log-probs, from the record.

A trainer never re-tokenises text. Each :class:`~timely.types.Step` of a local backend keeps the
prompt ids the model saw, the ids it sampled (stop token included) and their log-probs under the
sampling distribution (:mod:`timely.policies.logprobs`). :func:`training_view` turns those into
one of two forms:

* **sequence** — one token sequence per episode with a loss mask (1 = sampled by the policy;
  0 = the first prompt, tool results, time status, template headers) and the recorded log-probs
  aligned to it (0 where the mask is 0). This is verl's agent-loop shape (``prompt_ids``,
  ``response_ids``, ``response_mask``, ``response_logprobs``). It is valid only when every turn's
  prompt ids start with the previous turn's prompt ids plus its sampled ids (the *prefix
  property*): then the one sequence holds exactly what the model saw at every turn.
* **turns** — one sample per model turn (prompt ids, completion ids, log-probs), TRL's
  per-completion shape. Always valid; the fallback when the prefix property breaks.

The prefix property breaks whenever the next prompt, rendered from the parsed assistant *text*,
does not re-tokenise to the sampled ids: leading or trailing whitespace (the content is
stripped), a tool call written other than ``format_tool_call`` writes it, a non-canonical BPE
split, invalid UTF-8 bytes, a stop token other than the template's ``<|im_end|>``. Then the
sequence form would train on ids the model never sampled (or condition later turns on text it
never saw), so the view falls back to turns and says where and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from timely.errors import TrainingDataError
from timely.types import Step, Trajectory


class ViewForm(StrEnum):
    """Which form :func:`training_view` produced."""

    SEQUENCE = "sequence"
    TURNS = "turns"


@dataclass(frozen=True)
class TurnSample:
    """One model turn as a training sample: exactly what the model saw and sampled.

    Attributes:
        step: the :attr:`Step.index` of the turn.
        prompt_ids: the prompt ids the model saw.
        completion_ids: the sampled ids (stop token included when the turn stopped).
        logprobs: one sampling log-prob per completion id.
        finish_reason: ``stop``, ``length`` or ``deadline`` (a trainer may mask truncated turns).
    """

    step: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: str


@dataclass(frozen=True)
class EpisodeSequence:
    """The whole episode as one sequence (valid only under the prefix property).

    Attributes:
        token_ids: first prompt, then each turn's sampled ids and the non-sampled ids between
            turns (tool results, time status, template headers).
        loss_mask: 1 on sampled ids, 0 elsewhere; same length as ``token_ids``.
        logprobs: the recorded sampling log-prob on sampled ids, 0.0 elsewhere.
        prompt_length: length of the first prompt (verl's ``prompt_ids``; the rest is the
            response).
        turn_spans: per turn, ``(start, end)`` of its sampled ids in ``token_ids``.
    """

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_length: int
    turn_spans: list[tuple[int, int]]


@dataclass(frozen=True)
class TrainingView:
    """The training form of one trajectory.

    Attributes:
        form: ``sequence`` when :attr:`sequence` is set, else ``turns``.
        turns: per-turn samples; present in both forms.
        sequence: the one-sequence form, or None where the prefix property broke.
        reason: why this form (for the turns form: which turn broke the prefix and where).
        broken_at: the :attr:`Step.index` of the first turn whose prompt did not extend the
            previous turn's prompt and sampled ids, or None.
    """

    form: ViewForm
    turns: list[TurnSample]
    sequence: EpisodeSequence | None
    reason: str
    broken_at: int | None = None


def training_view(trajectory: Trajectory) -> TrainingView:
    """Derive the training view of ``trajectory`` from its per-step token records.

    Trailing steps that sampled nothing (the budget ran out before or during the call) are left
    out; every other step must carry its token records.

    Raises:
        TrainingDataError: the trajectory has no token records (a scripted or OpenAI-compatible
            policy, which record text only), or its records are incomplete or inconsistent.
    """
    turns = _turn_samples(trajectory)
    for prev, turn in zip(turns, turns[1:], strict=False):
        mismatch = _prefix_mismatch(prev, turn)
        if mismatch is not None:
            return TrainingView(
                form=ViewForm.TURNS,
                turns=turns,
                sequence=None,
                reason=f"turn {turn.step}'s prompt does not extend turn {prev.step}'s prompt "
                f"and sampled ids: {mismatch}",
                broken_at=turn.step,
            )
    reason = (
        "one turn"
        if len(turns) == 1
        else "every turn's prompt extends the previous prompt and its sampled ids"
    )
    return TrainingView(
        form=ViewForm.SEQUENCE, turns=turns, sequence=_sequence(turns), reason=reason
    )


def _turn_samples(trajectory: Trajectory) -> list[TurnSample]:
    where = f"trajectory {trajectory.task_id} seed {trajectory.seed} ({trajectory.policy or '?'})"
    if all(s.token_ids is None for s in trajectory.steps):
        raise TrainingDataError(
            f"{where} has no token records: only local backends (hf:) record prompt ids, "
            "sampled ids and log-probs. Collect training episodes with an hf: policy, or use "
            "text-level SFT for scripted and OpenAI-compatible policies"
        )
    steps = list(trajectory.steps)
    while steps and not steps[-1].token_ids:  # nothing sampled: nothing to train on
        steps.pop()
    if not steps:
        raise TrainingDataError(f"{where} sampled no tokens: its budget ran out first")
    return [_turn(trajectory, step) for step in steps]


def _turn(trajectory: Trajectory, step: Step) -> TurnSample:
    where = f"trajectory {trajectory.task_id} seed {trajectory.seed}, step {step.index}"
    if step.token_ids is None or step.prompt_token_ids is None or step.logprobs is None:
        raise TrainingDataError(
            f"{where} has no token records although other steps do; a trajectory must come "
            "from one local policy to be trained on"
        )
    if not step.prompt_token_ids:
        raise TrainingDataError(f"{where} records an empty prompt")
    if len(step.logprobs) != len(step.token_ids):
        raise TrainingDataError(
            f"{where} records {len(step.token_ids)} sampled ids but {len(step.logprobs)} log-probs"
        )
    return TurnSample(
        step=step.index,
        prompt_ids=list(step.prompt_token_ids),
        completion_ids=list(step.token_ids),
        logprobs=list(step.logprobs),
        finish_reason=step.finish_reason,
    )


def _prefix_mismatch(prev: TurnSample, turn: TurnSample) -> str | None:
    """Why ``turn.prompt_ids`` does not start with ``prev``'s prompt + completion, or None."""
    expected = prev.prompt_ids + prev.completion_ids
    got = turn.prompt_ids
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            part = "prompt" if i < len(prev.prompt_ids) else "sampled ids"
            return (
                f"first difference at token {i} (in turn {prev.step}'s {part}): "
                f"recorded {want}, next prompt has {have}"
            )
    if len(got) < len(expected):
        return f"the next prompt ({len(got)} ids) is shorter than {len(expected)} ids"
    return None


def _sequence(turns: list[TurnSample]) -> EpisodeSequence:
    tokens = list(turns[0].prompt_ids)
    mask = [0] * len(tokens)
    logprobs = [0.0] * len(tokens)
    spans: list[tuple[int, int]] = []
    for i, turn in enumerate(turns):
        if i > 0:  # tool results, time status, headers: seen, not sampled
            between = turn.prompt_ids[len(tokens) :]
            tokens += between
            mask += [0] * len(between)
            logprobs += [0.0] * len(between)
        start = len(tokens)
        tokens += turn.completion_ids
        mask += [1] * len(turn.completion_ids)
        logprobs += turn.logprobs
        spans.append((start, len(tokens)))
    return EpisodeSequence(
        token_ids=tokens,
        loss_mask=mask,
        logprobs=logprobs,
        prompt_length=len(turns[0].prompt_ids),
        turn_spans=spans,
    )
