"""math-verify behind a hard time bound, callable from any thread and inside any event loop.

math-verify bounds its sympy work with ``signal.alarm``, which only works on the main thread;
with its timeouts disabled it runs anywhere but may not return for a long time: comparing
``(x+1)^{999}`` with ``(x+2)^{999}`` takes ~20 s of ``simplify``, and C-level big-number work
would even hold the GIL, so a thread with a timeout could neither stop it nor return. So each
comparison runs in a worker *process* (:mod:`._verify_worker`) with math-verify's timeouts off;
the caller waits at most ``timeout_s`` for its reply and kills the worker when it runs over (a
new one starts on the next call). A worker is started on first use (about a second: importing
sympy and math-verify) and kept; at most :data:`MAX_WORKERS` run at once, and a caller that
finds them all busy waits for one to come free. Definite answers are cached per process.

Measured on 2 (busy) vCPUs: a comparison through the worker costs its math-verify time (~1-10
ms for typical answers) plus ~0.4 ms of pipe round trip; starting a worker takes 1-2 s and ~60
MB of memory; a call that runs over returns ``timeout_s`` + 20-50 ms after it was sent.

Where no process can be started (a sandbox that forbids it), the comparison runs in a daemon
thread that the caller waits on for ``timeout_s``; that bounds the caller for pure-Python sympy
work but cannot stop the thread, so it is a fallback, logged once.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

from timely.clock import wall_seconds
from timely_eval.tasks.math._verify_worker import compare

DEFAULT_TIMEOUT_S = 5.0  # math-verify's own default per parse / comparison
STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can take seconds
MAX_WORKERS = 4
_CACHE_SIZE = 4096
_WORKER = Path(__file__).with_name("_verify_worker.py")
logger = logging.getLogger(__name__)


def equal(gold: str, pred: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether math-verify judges ``pred`` equal to ``gold``, within ``timeout_s``; never raises.

    A comparison that is not finished in time counts as not equal. The bound covers the
    comparison itself; starting the first worker and waiting for a busy one come on top.

    Args:
        gold: the gold answer as math-verify reads it (LaTeX between ``$`` signs).
        pred: the candidate answer, in the same form.
        timeout_s: the most seconds to wait for the comparison.
    """
    key = (gold, pred)
    cached = _POOL.cached(key)
    if cached is not None:
        return cached
    result = _POOL.compare(gold, pred, float(timeout_s))
    if result is None:
        return False
    _POOL.remember(key, result)
    return result


class _Worker:
    """One child process and the line protocol to it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-P", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
        )
        self._buffer = b""
        if self._read_line(STARTUP_TIMEOUT_S) != b"ready":
            self.kill()
            raise OSError("the math-verify worker did not start (is math-verify installed?)")

    def ask(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """The worker's verdict, or None when it gave none within ``timeout_s`` (or died)."""
        request = json.dumps({"gold": gold, "pred": pred}).encode("utf-8") + b"\n"
        try:
            assert self.proc.stdin is not None
            if self.proc.stdin.write(request) != len(request):
                return None
        except (OSError, ValueError):
            return None
        line = self._read_line(timeout_s)
        return None if line is None else line == b"1"

    def _read_line(self, timeout_s: float) -> bytes | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: servers hold fds beyond FD_SETSIZE
        poller.register(fd, select.POLLIN)
        end = wall_seconds() + timeout_s
        while b"\n" not in self._buffer:
            left = end - wall_seconds()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # the worker died (e.g. it hit its memory limit)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.strip()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class _Pool:
    """Workers shared by every thread of this process, plus the cache of verdicts."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._forget()

    def _forget(self) -> None:
        """Start empty (also in a forked child: the parent's workers are not ours to use)."""
        for worker in self._idle:
            worker.close_pipes()  # so the parent's workers still see EOF when it exits
        self._ready = threading.Condition()
        self._idle: list[_Worker] = []
        self._running = 0
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._no_processes = False

    def cached(self, key: tuple[str, str]) -> bool | None:
        with self._ready:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def remember(self, key: tuple[str, str], value: bool) -> None:
        with self._ready:
            self._cache[key] = value
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def compare(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """The verdict, or None when there was none within the bound."""
        worker = self._acquire()
        if worker is None:
            return _in_thread(gold, pred, timeout_s)
        result = None
        try:
            result = worker.ask(gold, pred, timeout_s)
        finally:
            if result is None:
                worker.kill()  # stuck or dead: never reuse it
            self._release(None if result is None else worker)
        return result

    def _acquire(self) -> _Worker | None:
        with self._ready:
            while not self._idle and self._running >= MAX_WORKERS and not self._no_processes:
                self._ready.wait()
            if self._no_processes:
                return None
            while self._idle:
                worker = self._idle.pop()
                if worker.proc.poll() is None:
                    return worker
                worker.close_pipes()  # it died while idle (killed from outside): replace it
                self._running -= 1
            self._running += 1
        try:
            return _Worker()
        except OSError as exc:
            with self._ready:
                self._running -= 1
                if not self._no_processes:
                    logger.warning(
                        "math-verify runs in threads, not a worker process (%s); a runaway "
                        "comparison can keep a CPU busy after its caller has moved on",
                        exc,
                    )
                self._no_processes = True
                self._ready.notify_all()
            return None

    def _release(self, worker: _Worker | None) -> None:
        with self._ready:
            if worker is None:
                self._running -= 1
            else:
                self._idle.append(worker)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            idle, self._idle = self._idle, []
            self._running -= len(idle)
        for worker in idle:
            worker.kill()


def _in_thread(gold: str, pred: str, timeout_s: float) -> bool | None:
    box: list[bool] = []
    thread = threading.Thread(target=lambda: box.append(compare(gold, pred)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return box[0] if box else None


_POOL = _Pool()
atexit.register(_POOL.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._forget)
