"""The parent side of the sandbox: spawn the fenced child, bound it, kill it, report what it did.

Agent code never runs in the server process. :func:`run_code` starts ``python -P -s -B -c
<_child>`` in its own session (process group) inside a :class:`Workspace`, with a scrubbed
environment (hash randomisation off, so runs replay exactly), and waits at most ``timeout_s`` of
wall time (less when the caller's deadline is nearer); then the whole group gets SIGKILL. Output
is captured up to a size limit, so a chatty loop cannot exhaust the server's memory. What the
child confines itself with is in :mod:`timely_tools.sandbox._child`; what a run costs on a virtual
clock, from the trace events it counts, is :func:`work_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import site
import sys
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from timely.clock import wall_seconds

CHILD_SOURCE = (Path(__file__).with_name("_child.py")).read_text(encoding="utf-8")
OsLayer = Literal["netns", "landlock", "seccomp"]

# Read-only beyond the Python installation: shared libraries, time zones, CPU topology, and this
# process's own /proc entry (the child resolves /proc/self to itself).
SYSTEM_READ_DIRS = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/share/zoneinfo",
    "/sys/devices/system/cpu",
    "/proc/self",
)
SYSTEM_READ_FILES = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/sys/fs/cgroup/cpu.max",
)
SYSTEM_RW_FILES = ("/dev/null",)
# -I's isolation (-E -P -s) minus -E: the environment is child_env's alone, and -E would ignore
# its PYTHONHASHSEED. A fixed hash seed makes set order, and with it a program's output and its
# counted work, the same on every run (numpy builds __all__ from a set, for one).
INTERPRETER_FLAGS = ("-P", "-s", "-B")
_MAX_CODE_BYTES = 1 << 20
_GRACE_S = 0.05  # kill this long before the caller's deadline, so the answer still arrives
# Virtual seconds per counted trace event (see work_s). On the project machine (2 vCPUs, quiet)
# scikit-learn programs ran at ~300 ns of real time per event, pandas and numpy-heavy ones at
# 500-950 ns, pure-Python loops and calls at 60-80 ns; `python bench/work_model.py
# --sandbox-only` measures it again.
SECONDS_PER_EVENT = 3e-7


class SandboxLimits(BaseModel):
    """What one run of agent code may use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(60.0, gt=0, le=3600, description="Wall-clock seconds per run.")
    cpu_s: int = Field(60, ge=1, le=3600, description="CPU seconds per run (RLIMIT_CPU).")
    memory_mb: int = Field(2048, ge=256, le=65536, description="Address space in MiB (RLIMIT_AS).")
    file_mb: int = Field(64, ge=1, le=65536, description="Largest file it may write (MiB).")
    open_files: int = Field(256, ge=32, le=65536, description="Open file descriptors at most.")
    max_procs: int = Field(
        16,
        ge=0,
        le=4096,
        description="Threads/processes it may add (RLIMIT_NPROC over what its user already "
        "runs; the kernel does not apply it to root, where seccomp forbids processes anyway).",
    )
    output_chars: int = Field(
        20000, ge=100, le=10_000_000, description="stdout and stderr kept, each."
    )
    os_layers: tuple[OsLayer, ...] = Field(
        ("netns", "landlock", "seccomp"),
        description="Kernel confinement to attempt; each is skipped where the kernel refuses it.",
    )
    deny_read: tuple[str, ...] = Field(
        (),
        description="Absolute paths below the readable roots that stay unreadable (e.g. the "
        "copy of a benchmark's data that scikit-learn bundles).",
    )
    require_os_layers: bool = Field(
        False,
        description="Refuse to run code (exit status 126) when any of os_layers is unavailable, "
        "instead of running it behind the remaining layers.",
    )


@dataclass(frozen=True)
class RunResult:
    """How one run ended.

    Attributes:
        exit_code: the process status, or None when a signal ended it.
        signal: the signal's name when one did (``SIGKILL`` after a timeout, ``SIGXCPU``...).
        killed: why the sandbox ended it early: ``"timeout"``, ``"deadline"`` (the caller's
            time ran out first) or ``"cpu_limit"``; None when it ended by itself.
        stdout: captured output (decoded, at most ``output_chars``).
        stderr: captured errors (decoded, at most ``output_chars``).
        truncated: the names of the streams that were cut.
        duration_s: wall seconds from spawn to exit.
        cpu_s: CPU seconds the child reported (None when it could not report).
        layers: the confinement layers that took effect.
        missing: requested OS layers that did not, with the kernel's reason.
        events: Python trace events the agent's code executed, when the run counted them
            (``run_code(count_events=True)``) and ended by itself; else None.
    """

    exit_code: int | None
    signal: str | None
    killed: str | None
    stdout: str
    stderr: str
    truncated: tuple[str, ...]
    duration_s: float
    cpu_s: float | None
    layers: tuple[str, ...]
    missing: dict[str, str] = field(default_factory=dict)
    events: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def public(self, *, timings: bool) -> dict[str, Any]:
        """What a tool shows the model; measured times only when ``timings`` (wall clocks)."""
        out: dict[str, Any] = {
            "exit_code": self.exit_code,
            "killed": self.killed,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }
        if self.signal:
            out["signal"] = self.signal
        if self.truncated:
            out["truncated"] = list(self.truncated)
        if timings:
            out["duration_s"] = round(self.duration_s, 3)
            if self.cpu_s is not None:
                out["cpu_s"] = round(self.cpu_s, 3)
        return out


