"""Task options that name files on the server: a client may set them only if the operator allows.

Some families read the machine that builds them: a data file (``math/jsonl`` ``path``), a data
directory (``ml/dir``), a game file (``games/jericho`` ``rom``), a cache. They declare those
options in ``Task.path_options``. Without a check, anyone who reaches ``POST /v1/runs`` could
make the server open any file it can read (``{"task": "math/jsonl", "task_options": {"path":
"/etc/passwd"}}``) or list a directory, so the endpoint refuses such options with 403
``forbidden_option`` unless it was started with ``--allow-task-files``. Even then, a task that
cannot be built from the files answers only the first line of its error, which names the
problem and where it is, never what the file holds (the server's log has the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from timely.serve.errors import ServeError
from timely.task import Task

log = logging.getLogger("timely.serve")
ALLOW_FLAG = "--allow-task-files"


def file_options(
    task_id: str, family: type[Task], options: Mapping[str, Any], allowed: bool
) -> list[str]:
    """The options of a request that name server-side files, or a 403 if they are not allowed.

    Args:
        task_id: the task as the request names it (for the message).
        family: its registered class, whose ``path_options`` say which options name files.
        options: the request's ``task_options``.
        allowed: whether this server lets clients name files (``ServeConfig.allow_task_files``).

    Raises:
        ServeError: 403 ``forbidden_option`` naming the first such option, when not allowed.
    """
    named = sorted(set(options) & family.path_options)
    if named and not allowed:
        which = ", ".join(f"task_options.{n}" for n in named)
        raise ServeError(
            403,
            "forbidden_option",
            f"{which} of task {task_id!r} names a file or directory on the server, and this "
            "server does not let clients choose those; send the task without it, or ask its "
            f"operator to start it with `timely serve {ALLOW_FLAG}` (ServeConfig."
            "allow_task_files: true), which lets every client read any file the server can",
            param=f"task_options.{named[0]}",
        )
    return named


def build_error(task_id: str, exc: Exception, named: list[str]) -> str:
    """What a client is told when its task cannot be built: the whole error, or, when the
    task read files the client named, only its first line (later lines may quote the file).

    Args:
        task_id: the task as the request names it.
        exc: why it could not be built.
        named: the request's options that name server-side files (:func:`file_options`).
    """
    message = str(exc)
    if not named:
        return message
    log.info("task %s failed to build from client-named files %s: %s", task_id, named, exc)
    head, _, rest = message.partition("\n")
    if rest:
        head = f"{head.rstrip(':')} (the server's log has the details)"
    return head
