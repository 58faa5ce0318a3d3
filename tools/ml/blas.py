"""One BLAS thread while the ML tools and tasks fit and predict, as in the code sandbox.

The estimators are small (hundreds of rows, tens of features). OpenBLAS gains nothing from threads
on them, but once a call has woken its threads they spin for a while, and on a small machine they
take the cores that the event loop and the other episodes need: on 2 cores they cost about half the
CPU time of an ML smoke episode. The sandbox already runs the same recipe with
``OPENBLAS_NUM_THREADS=1`` (:mod:`timely_tools.sandbox.core`), so with this the tool server, the
task's calibration and the code-mode oracle all fit in one configuration. The predictions are the
same either way (OpenBLAS splits work by output blocks); tests/unit/tasks/test_ml.py checks.

A BLAS library has one thread count for the whole process, so the limit is shared and
counted: set by the first holder, the previous counts restored when the last one lets go.
Every switch back wakes OpenBLAS's threads (about a millisecond of spinning), so the tool server
holds the limit for a whole ML session (:class:`timely_tools.ml.tools.MLSession`), not for each fit:
a suite's overlapping episodes then switch it once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

from timely_tools.ml import recipe

_lock = threading.Lock()
_holders = 0
_limiter: Any = None


@functools.cache
def _controller() -> Any:
    """The process's thread pools (finding them takes milliseconds: once). After the imports
    of every estimator, so that SciPy's BLAS is loaded and found too."""
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    recipe.warm_up()
    return ThreadpoolController()


def hold() -> None:
    """Limit BLAS to one thread until the matching :func:`release` (thread-safe)."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            _limiter = _controller().limit(limits=1, user_api="blas")
        _holders += 1


def release() -> None:
    """End one :func:`hold`; the last one restores the previous thread counts."""
    global _holders, _limiter
    with _lock:
        _holders -= 1
        if _holders == 0:
            _limiter.restore_original_limits()
            _limiter = None


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The block runs with single-threaded BLAS."""
    hold()
    try:
        yield
    finally:
        release()
