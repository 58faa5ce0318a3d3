"""The Ray driver's bookkeeping without Ray: each key delivered once, lost chunks re-queued."""

from __future__ import annotations

import pytest

from timely_eval.plan import EpisodeItem
from timely_eval.ray_backend import WorkQueue, chunk_size, make_chunks


def item(key: str) -> EpisodeItem:
    return EpisodeItem(
        key=key,
        phase="eval",
        policy="scripted:oracle",
        task_index=0,
        task_id="math/arithmetic-v1",
        seed=0,
        latency="constant:1.0",
        budget="12s",
        budget_s=12.0,
    )


def ok(*keys: str) -> list[tuple[str, str | None, str | None]]:
    return [(k, "{}", None) for k in keys]


def test_chunks_cover_the_items_in_order():
    items = [item(str(i)) for i in range(10)]
    chunks = make_chunks(items, 4)
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [it.key for c in chunks for it in c] == [it.key for it in items]
    assert chunk_size(10, workers=2) == 2  # about four chunks per worker
    assert chunk_size(10, workers=2, requested=3) == 3
    with pytest.raises(ValueError):
        make_chunks(items, 0)


def test_a_result_is_delivered_once():
    queue = WorkQueue([[item("a"), item("b")]], max_retries=1)
    chunk = queue.take()
    assert chunk is not None and queue.take() is None
    assert queue.finished(ok("a", "b")) == ok("a", "b")
    assert queue.finished(ok("a", "b")) == []  # a late copy of the same chunk is dropped


def test_a_lost_chunk_is_queued_first_with_its_undelivered_items():
    queue = WorkQueue([[item("a"), item("b")], [item("c")]], max_retries=2)
    first = queue.take()
    assert first is not None
    queue.finished(ok("a"))  # delivered before the worker died (e.g. a duplicate elsewhere)
    assert queue.lost(first, "ActorDiedError: killed") == []
    retry = queue.take()
    assert retry is not None and [it.key for it in retry.items] == ["b"]
    assert retry.deaths == 1
    nxt = queue.take()
    assert nxt is not None and [it.key for it in nxt.items] == ["c"]


def test_a_chunk_gives_up_after_max_retries_deaths():
    queue = WorkQueue([[item("a"), item("b")]], max_retries=1)
    chunk = queue.take()
    assert chunk is not None
    assert queue.lost(chunk, "ActorDiedError: one") == []
    chunk = queue.take()
    assert chunk is not None
    failed = queue.lost(chunk, "ActorDiedError: two")
    assert [it.key for it, _ in failed] == ["a", "b"]
    assert all("died 2 times (ray.max_retries=1)" in e and "two" in e for _, e in failed)
    assert queue.take() is None
    assert queue.finished(ok("a")) == []  # given up: a straggler no longer counts


def test_a_failed_call_and_no_workers_fail_the_undelivered_items_once():
    queue = WorkQueue([[item("a")], [item("b")], [item("c")]], max_retries=3)
    chunk = queue.take()
    assert chunk is not None
    assert [it.key for it, _ in queue.failed(chunk, "boom")] == ["a"]
    assert [(it.key, e) for it, e in queue.abandon("no worker")] == [
        ("b", "no worker"),
        ("c", "no worker"),
    ]
    assert queue.abandon("again") == []
