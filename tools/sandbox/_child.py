"""The first code a sandboxed child process runs: it confines itself, then runs the agent's code.

``timely_tools.sandbox.core`` passes this file's *source* to ``python -P -s -B -c`` (never imported
by the server). Configuration arrives as JSON in ``argv[1]``, the agent's code on stdin. While the
process is still single-threaded and before any agent code exists in it, it applies, in order:

1. resource limits with soft == hard (CPU keeps one second of headroom so the kill is a
   recognisable SIGXCPU), so the agent's code cannot raise them again;
2. a new user + network namespace (no interfaces but a downed loopback, and no capabilities
   outside the namespace, even when the server runs as root), then all capabilities dropped;
3. ``no_new_privs`` and a Landlock ruleset: reads only below the Python installation, a few system
   directories and the working directory, writes only below the working directory, no
   ``execve`` at all, no TCP bind/connect, no signals or abstract sockets outside the sandbox;
4. a seccomp filter: no new processes (threads are fine), no non-Unix sockets, no ptrace,
   namespaces, mounts, BPF, io_uring or keyrings, and signals only to itself;
5. a PEP 578 audit hook with the same file, network and process rules, which gives the agent's
   code readable ``PermissionError`` messages and is the only fence where 2-4 are unavailable.

Layers 1-4 are kernel-enforced; the hook is Python-level (native code and object tricks can get
past it). Each OS layer is best effort: the first line written to the report fd names the layers
that took effect, and the parent records it. ``tools/sandbox/__init__.py`` documents the whole.

With ``count_events`` set (virtual-clock calls), the agent's code runs under a trace function
that counts its Python trace events (calls, lines, returns, exceptions, in every thread; see
:func:`_start_counting`): a deterministic measure of its work that the last report line carries
and the parent turns into virtual seconds (:func:`timely_tools.sandbox.core.work_s`).
"""

import ctypes
import json
import os
import resource
import sys
import traceback

# -- resource limits ---------------------------------------------------------------------------


def _limit(limits):
    for name, value in limits.items():
        which = getattr(resource, name)
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(which, (value, hard))


# -- kernel interfaces (ctypes; Linux only) ----------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_LIBC.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def _errno_error(what):
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _namespaces():
    """A fresh user + network namespace; then no capabilities, even inside it."""
    if _LIBC.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise _errno_error("unshare")
    # capset(version 3, pid 0) with all-zero sets: nothing effective, permitted or inheritable.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if _LIBC.capset(header, data) != 0:
        raise _errno_error("capset")


def _no_new_privs():
    if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _errno_error("prctl(NO_NEW_PRIVS)")


# Landlock (syscalls 444-446 on every architecture that has it).
_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446
_LL_READ_FILE, _LL_READ_DIR, _LL_WRITE_FILE, _LL_TRUNCATE = 1 << 2, 1 << 3, 1 << 1, 1 << 14
_LL_FILE_ONLY = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 14 | 1 << 15  # rights a file rule may carry


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _readable(path, deny):
    """``(path, may_read_files)`` rules that cover ``path`` except the ``deny`` subtrees.

    Landlock only adds rights, so a root holding a denied subtree is granted directory listing
    only, and each of its entries is granted (or split further) on its own.
    """
    inside = [d for d in deny if d == path or d.startswith(path.rstrip(os.sep) + os.sep)]
    if not inside:
        return [(path, True)]
    if path in inside or not os.path.isdir(path) or os.path.islink(path):
        return []
    rules = [(path, False)]
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_symlink():  # a rule on a link would grant its target, denied or not
                rules += _readable(entry.path, inside)
    return rules


