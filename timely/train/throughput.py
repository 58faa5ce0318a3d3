"""Rollout throughput: how fast a batch of episodes was played and how much work it took.

Local generation is judged by two figures (issue 19): episodes and generated tokens per second,
and the *work ratio*, tokens the model processed (every forward call's rows x width, padding
included, as ``HFPolicy.stats.processed_tokens`` counts them) over the tokens the episodes
actually consist of. An engine that re-prefills the whole conversation every turn and every
member of a group separately does several times the unique work; one that keeps the KV cache
across turns and shares a group's prompt comes close to 1. The unique tokens are counted from
the trajectories alone (each turn's exact prompt ids and sampled ids), so the same figure
measures any engine. The trainer logs these per batch; ``bench/rollout.py`` sets its goals on
them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from timely.types import Trajectory


def unique_tokens(group: Sequence[Trajectory]) -> int:
    """Tokens a group of episodes consists of, the work no engine can avoid.

    Every turn's sequence (prompt + sampled ids) goes into one token trie per group. Prompt
    tokens count where they are new to the trie: a prompt the ``G`` rollouts share counts once,
    a turn whose prompt extends the previous turn's sequence adds only its new tokens (the
    observations and time status), two rows whose conversations are identical so far share
    them, and where re-rendering breaks the prefix the diverging tail counts in full. Sampled
    tokens count in every episode, even where two rollouts happened to sample the same text:
    each row's tokens must be decoded, since no engine knows in advance that they will agree.

    Args:
        group: the episodes that may share a prompt (a GRPO group; one episode alone also works).
    """
    root: dict[int, Any] = {}
    count = 0
    for trajectory in group:
        for step in trajectory.steps:
            if step.prompt_token_ids is None:
                continue
            sampled = list(step.token_ids or [])
            node = root
            for token in step.prompt_token_ids:
                child = node.get(token)
                if child is None:
                    child = node[token] = {}
                    count += 1
                node = child
            for token in sampled:  # in the trie, so a later prompt that repeats them is free
                node = node.setdefault(token, {})
            count += len(sampled)
    return count


def engine_stats(policy: Any) -> dict[str, int] | None:
    """The policy's engine counters (``HFPolicy.stats``) as a dict, or None for an engine that
    keeps none."""
    stats = getattr(policy, "stats", None)
    if stats is None or not dataclasses.is_dataclass(stats):
        return None
    return {k: int(v) for k, v in dataclasses.asdict(stats).items()}


def rollout_throughput(
    groups: Sequence[Sequence[Trajectory]], seconds: float, stats: dict[str, int] | None
) -> dict[str, float | int | None]:
    """Throughput metrics of one batch of rollouts.

    Args:
        groups: the batch's trajectories, one sequence per group (prompt shared within it).
        seconds: real seconds the batch's rollouts took.
        stats: the engine counters over exactly these rollouts (:func:`engine_stats` after a
            ``reset()``), or None: the processed-work fields are then None.

    Returns:
        ``episodes_per_s``, ``gen_tokens_per_s``, ``unique_tokens``, and from ``stats``:
        ``processed_tokens``, ``prefill_tokens``, ``decode_tokens``, ``reused_tokens``,
        ``full_prefills``, ``reuse_share`` (reused over reused + prefilled prompt tokens),
        ``work_ratio`` (processed over unique) and ``processed_tokens_per_s``.
    """
    trajectories = [t for g in groups for t in g]
    generated = sum(s.completion_tokens for t in trajectories for s in t.steps)
    unique = sum(unique_tokens(g) for g in groups)
    rate = (lambda n: n / seconds) if seconds > 0 else (lambda n: None)
    out: dict[str, float | int | None] = {
        "episodes_per_s": rate(len(trajectories)),
        "gen_tokens_per_s": rate(generated),
        "unique_tokens": unique,
    }
    keys = ("processed_tokens", "prefill_tokens", "decode_tokens", "reused_tokens")
    out.update(dict.fromkeys((*keys, "full_prefills", "reuse_share", "work_ratio"), None))
    out["processed_tokens_per_s"] = None
    if stats is not None:
        out.update({k: stats.get(k) for k in (*keys, "full_prefills")})
        processed = stats.get("processed_tokens", 0)
        prompt = stats.get("reused_tokens", 0) + stats.get("prefill_tokens", 0)
        out["reuse_share"] = stats.get("reused_tokens", 0) / prompt if prompt else 0.0
        out["work_ratio"] = processed / unique if unique else None
        out["processed_tokens_per_s"] = rate(processed)
    return out
