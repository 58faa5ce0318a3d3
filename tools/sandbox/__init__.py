"""A sandbox for agent-written Python: separate process, hard limits, no network, one directory.

The paper's ML mode lets the agent run its own code; this package is what makes that safe enough
to serve. :func:`run_code` runs code in a child interpreter (``python -P -s -B``) inside a
per-session :class:`Workspace` and reports its output, exit status, duration and why it was
killed, if it was. What is enforced, and by whom:

=====================  ============================================  =========================
Guarantee              Kernel-enforced (where available)             Python audit hook (always)
=====================  ============================================  =========================
wall-clock timeout     own process group, SIGKILL at ``timeout_s``   --
                       or just before the caller's deadline
CPU time               ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL)        --
memory                 ``RLIMIT_AS`` (allocations fail)              --
file size, open fds    ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``           --
no network             new network namespace (no interfaces);        socket creation other
                       Landlock ABI>=4 TCP bind/connect; seccomp     than AF_UNIX, connect,
                       refuses non-AF_UNIX ``socket()``              bind, DNS lookups
files: read            Landlock: Python install, system libraries,   same rule, with a clear
                       ``/proc/self``, a few device/system files,    ``PermissionError``
                       the working directory; minus ``deny_read``
files: write           Landlock: the working directory only          same rule
no processes           seccomp: fork/vfork/execve/execveat, clone    subprocess, os.system,
                       without CLONE_THREAD; Landlock: no execute    exec*, spawn*, fork
                       right anywhere; ``RLIMIT_NPROC`` (non-root)
no escape tools        seccomp: ptrace, process_vm_*, bpf,           gc object walks (they
                       io_uring, unshare/setns, mount API, keyrings  reach the hook itself)
signals                Landlock ABI>=6 scope + seccomp: only itself  os.kill, pthread_kill
privileges             user namespace + capset(0) + no_new_privs     setrlimit/prlimit
=====================  ============================================  =========================

Every kernel layer is attempted and skipped where the kernel refuses it (old kernels, containers
whose seccomp profile forbids ``unshare``); ``RunResult.layers`` says what took effect and
:func:`probe` checks a machine. ``SandboxLimits(require_os_layers=True)`` refuses to run code
without them. The audit hook alone is *not* a security boundary: native code (``ctypes``, C
extensions) is not audited, so without the kernel layers, run the tool server in a container or
VM. Environment variables are scrubbed (only PATH, HOME/TMPDIR = the workspace, locale, a fixed
``PYTHONHASHSEED`` and one-thread BLAS settings are passed).
"""

from timely_tools.sandbox.core import (
    RunResult,
    SandboxLimits,
    Workspace,
    child_config,
    probe,
    run_code,
    work_s,
)

__all__ = [
    "RunResult",
    "SandboxLimits",
    "Workspace",
    "child_config",
    "probe",
    "run_code",
    "work_s",
]
