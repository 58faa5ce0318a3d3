"""Rollout throughput: unique tokens of a group and the metrics built from an engine's counters."""

from __future__ import annotations

from dataclasses import dataclass

from timely.train.throughput import engine_stats, rollout_throughput, unique_tokens
from timely.types import EndReason, Step, Trajectory


def _episode(*turns: tuple[list[int], list[int]]) -> Trajectory:
    steps = [
        Step(
            index=i,
            clock="virtual",
            started_at=0.0,
            ended_at=0.0,
            gen_s=0.0,
            prompt_tokens=len(prompt),
            completion_tokens=len(sampled),
            prompt_token_ids=prompt,
            token_ids=sampled,
        )
        for i, (prompt, sampled) in enumerate(turns)
    ]
    return Trajectory(
        task_id="t",
        seed=0,
        clock="virtual",
        budget_s=1.0,
        messages=[],
        steps=steps,
        end_reason=EndReason.ANSWERED,
    )


PROMPT = list(range(100, 110))  # 10 tokens the group shares


def test_a_shared_prompt_counts_once_and_a_turn_adds_only_what_is_new():
    first = _episode((PROMPT, [1, 2, 3]), (PROMPT + [1, 2, 3, 50, 51], [4, 5]))
    second = _episode((PROMPT, [7, 8]))
    # prompt 10 + first's 3 sampled + 2 observation + 2 sampled + second's 2 sampled
    assert unique_tokens([first, second]) == 10 + 3 + 2 + 2 + 2
    assert unique_tokens([first]) == 10 + 3 + 2 + 2


def test_rollouts_that_sample_the_same_tokens_each_count_them():
    """Only the shared prompt is free: every row's sampled tokens must be decoded, even where
    two rollouts happen to agree (no engine knows that in advance)."""
    same = [_episode((PROMPT, [1, 2, 3])), _episode((PROMPT, [1, 2, 3]))]
    assert unique_tokens(same) == 10 + 3 + 3


def test_a_broken_prefix_counts_its_tail_in_full():
    broken = _episode((PROMPT, [1, 2]), (PROMPT + [9, 9, 1, 2], [3]))  # re-rendered turn
    assert unique_tokens([broken]) == 10 + 2 + 4 + 1


def test_episodes_without_token_records_count_nothing():
    bare = _episode((PROMPT, [1]))
    bare.steps[0].prompt_token_ids = None
    assert unique_tokens([bare]) == 0


@dataclass
class _Stats:
    requests: int = 2
    full_prefills: int = 1
    reused_tokens: int = 30
    prefill_tokens: int = 10
    decode_tokens: int = 7
    processed_tokens: int = 21


class _Policy:
    stats = _Stats()


def test_metrics_from_the_engine_counters():
    group = [_episode((PROMPT, [1, 2, 3]), (PROMPT + [1, 2, 3, 50, 51], [4, 5]))]
    metrics = rollout_throughput([group], 2.0, engine_stats(_Policy()))
    assert metrics["episodes_per_s"] == 0.5 and metrics["gen_tokens_per_s"] == 2.5
    assert metrics["unique_tokens"] == 17 and metrics["processed_tokens"] == 21
    assert metrics["reuse_share"] == 30 / 40 and metrics["work_ratio"] == 21 / 17
    assert metrics["processed_tokens_per_s"] == 10.5


def test_an_engine_without_counters_leaves_the_work_fields_empty():
    metrics = rollout_throughput([[_episode((PROMPT, [1]))]], 1.0, engine_stats(object()))
    assert metrics["unique_tokens"] == 11
    assert metrics["processed_tokens"] is None and metrics["work_ratio"] is None