class Workspace:
    """A session's working directory: the only place its code may write. Deleted on close.

    Args:
        path: an existing, empty directory this workspace owns.

    Attributes:
        observers: callables run after each code run; each returns extra result fields or None
            (the ML tools use one to validate ``submission.csv``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.observers: list[Callable[[Workspace], dict[str, Any] | None]] = []
        self.lock = asyncio.Lock()  # one run at a time per workspace
        self.runs = 0
        # A session that never ends (a server without lifespan) still leaves nothing behind.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(path), True)

    @classmethod
    def create(cls, base: str | Path | None = None) -> Workspace:
        """A fresh private directory under ``base`` (the system temp dir when None)."""
        return cls(Path(tempfile.mkdtemp(prefix="timely-ws-", dir=base)).resolve())

    def close(self) -> None:
        """Delete the directory and everything the session left in it."""
        self._cleanup()


def _read_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(site.getsitepackages())
    resolved = {os.path.realpath(r) for r in roots if r} | set(SYSTEM_READ_DIRS)
    return sorted(resolved)


def _tasks_of(uid: int) -> int:
    """Threads the user already runs (RLIMIT_NPROC counts them all); 0 when /proc is unreadable."""
    total = 0
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                if int(status.get("Uid", "-1").split()[0]) == uid:
                    total += int(status.get("Threads", "1"))
    return total


def child_config(
    workdir: Path, limits: SandboxLimits, report_fd: int, *, count_events: bool = False
) -> dict[str, Any]:
    """The JSON configuration ``_child.py`` reads from ``argv[1]``."""
    rlimits = {
        "RLIMIT_CPU": limits.cpu_s,
        "RLIMIT_AS": limits.memory_mb << 20,
        "RLIMIT_FSIZE": limits.file_mb << 20,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_CORE": 0,
    }
    uid = os.geteuid()
    if uid != 0:  # the kernel exempts root; seccomp covers that case
        rlimits["RLIMIT_NPROC"] = _tasks_of(uid) + limits.max_procs
    return {
        "workdir": str(workdir),
        "report_fd": report_fd,
        "limits": rlimits,
        "os_layers": list(limits.os_layers),
        "require_os_layers": limits.require_os_layers,
        "read_roots": _read_roots(),
        "read_files": list(SYSTEM_READ_FILES),
        "rw_files": list(SYSTEM_RW_FILES),
        "deny_read": list(limits.deny_read),
        "count_events": count_events,
    }


def child_env(workdir: Path) -> dict[str, str]:
    """A scrubbed environment: nothing of the server's (no tokens, proxies, paths) leaks in."""
    one = "1"  # one BLAS/OpenMP thread: predictable timing, small address space
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": one,
        "OPENBLAS_NUM_THREADS": one,
        "MKL_NUM_THREADS": one,
        "JOBLIB_MULTIPROCESSING": "0",  # no worker processes (they would be refused anyway)
        "MPLBACKEND": "Agg",
        "PYTHONHASHSEED": "0",  # see INTERPRETER_FLAGS
    }


def work_s(result: RunResult, limits: SandboxLimits) -> float:
    """What a run costs on a virtual clock: its counted trace events at
    :data:`SECONDS_PER_EVENT`; a run the sandbox killed costs the limit that stopped it.

    The events are every Python call, line, return and exception the program executed, its own
    and the libraries' (so fitting 500 trees costs more than fitting 10): the same program on
    the same interpreter and packages counts the same events on every run and machine (hash
    randomisation is off in the child). Work in native code counts only through the Python
    that drives it; a run that ends without reporting (``os._exit``, a crash) costs nothing.

    Args:
        result: a run made with ``count_events=True``.
        limits: the limits it ran under.
    """
    if result.killed == "cpu_limit":
        return float(limits.cpu_s)
    if result.killed is not None:  # timeout, or the server's cap on real work
        return limits.timeout_s
    return 0.0 if result.events is None else result.events * SECONDS_PER_EVENT