def _landlock(workdir, read_paths, rw_files, deny):
    """Restrict the file system (and, from ABI 4/6, TCP and signals). Returns the ABI version."""
    abi = _LIBC.syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise _errno_error("landlock")
    handled = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        handled |= 1 << 13  # refer
    if abi >= 3:
        handled |= _LL_TRUNCATE
    if abi >= 5:
        handled |= 1 << 15  # ioctl on devices
    attr = (ctypes.c_uint64 * 3)(handled, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _LIBC.syscall(_LL_CREATE, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _errno_error("landlock_create_ruleset")
    read = _LL_READ_FILE | _LL_READ_DIR
    write_all = handled & ~(1 << 0 | 1 << 6 | 1 << 11)  # all but execute and device nodes
    rw = read | _LL_WRITE_FILE | _LL_TRUNCATE
    rules = [(p, rw) for p in rw_files]
    for root in read_paths:
        rules += [(p, read if files else _LL_READ_DIR) for p, files in _readable(root, deny)]
    rules.append((workdir, write_all))
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a system directory this machine does not have
        try:
            if not os.path.isdir(path):
                access &= _LL_FILE_ONLY
            rule = _PathBeneath(access & handled, fd)
            if _LIBC.syscall(_LL_ADD, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise _errno_error(f"landlock_add_rule({path})")
        finally:
            os.close(fd)
    if _LIBC.syscall(_LL_RESTRICT, ruleset, ctypes.c_uint32(0)) != 0:
        raise _errno_error("landlock_restrict_self")
    os.close(ruleset)
    return abi


# seccomp: per-architecture syscall numbers. "deny" answers EPERM; clone needs CLONE_THREAD,
# clone3 answers ENOSYS (glibc then falls back to clone), socket needs AF_UNIX, kill/tgkill need
# this process (or its own group, 0) as the target.
# fmt: off
_SECCOMP = {
    "x86_64": {
        "arch": 0xC000003E, "x32": True, "clone": 56, "socket": 41, "kill": 62, "tgkill": 234,
        "deny": (57, 58, 59, 322, 200, 101, 310, 311, 312, 298, 321, 323, 272, 308, 165, 166,
                 155, 161, 248, 249, 250, 304, 303),
    },
    "aarch64": {
        "arch": 0xC00000B7, "x32": False, "clone": 220, "socket": 198, "kill": 129, "tgkill": 131,
        "deny": (221, 281, 130, 117, 270, 271, 272, 241, 280, 282, 97, 268, 40, 39, 41, 51,
                 217, 218, 219, 265, 264),
    },
}
# fmt: on
# Numbered alike everywhere: clone3 (435, ENOSYS below), io_uring, mount API, pidfd, open_tree.
_COMMON_DENY = (425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 438, 442)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp():
    """Install the filter described above (after no_new_privs, so no privilege is needed)."""
    table = _SECCOMP.get(os.uname().machine)
    if table is None:
        raise OSError(f"no seccomp table for {os.uname().machine}")
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    enosys, eacces = 0x00050000 | 38, 0x00050000 | 13
    pid = os.getpid()
    prog = []  # (code, jump-true label, jump-false label, k); labels resolved below

    def op(code, k, jt=None, jf=None):
        prog.append((code, jt, jf, k))

    op(ld, 4)  # seccomp_data.arch
    op(jeq, table["arch"], None, "deny")
    op(ld, 0)  # seccomp_data.nr
    if table["x32"]:
        op(jge, 0x40000000, "deny", None)
    for nr in table["deny"] + _COMMON_DENY:
        op(jeq, nr, "deny", None)
    op(jeq, 435, "enosys", None)
    op(jeq, table["clone"], "clone", None)
    op(jeq, table["socket"], "socket", None)
    op(jeq, table["kill"], "kill", None)
    op(jeq, table["tgkill"], "kill", None)
    op(ret, allow)
    labels = {}
    for name, code, k, jt, jf in (
        ("clone", ld, 16, None, None),  # args[0] (low word): clone flags
        (None, jset, 0x00010000, "allow", "deny"),  # CLONE_THREAD
        ("socket", ld, 16, None, None),  # args[0]: address family
        (None, jeq, 1, "allow", "eacces"),  # AF_UNIX
        ("kill", ld, 16, None, None),  # args[0]: target pid
        (None, jeq, pid, "allow", None),
        (None, jeq, 0, "allow", "deny"),
        ("allow", ret, allow, None, None),
        ("deny", ret, eperm, None, None),
        ("eacces", ret, eacces, None, None),
        ("enosys", ret, enosys, None, None),
    ):
        if name:
            labels[name] = len(prog)
        op(code, k, jt, jf)
    filters = (_SockFilter * len(prog))()
    for i, (code, jt, jf, k) in enumerate(prog):
        rel = [0 if t is None else labels[t] - i - 1 for t in (jt, jf)]
        if not all(0 <= r < 256 for r in rel):
            raise OSError("seccomp program too long for 8-bit jumps")
        filters[i] = _SockFilter(code, rel[0], rel[1], k)
    fprog = _SockFprog(len(prog), filters)
    if _LIBC.prctl(_PR_SET_SECCOMP, 2, ctypes.addressof(fprog), 0, 0) != 0:
        raise _errno_error("seccomp")


def _confine(cfg):
    """Apply the OS layers that this kernel allows; returns their names and what failed."""
    layers, missing = ["rlimits"], {}
    os_layers = cfg["os_layers"]
    if "netns" in os_layers:
        try:
            _namespaces()
            layers.append("netns")
        except OSError as exc:
            missing["netns"] = str(exc)
    _no_new_privs()
    if "landlock" in os_layers:
        try:
            paths = cfg["read_roots"] + cfg["read_files"]
            abi = _landlock(cfg["workdir"], paths, cfg["rw_files"], cfg["deny_read"])
            layers.append(f"landlock{abi}")
        except OSError as exc:
            missing["landlock"] = str(exc)
    if "seccomp" in os_layers:
        try:
            _seccomp()
            layers.append("seccomp")
        except OSError as exc:
            missing["seccomp"] = str(exc)
    return layers, missing


# -- the audit hook ------------------------------------------------------------------------------

_READ_EVENTS = ("os.listdir", "os.scandir", "os.chdir")
# event -> (indices of path arguments that must be writable, index of the dir_fd argument)
# fmt: off
_WRITE_EVENTS = {
    "os.remove": ((0,), 1), "os.rmdir": ((0,), 1), "os.mkdir": ((0,), 2), "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3), "os.chflags": ((0,), None), "os.lchflags": ((0,), None),
    "os.truncate": ((0,), None), "os.utime": ((0,), 3), "os.setxattr": ((0,), None),
    "os.removexattr": ((0,), None), "os.rename": ((0, 1), 2), "os.link": ((0, 1), 2),
    "os.symlink": ((1,), 2), "shutil.rmtree": ((0,), 1), "shutil.move": ((0, 1), None),
    "shutil.copyfile": ((1,), None), "shutil.copytree": ((1,), None),
    "shutil.unpack_archive": ((1,), None),
}
_BLOCKED_EVENTS = (
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "pty.spawn", "os.kill", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "os.startfile", "webbrowser.open",
    # Object-graph walks are how code finds (and rewrites) this hook's closure.
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
)
# fmt: on
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(workdir, read_roots, read_files, rw_files, deny):
    """Add the audit hook that confines file, network and process access (see module doc).

    Everything the hook consults is bound here, as private copies and local names: the agent's
    code can reach this module's globals and ``builtins`` and could rewrite those, not these.
    """
    sep = os.sep
    work_prefix = workdir.rstrip(sep) + sep
    root_prefixes = tuple(r.rstrip(sep) + sep for r in read_roots)
    read_exact = frozenset(read_files) | frozenset(rw_files)
    read_exact |= frozenset(r.rstrip(sep) for r in read_roots)
    write_exact = frozenset(rw_files)
    denied = tuple(d.rstrip(sep) + sep for d in deny)
    read_events = frozenset(_READ_EVENTS)
    write_events = {k: (tuple(v[0]), v[1]) for k, v in _WRITE_EVENTS.items()}
    blocked, write_flags = tuple(_BLOCKED_EVENTS), _WRITE_FLAGS
    realpath, join, getcwd = os.path.realpath, os.path.join, os.getcwd
    isdir, isabs, fsdecode, fspath, readlink = (
        os.path.isdir, os.path.isabs, os.fsdecode, os.fspath, os.readlink
    )  # fmt: skip
    _isinstance, _len, _any, _bool = isinstance, len, any, bool
    _str, _bytes, _int = str, bytes, int
    _refused = PermissionError
    import socket

    af_unix = socket.AF_UNIX

    def resolve(path, dir_fd=None):
        if not _isinstance(path, _str | _bytes):
            path = fspath(path)
        if _isinstance(path, _bytes):
            path = fsdecode(path)
        base = getcwd()
        if dir_fd is not None and not isabs(path):
            base = readlink(f"/proc/self/fd/{dir_fd}")
        return realpath(join(base, path))

    def in_workdir(p):
        return p == workdir or p.startswith(work_prefix)

    def refuse(what, path):
        raise _refused(
            f"sandbox: {what} {path!r} is not allowed; only the working directory {workdir} "
            "is accessible"
        )

    def check_path(path, write, dir_fd=None, *, opening=False):
        if path is None or _isinstance(path, _int):
            return  # an fd that is already open, or the cwd
        p = resolve(path, dir_fd)
        if write:
            if not (in_workdir(p) or p in write_exact):
                refuse("writing", path)
        elif not (in_workdir(p) or p in read_exact or p.startswith(root_prefixes)):
            refuse("reading", path)
        elif (p + sep).startswith(denied):
            refuse("reading", path)
        elif opening and not in_workdir(p) and isdir(p):
            # A directory fd + dir_fd= would reach paths this hook never sees resolved.
            refuse("opening the directory", path)

    def hook(event, args):
        if event == "open":
            path = args[0]
            mode = args[1] if _len(args) > 1 else None
            flags = args[2] if _len(args) > 2 and _isinstance(args[2], _int) else 0
            write = _bool(mode and _any(c in mode for c in "wax+")) or _bool(flags & write_flags)
            check_path(path, write, opening=True)
        elif event in read_events:
            check_path(args[0] if args else None, False)
        elif event in write_events:
            indices, fd_at = write_events[event]
            dir_fd = args[fd_at] if fd_at is not None and fd_at < _len(args) else None
            for i in indices:
                if i < _len(args):
                    at = dir_fd if _isinstance(dir_fd, _int) and dir_fd >= 0 else None  # -1: none
                    check_path(args[i], True, at)
        elif event.startswith(blocked):
            raise _refused(f"sandbox: {event} is not allowed here")
        elif event == "socket.__new__":
            if (args[1] if _len(args) > 1 else None) != af_unix:
                raise _refused("sandbox: network access is disabled")
        elif event.startswith("socket.") and event != "socket.socketpair":
            raise _refused(f"sandbox: network access is disabled ({event})")

    sys.addaudithook(hook)
    return hook


# -- counting the agent's work ---------------------------------------------------------------------


def _start_counting(uncounted):
    """Count the trace events of the code running from now on, in every thread.

    Counted: each call, line, return and exception of Python code, the agent's and the
    libraries' it calls. Not counted, because they vary with the machine's state rather than
    the program: frames of the frozen import machinery (they differ with the .pyc files and
    directory caches present; the imported modules' own code is counted), and everything below
    the code objects in ``uncounted`` (this sandbox's audit hook). Each thread has its own
    counter, so no update is lost between threads. Returns a function that stops counting (in
    this thread) and sums the counters. Tracing is the only deterministic measure available
    (CPU time varies from run to run); it slows Python-heavy code down a few times, which is
    why only virtual-clock runs count.
    """
    import threading

    get_ident = threading.get_ident
    counts = []
    tracers = {}

    def new_tracer(ident):
        cell = [0]
        hidden = [0]  # depth inside an uncounted subtree
        counts.append(cell)

        def local(frame, event, arg):
            cell[0] += 1
            return local

        def leave(frame, event, arg):  # the local tracer of an uncounted subtree's root
            if event == "return":
                hidden[0] -= 1
            return leave

        def on_call(frame, event, arg):
            if hidden[0]:
                return None
            code = frame.f_code
            if code in uncounted:
                hidden[0] += 1
                return leave
            if code.co_filename.startswith("<frozen "):
                return None
            cell[0] += 1
            return local

        tracers[ident] = on_call
        return on_call

    def dispatch(frame, event, arg):  # every thread's global trace function: 'call' events
        return (tracers.get(get_ident()) or new_tracer(get_ident()))(frame, event, arg)

    def stop():
        sys.settrace(None)  # this thread; threads still running count on, unread
        threading.settrace(None)
        return sum(cell[0] for cell in counts)

    new_tracer(get_ident())
    threading.settrace(dispatch)
    sys.settrace(dispatch)
    return stop


# -- running the agent's code ----------------------------------------------------------------------


def _write(fd, record):
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass  # the agent's code closed or reused the fd; the parent copes without it


def main():
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.read()
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - stays open for the process lifetime
    workdir = cfg["workdir"] = os.path.realpath(cfg["workdir"])
    for key in ("read_roots", "read_files", "rw_files", "deny_read"):  # /proc/self is this one
        cfg[key] = [os.path.realpath(p) for p in cfg[key]]
    fd = cfg["report_fd"]
    _limit(cfg["limits"])
    layers, missing = _confine(cfg)
    os.chdir(workdir)
    roots = tuple(r.rstrip(os.sep) + os.sep for r in cfg["read_roots"])
    sys.path[:] = [workdir] + [p for p in sys.path if p and (p + os.sep).startswith(roots)]
    sys.argv = ["<sandbox>"]
    import linecache  # so tracebacks show the agent's own lines

    linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")
    guard = _install_guard(
        workdir, cfg["read_roots"], cfg["read_files"], cfg["rw_files"], cfg["deny_read"]
    )
    layers.append("audit")
    _write(fd, {"layers": layers, "missing": missing})  # before any agent code: trustworthy
    if missing and cfg.get("require_os_layers"):
        print(f"sandbox: refusing to run without {', '.join(missing)}: {missing}", file=sys.stderr)
        os._exit(126)
    # The agent's code gets a module of its own as __main__ (pickling its functions works, and
    # this bootstrap stays out of sys.modules).
    main_module = type(sys)("__main__")
    sys.modules["__main__"] = main_module
    status = 0
    events = None
    try:
        program = compile(code, "<sandbox>", "exec")  # a syntax error is no counted work
        counting = cfg.get("count_events")
        stop_counting = _start_counting(frozenset({guard.__code__})) if counting else None
        try:
            exec(program, main_module.__dict__)  # noqa: S102
        finally:
            if stop_counting is not None:  # before our own error handling adds to it
                events = stop_counting()
    except SystemExit as exc:
        code_ = exc.code
        status = code_ if isinstance(code_, int) else (0 if code_ is None else 1)
        if code_ is not None and not isinstance(code_, int):
            print(code_, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the agent's error is its output
        exc_type, exc, tb = sys.exc_info()
        # Hide this bootstrap's own frame: the agent should see its code, not ours.
        traceback.print_exception(exc_type, exc, tb.tb_next if tb is not None else None)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not lose the report
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}  # cpu_s: advisory
    if events is not None:
        record["events"] = events
    _write(fd, record)
    os._exit(status & 0xFF)


main()
