"""The bounded math-verify worker: replaced when it dies, a thread fallback without processes."""

import logging
import threading

import pytest

from timely.clock import wall_seconds
from timely_eval.tasks.math import verifier


@pytest.fixture
def pool(monkeypatch):
    """A fresh, private pool (the module's own keeps its workers and cache)."""
    fresh = verifier._Pool()
    monkeypatch.setattr(verifier, "_POOL", fresh)
    yield fresh
    fresh.close()


def test_a_worker_killed_while_idle_is_replaced(pool):
    assert verifier.equal("$4$", "$\\sqrt{16}$")
    (worker,) = pool._idle
    worker.proc.kill()
    worker.proc.wait()
    assert verifier.equal("$5$", "$\\sqrt{25}$")  # not a false 0 from the dead worker
    assert pool._running == 1 and pool._idle[0] is not worker


def test_definite_verdicts_are_cached_timeouts_are_not(pool, monkeypatch):
    assert not verifier.equal("$3$", "$\\sqrt{16}$")
    calls = []
    monkeypatch.setattr(pool, "compare", lambda *a: calls.append(a))
    assert not verifier.equal("$3$", "$\\sqrt{16}$") and not calls  # from the cache
    assert not verifier.equal("$x$", "$y$") and len(calls) == 1  # None: no verdict
    assert not verifier.equal("$x$", "$y$") and len(calls) == 2  # ... so asked again


def test_without_processes_threads_bound_the_caller(pool, monkeypatch, caplog):
    def no_process():
        raise OSError("fork forbidden here")

    release = threading.Event()

    def stuck(gold, pred):
        release.wait(30)
        return True

    monkeypatch.setattr(verifier, "_Worker", no_process)
    with caplog.at_level(logging.WARNING, logger=verifier.__name__):
        assert verifier.equal("$4$", "$\\sqrt{16}$")
        assert not verifier.equal("$4$", "$\\sqrt{15}$")
    assert len([r for r in caplog.records if "threads" in r.getMessage()]) == 1
    monkeypatch.setattr(verifier, "compare", stuck)
    start = wall_seconds()
    assert not verifier.equal("$a$", "$b$", timeout_s=0.2)
    assert wall_seconds() - start < 1.0
    release.set()
