"""The first code a sandboxed child process runs: it fences the agent's code in, then runs it.

``tools.sandbox.core`` passes this file's *source* to ``python -I -B -c`` (it is never imported by
the server). Configuration arrives as JSON in ``argv[1]``, the agent's code on stdin. Before the
code runs, an audit hook (PEP 578) is installed that refuses:

- reading files outside the working directory, except the Python installation (read-only) and a
  few system files the scientific stack reads; writing anywhere outside the working directory;
- opening directories outside the working directory (a directory fd + ``dir_fd=`` could
  otherwise reach paths the hook never sees);
- creating non-Unix sockets, connecting, binding and name lookups (no network);
- starting processes (``subprocess``, ``os.system``, ``os.fork``, ``exec*``, ``spawn*``),
  sending signals, and raising resource limits.

This is a Python-level fence: native code (a C extension, ``ctypes``) is not audited. The OS-level
layers (resource limits, a network namespace, dropped capabilities, process-group kill) are set
up by the parent; see ``tools/sandbox/__init__.py`` for what is enforced where.
"""

import json
import os
import resource
import sys
import traceback

_READ_EVENTS = ("os.listdir", "os.scandir", "os.chdir")
_WRITE_EVENTS = {
    # event -> indices of the path arguments that must be writable
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "shutil.rmtree": (0,),
    "shutil.move": (0, 1),
    "shutil.copyfile": (1,),
}
_BLOCKED_EVENTS = (
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "resource.setrlimit",
    "resource.prlimit",
    "os.startfile",
    "webbrowser.open",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(workdir, read_roots, read_files, write_files, deny):
    """Add the audit hook that confines file, network and process access (see module doc)."""
    sep = os.sep
    work_prefix = workdir.rstrip(sep) + sep
    root_prefixes = tuple(r.rstrip(sep) + sep for r in read_roots)
    read_exact = frozenset(read_files) | frozenset(r.rstrip(sep) for r in read_roots)
    write_exact = frozenset(write_files)
    realpath, join, getcwd, isdir = os.path.realpath, os.path.join, os.getcwd, os.path.isdir
    fsdecode, readlink = os.fsdecode, os.readlink
    import socket

    af_unix = socket.AF_UNIX

    def resolve(path, dir_fd=None):
        if isinstance(path, bytes):
            path = fsdecode(path)
        path = str(path)
        base = getcwd()
        if dir_fd is not None and not os.path.isabs(path):
            base = readlink(f"/proc/self/fd/{dir_fd}")
        return realpath(join(base, path))

    def in_workdir(p):
        return p == workdir or p.startswith(work_prefix)

    def readable(p):
        if any(d in p for d in deny):
            return False
        return in_workdir(p) or p in read_exact or p.startswith(root_prefixes)

    def refuse(what, path):
        raise PermissionError(
            f"sandbox: {what} {path!r} is not allowed; only the working directory {workdir} "
            "is accessible"
        )

    def check_path(path, write, dir_fd=None, *, opening=False):
        if path is None or isinstance(path, int):
            return  # an fd that is already open, or the cwd
        p = resolve(path, dir_fd)
        if write:
            if not (in_workdir(p) or p in write_exact):
                refuse("writing", path)
        elif not readable(p):
            refuse("reading", path)
        elif opening and not in_workdir(p) and isdir(p):
            refuse("opening the directory", path)

    def hook(event, args):
        if event == "open":
            path = args[0]
            mode = args[1] if len(args) > 1 else None
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            write = bool(mode and any(c in mode for c in "wax+")) or bool(flags & _WRITE_FLAGS)
            check_path(path, write, opening=True)
        elif event in _READ_EVENTS:
            check_path(args[0] if args else None, False)
        elif event in _WRITE_EVENTS:
            dir_fd = args[-1] if args and (args[-1] is None or isinstance(args[-1], int)) else None
            for i in _WRITE_EVENTS[event]:
                if i < len(args):
                    check_path(args[i], True, dir_fd if isinstance(dir_fd, int) else None)
        elif event.startswith(_BLOCKED_EVENTS):
            raise PermissionError(f"sandbox: {event} is not allowed (no child processes)")
        elif event == "socket.__new__":
            family = args[1] if len(args) > 1 else None
            if family != af_unix:
                raise PermissionError("sandbox: network access is disabled")
        elif event.startswith("socket.") and event not in ("socket.__new__", "socket.socketpair"):
            raise PermissionError(f"sandbox: network access is disabled ({event})")

    sys.addaudithook(hook)


def _report(fd, status):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}
    try:
        os.write(fd, json.dumps(record).encode())
        os.close(fd)
    except OSError:
        pass  # the agent's code closed or reused the fd; the parent copes without a report


def main():
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.read()
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - stays open for the process lifetime
    workdir = os.path.realpath(cfg["workdir"])
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    sys.argv = ["<sandbox>"]
    _install_guard(
        workdir,
        cfg["read_roots"],
        cfg["read_files"],
        cfg["write_files"],
        cfg["deny"],
    )
    status = 0
    try:
        exec(compile(code, "<sandbox>", "exec"), {"__name__": "__main__"})  # noqa: S102
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
    _report(cfg["report_fd"], status)
    os._exit(status & 0xFF)


main()
