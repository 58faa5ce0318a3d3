"""The child process behind :mod:`timely_eval.tasks.math.verifier`: math-verify, one line at a time.

Run as a script (``python -P _verify_worker.py``). It imports math-verify, warms it up, writes
``ready``, then answers each request line ``{"gold": ..., "pred": ...}`` (JSON, LaTeX between
``$`` signs) with ``1`` (equal) or ``0``. math-verify's own signal-based timeouts are disabled:
the parent bounds every request and kills this process when one runs over. The process exits
when its stdin closes (the parent is gone). It imports nothing from this project, so it starts
in the time math-verify and sympy take to import.

:func:`compare` is also the parent's in-process fallback when no worker can be started.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MEMORY_LIMIT_BYTES = 4 << 30  # a runaway expansion fails here instead of swapping the host


def compare(gold: str, pred: str) -> bool:
    """Whether math-verify judges ``pred`` equal to ``gold`` (timeouts off; never raises).

    Args:
        gold: the gold answer, LaTeX between ``$`` signs.
        pred: the candidate answer, in the same form.
    """
    try:
        import math_verify.grader
        import math_verify.parser
        from math_verify import parse, verify

        # The timeouts are off on purpose (the caller bounds the call); skip the warning.
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        gold_parsed = parse(gold, parsing_timeout=None)  # type: ignore[arg-type]
        pred_parsed = parse(pred, parsing_timeout=None)  # type: ignore[arg-type]
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - third-party parser: any failure means "not verified"
        return False


def _answer(line: str) -> bool:
    try:
        request: Any = json.loads(line)
        return compare(str(request["gold"]), str(request["pred"]))
    except (ValueError, KeyError, TypeError):
        return False


def main() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already
        pass
    # The protocol owns the original stdout; anything a library prints goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    compare("$\\frac{1}{2}$", "$0.5$")  # import and compile everything before saying ready
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        channel.write("1\n" if _answer(line) else "0\n")
        channel.flush()


if __name__ == "__main__":
    main()
