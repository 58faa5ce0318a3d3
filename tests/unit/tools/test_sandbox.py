"""The code sandbox: normal code works; network, file escape, processes and runaways do not."""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from timely.clock import VirtualClock, WallClock
from timely.policies.base import Deadline
from timely.toolclient import ToolClient
from timely_server.app import ServerConfig, create_app
from timely_tools.sandbox import SandboxLimits, Workspace, probe, run_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

FAST = SandboxLimits(timeout_s=20, cpu_s=10)


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    return asyncio.run(probe()).layers


@pytest.fixture
def ws():
    workspace = Workspace.create()
    yield workspace
    workspace.close()


async def run(ws, code, limits=FAST, **kw):
    return await run_code(code, ws.path, limits, **kw)


def needs(layers, name):
    if not any(layer.startswith(name) for layer in layers):
        pytest.skip(f"the kernel does not grant the {name} layer here")


async def test_a_normal_script_runs_reads_its_data_and_writes_its_files(ws):
    (ws.path / "data").mkdir()
    (ws.path / "data" / "train.csv").write_text("id,x\n1,2.5\n")
    code = (
        "import csv, json\n"
        "rows = list(csv.DictReader(open('data/train.csv')))\n"
        "open('submission.csv', 'w').write('id,y\\n1,5.0\\n')\n"
        "print(json.dumps(rows))\n"
    )
    result = await run(ws, code)
    assert result.ok and result.killed is None, result.stderr
    assert result.stdout == '[{"id": "1", "x": "2.5"}]\n'
    assert (ws.path / "submission.csv").read_text() == "id,y\n1,5.0\n"
    assert {"rlimits", "audit"} <= set(result.layers)
    assert 0 < result.duration_s < 10


async def test_errors_and_exit_codes_come_back_as_output(ws):
    result = await run(ws, "import sys\nprint('partial')\nraise ValueError('bad input')")
    assert result.exit_code == 1 and result.stdout == "partial\n"
    assert "ValueError: bad input" in result.stderr and "line 3" in result.stderr
    assert (await run(ws, "raise SystemExit(3)")).exit_code == 3


async def test_network_is_refused(ws, layers):
    result = await run(ws, "import socket\nsocket.create_connection(('127.0.0.1', 80), 1)")
    assert result.exit_code == 1 and "network access is disabled" in result.stderr
    result = await run(ws, "import socket\nsocket.getaddrinfo('example.com', 443)")
    assert result.exit_code == 1 and "network access is disabled" in result.stderr


async def test_network_is_refused_below_python_too(ws, layers):
    needs(layers, "seccomp")
    # ctypes bypasses the audit hook; the kernel still says no.
    code = "import ctypes\nprint(ctypes.CDLL(None).socket(2, 1, 0))"  # AF_INET, SOCK_STREAM
    result = await run(ws, code)
    assert result.ok and result.stdout.strip() == "-1"


@pytest.mark.parametrize(
    "code",
    [
        "print(open('/etc/passwd').read())",
        "import os\nos.open('/etc/passwd', os.O_RDONLY)",
        "open('../escape.txt', 'w').write('x')",
        "open('/tmp/timely-escape.txt', 'w').write('x')",
        "import os\nos.symlink('/etc/passwd', 'link')\nprint(open('link').read())",
        "import os\nos.chdir('/')\nprint(os.listdir('.'))",
        "import shutil\nshutil.copyfile('/etc/hostname', 'copy')",
    ],
)
async def test_files_outside_the_working_directory_are_refused(ws, code):
    result = await run(ws, code)
    assert result.exit_code == 1 and "PermissionError" in result.stderr, result.stderr
    assert not (ws.path.parent / "escape.txt").exists()
    assert not Path("/tmp/timely-escape.txt").exists()


async def test_files_are_refused_below_python_too(ws, layers):
    needs(layers, "landlock")
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "print(libc.open(b'/etc/passwd', 0), libc.open(b'/tmp/timely-escape2', 0o101, 0o644))"
    )
    result = await run(ws, code)
    assert result.ok and result.stdout.split() == ["-1", "-1"], result.stderr
    assert not Path("/tmp/timely-escape2").exists()


async def test_denied_paths_stay_unreadable_inside_readable_roots(ws, layers):
    import sklearn

    data = str(Path(sklearn.__file__).parent / "datasets" / "data")
    limits = FAST.model_copy(update={"deny_read": (data,)})
    result = await run(ws, f"print(open({data + '/iris.csv'!r}).read()[:20])", limits)
    assert result.exit_code == 1 and "PermissionError" in result.stderr
    if any(layer.startswith("landlock") for layer in layers):
        code = f"import ctypes\nprint(ctypes.CDLL(None).open({(data + '/iris.csv').encode()!r}, 0))"
        assert (await run(ws, code, limits)).stdout.strip() == "-1"