async def _drain(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read to EOF, keeping the first ``limit`` bytes; (kept, whether more was dropped)."""
    kept = bytearray()
    dropped = False
    while chunk := await reader.read(1 << 16):
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
        dropped = dropped or len(chunk) > room
    return bytes(kept), dropped


async def _pipe_reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


def _killpg(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid


async def run_code(
    code: str,
    workdir: Path,
    limits: SandboxLimits | None = None,
    *,
    deadline_s: float | None = None,
    count_events: bool = False,
) -> RunResult:
    """Run ``code`` in the sandbox with ``workdir`` as its working directory.

    Args:
        code: Python source, run as ``__main__``.
        workdir: the directory it may read and write (it must exist).
        limits: resource limits (defaults when None).
        deadline_s: seconds the caller has left; the run is killed just before that when it is
            sooner than ``limits.timeout_s`` (and then reported as ``killed="deadline"``).
        count_events: count the code's Python trace events (``RunResult.events``, the input of
            :func:`work_s`); it slows Python-heavy code down a few times.

    Raises:
        ValueError: the code is larger than 1 MiB.
        OSError: the interpreter could not be started.
    """
    limits = limits or SandboxLimits()
    data = code.encode("utf-8", errors="surrogatepass")
    if len(data) > _MAX_CODE_BYTES:
        raise ValueError(f"the code is {len(data)} bytes; at most {_MAX_CODE_BYTES} are accepted")
    wall = limits.timeout_s
    reason = "timeout"
    if deadline_s is not None and deadline_s - _GRACE_S < wall:
        wall, reason = max(0.0, deadline_s - _GRACE_S), "deadline"
    report_r, report_w = os.pipe()
    cfg = json.dumps(child_config(workdir, limits, report_w, count_events=count_events))
    t0 = wall_seconds()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *INTERPRETER_FLAGS,
            "-c",
            CHILD_SOURCE,
            cfg,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(workdir),
            env=child_env(workdir),
            start_new_session=True,
            pass_fds=(report_w,),
        )
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    report = await _pipe_reader(report_r)
    cap = limits.output_chars * 4  # bytes; decoded text is cut to output_chars below
    readers = [
        asyncio.ensure_future(_drain(proc.stdout, cap)),
        asyncio.ensure_future(_drain(proc.stderr, cap)),
        asyncio.ensure_future(_drain(report, 1 << 16)),
    ]
    killed: str | None = None
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()
            proc.stdin.close()
        try:
            async with asyncio.timeout(max(0.0, wall - (wall_seconds() - t0))):
                await proc.wait()
        except TimeoutError:
            killed = reason
            _killpg(proc)
            await proc.wait()
        duration = wall_seconds() - t0
        (out, out_cut), (err, err_cut), (rep, _) = await asyncio.gather(*readers)
    except BaseException:  # cancelled (the server's deadline) or failed: nothing may linger
        _killpg(proc)
        for reader in readers:
            reader.cancel()
        raise
    return _result(proc.returncode, killed, limits, duration, out, out_cut, err, err_cut, rep)


def _result(
    returncode: int | None,
    killed: str | None,
    limits: SandboxLimits,
    duration: float,
    out: bytes,
    out_cut: bool,
    err: bytes,
    err_cut: bool,
    report: bytes,
) -> RunResult:
    records = []
    for line in report.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    first = records[0] if records and "layers" in records[0] else {}
    last = records[-1] if records and "cpu_s" in records[-1] else {}
    cpu = last.get("cpu_s")
    cpu_s = float(cpu) if isinstance(cpu, int | float) else None
    counted = last.get("events")
    events = counted if isinstance(counted, int) and killed is None else None
    sig = None
    exit_code = returncode
    if returncode is not None and returncode < 0:
        exit_code, sig = None, signal.Signals(-returncode).name
        if killed is None and sig in ("SIGXCPU", "SIGKILL") and duration > 0:
            # SIGXCPU at the soft limit, SIGKILL at the hard one: the CPU budget ran out.
            killed = "cpu_limit" if sig == "SIGXCPU" or duration >= limits.cpu_s else None
    stdout, cut_o = _text(out, limits.output_chars, out_cut)
    stderr, cut_e = _text(err, limits.output_chars, err_cut)
    if killed == "cpu_limit":
        stderr += f"\n[sandbox] killed: CPU time limit of {limits.cpu_s} s reached"
    elif killed == "deadline":
        stderr += "\n[sandbox] killed: the caller's time ran out"
    elif killed is not None:  # the limit, not the measured time: virtual replays stay exact
        stderr += f"\n[sandbox] killed: timeout of {limits.timeout_s:g} s"
    return RunResult(
        exit_code=exit_code,
        signal=sig,
        killed=killed,
        stdout=stdout,
        stderr=stderr.lstrip("\n") if not err else stderr,
        truncated=tuple(n for n, c in (("stdout", cut_o), ("stderr", cut_e)) if c),
        duration_s=duration,
        cpu_s=cpu_s,
        layers=tuple(str(x) for x in first.get("layers", ())),
        missing={str(k): str(v) for k, v in dict(first.get("missing", {})).items()},
        events=events,
    )


def _text(raw: bytes, limit: int, cut: bool) -> tuple[str, bool]:
    text = raw.decode("utf-8", errors="replace")
    if len(text) > limit:
        text, cut = text[:limit], True
    if cut:
        text += "\n[... output truncated ...]"
    return text, cut


async def probe(limits: SandboxLimits | None = None) -> RunResult:
    """Run an empty program once: shows which layers this machine grants, and the start-up cost."""
    base = Workspace.create()
    try:
        return await run_code("pass", base.path, limits)
    finally:
        base.close()