async def test_processes_are_refused(ws, layers):
    for code in (
        "import os\nos.system('true')",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.fork()",
        "import multiprocessing as mp\np = mp.Process(target=print)\np.start()",
    ):
        result = await run(ws, code)
        assert result.exit_code != 0 and "not allowed" in result.stderr, (code, result.stderr)
    if any(layer == "seccomp" for layer in layers):
        result = await run(ws, "import ctypes\nprint(ctypes.CDLL(None).fork())")
        assert result.ok and result.stdout.strip() == "-1"
    result = await run(ws, "import threading\nt = threading.Thread(target=print, args=('t',))\n"
                       "t.start(); t.join()")  # fmt: skip
    assert result.ok and result.stdout == "t\n"  # threads are fine


async def test_runaway_cpu_is_killed_at_the_cpu_limit(ws):
    t0 = time.monotonic()
    result = await run(ws, "while True: pass", SandboxLimits(timeout_s=20, cpu_s=1))
    assert result.killed == "cpu_limit" and result.exit_code is None
    assert time.monotonic() - t0 < 8
    assert "CPU time limit" in result.stderr


async def test_a_sleeping_run_is_killed_at_its_timeout_or_the_callers_deadline(ws):
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    result = await run(ws, code, SandboxLimits(timeout_s=0.5))
    assert result.killed == "timeout" and result.signal == "SIGKILL"
    assert result.stdout == "started\n" and 0.4 < result.duration_s < 5
    result = await run(ws, code, SandboxLimits(timeout_s=30), deadline_s=0.6)
    assert result.killed == "deadline" and result.duration_s < 5


async def test_memory_beyond_the_limit_cannot_be_allocated(ws):
    code = "x = bytearray(4 * 1024 ** 3)\nprint('allocated')"
    result = await run(ws, code, SandboxLimits(memory_mb=1024))
    assert result.exit_code == 1 and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout


async def test_output_is_truncated_and_the_environment_is_scrubbed(ws, monkeypatch):
    monkeypatch.setenv("TIMELY_TEST_SECRET", "hunter2")
    limits = SandboxLimits(output_chars=1000)
    code = "import os\nprint(sorted(os.environ))\nprint('x' * 100000)"
    result = await run(ws, code, limits)
    assert result.ok and "stdout" in result.truncated
    assert "TIMELY_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout
    assert len(result.stdout) < 1100


async def test_a_cancelled_run_leaves_no_process_behind(ws):
    code = "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)"
    task = asyncio.ensure_future(run(ws, code))
    for _ in range(200):
        if (ws.path / "pid").exists() and (ws.path / "pid").read_text():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int((ws.path / "pid").read_text())
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"sandbox child {pid} still runs after cancellation")


async def test_code_cannot_raise_its_limits_or_signal_others(ws):
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))"
    assert "not allowed" in (await run(ws, code)).stderr
    code = f"import os\nos.kill({os.getpid()}, 0)"
    assert "not allowed" in (await run(ws, code)).stderr


async def test_run_python_tool_keeps_files_per_session_and_hides_times_on_virtual_clocks():
    app = create_app(ServerConfig(latency="constant:0.5"))
    async with ToolClient.in_process(app) as client:
        first = await client.call(
            "run_python",
            {"code": "open('note.txt', 'w').write('kept')"},
            call_id="a",
            session_id="s1",
            deadline=Deadline(100, VirtualClock()),
        )
        clock = VirtualClock()
        second = await client.call(
            "run_python",
            {"code": "print(open('note.txt').read())"},
            call_id="b",
            session_id="s1",
            deadline=Deadline(100, clock),
        )
        other = await client.call(
            "run_python",
            {"code": "import os\nprint(os.path.exists('note.txt'))"},
            call_id="c",
            session_id="s2",
            deadline=Deadline(100, WallClock()),
        )
    assert first.ok and second.ok and other.ok
    assert '"stdout": "kept\\n"' in second.content and "duration_s" not in second.content
    # virtual: the injected latency and the program's counted work, never its measured time
    assert 0 < second.work_s < 1e-4 and clock.now() == 0.5 + second.work_s
    assert other.work_s == 0.0  # wall: the measured time is charged instead
    assert '"stdout": "False\\n"' in other.content and "duration_s" in other.content
