"""The real sandbox against hostile and broken programs. Each must come back as a
result, quickly, with the host untouched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox
from streamcascade.sandbox.leases import BASE_UID
from streamcascade.sandbox.runner import _processes_of_uid

GOOD = "def f(x):\n    return x + 1\n"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")


def test_per_assert_results(sandbox: Sandbox) -> None:
    result = sandbox.run(GOOD, ["assert f(1) == 2", "assert f(1) == 3", "assert g(1)", "x = 1"])
    assert result.load_status == "ok"
    assert result.test_status[0] == "passed"
    assert result.test_status[1].startswith("failed")
    assert result.test_status[2].startswith("error: NameError")
    assert result.test_status[3] == "passed"


def test_syntax_error_and_crash_at_load_are_results(sandbox: Sandbox) -> None:
    assert sandbox.run("def f(:\n", ["assert f(1)"]).load_status.startswith("error: SyntaxError")
    result = sandbox.run("import os\nos._exit(3)", ["assert True"])
    assert result.test_status == ["not run"]


def test_infinite_loop_times_out_per_assert_and_others_still_run(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.run(
        "def spin():\n    while True:\n        pass\n",
        ["assert 1 == 1", "spin()", "assert 2 == 2"],
    )
    assert result.test_status == ["passed", "timed out", "passed"]
    assert time.monotonic() - started < 10


def test_loop_that_swallows_the_alarm_is_stopped_and_the_program_restarted() -> None:
    # The program ignores its own alarm; the harness's (in a process the
    # program never ran in) still fires, kills it, and loads it afresh.
    config = SandboxConfig(per_test_timeout_s=0.5)
    with Sandbox(config) as box:
        program = (
            "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "def spin():\n    while True:\n        pass\n"
            "def f(x):\n    return x + 1\n"
        )
        started = time.monotonic()
        result = box.run(
            program, ["spin()", "assert f(1) == 2", "assert spin() == 1", "assert f(2) == 3"]
        )
    assert not result.killed
    assert result.test_status == ["timed out", "passed", "timed out", "not run"]
    assert time.monotonic() - started < 10


def test_memory_bomb_is_contained(sandbox: Sandbox) -> None:
    result = sandbox.run(GOOD, ["x = bytearray(8 * 1024**3)", "assert f(1) == 2"])
    assert result.test_status[0].startswith("error: MemoryError")
    assert result.test_status[1] == "passed"


@root_only
def test_fork_bomb_is_contained_and_cleaned_up() -> None:
    with Sandbox(SandboxConfig(workers=1, per_test_timeout_s=2.0)) as box:
        program = (
            "import os\n"
            "def bomb():\n"
            "    while True:\n"
            "        try:\n"
            "            if os.fork() == 0:\n"
            "                os.setsid()  # try to leave the process group\n"
            "        except OSError:\n"
            "            pass\n"
        )
        started = time.monotonic()
        result = box.run(program, ["bomb()"])
        assert time.monotonic() - started < 30
        assert result.test_status[0] in ("timed out", "not run")
        uid = result.isolation["uid"]
        assert isinstance(uid, int) and uid >= BASE_UID
        assert _processes_of_uid(uid) == []  # nothing of the slot survives
        assert box.run(GOOD, ["assert f(1) == 2"]).passed == [True]


def test_network_is_unreachable(sandbox: Sandbox) -> None:
    program = (
        "import socket\n"
        "def connect():\n"
        "    s = socket.socket()\n"
        "    s.settimeout(1)\n"
        "    s.connect(('127.0.0.1', 22))\n"
    )
    result = sandbox.run(program, ["connect()"])
    assert result.isolation.get("network") is True
    assert "Network is unreachable" in result.test_status[0] or "OSError" in result.test_status[0]


@root_only
def test_writing_outside_its_dir_fails_and_inside_works(sandbox: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    program = (
        "import os\n"
        f"def outside():\n    open({str(target)!r}, 'w').write('x')\n"
        "def tmp():\n    open('/tmp/streamcascade-escape', 'w').write('x')\n"
        "def inside():\n    open('mine.txt', 'w').write('x')\n    return os.path.exists('mine.txt')\n"
        "def home():\n    return os.listdir(os.path.expanduser('~'))\n"
    )
    result = sandbox.run(
        program,
        [
            "outside()",
            "tmp()",
            "assert inside()",
            "assert sorted(home()) == ['mine.txt', 'streamcascade-escape']",
        ],
    )
    assert result.test_status[0].startswith("error:")
    # /tmp in the sandbox is its own private tmpfs (its working dir): the
    # write succeeds there and never reaches the host's /tmp.
    assert result.test_status[1:] == ["passed", "passed", "passed"]
    assert not target.exists()
    assert not Path("/tmp/streamcascade-escape").exists()
    assert result.isolation["uid"] != 0


def test_huge_output_is_capped() -> None:
    config = SandboxConfig(max_output_bytes=1000)
    with Sandbox(config) as box:
        result = box.run("import sys\nfor _ in range(200000):\n    print('x' * 100)\n", [])
    assert result.load_status == "ok"
    assert len(result.stdout) < 1100
    assert result.stdout.endswith("[truncated]")


def test_huge_file_is_refused(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "def big():\n    open('f', 'wb').write(b'x' * (64 * 1024 * 1024))\n", ["big()"]
    )
    assert not result.passed[0]


def test_stdout_is_captured(sandbox: Sandbox) -> None:
    result = sandbox.run("print('hello')\nimport sys\nprint('oops', file=sys.stderr)\n", [])
    assert result.stdout == "hello\n"
    assert result.stderr == "oops\n"


def test_garbage_on_result_pipe_is_ignored(sandbox: Sandbox) -> None:
    program = "import os\nfor fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n    try:\n        os.write(fd, b'{not json\\n')\n    except OSError:\n        pass\n"
    result = sandbox.run(program + GOOD, ["assert f(1) == 2"])
    assert result.passed == [True]


def test_run_many_keeps_order_and_uses_all_workers(sandbox: Sandbox) -> None:
    jobs = [
        (f"def f():\n    return {i}\n", [f"assert f() == {i}", "assert f() == -1"])
        for i in range(12)
    ]
    results = sandbox.run_many(jobs)
    assert [r.passed for r in results] == [[True, False]] * 12
    assert sandbox.workers == (os.cpu_count() or 1)


def test_throughput_benchmark_runs_and_reports_all_three_ways() -> None:
    from streamcascade.benchtools.perf import sandbox_throughput

    figures = sandbox_throughput(programs=4, asserts_per_program=5, naive_asserts=4)
    assert figures.batched_asserts_per_s > 0
    assert figures.per_assert_sandboxed_per_s > 0 and figures.per_assert_bare_process_per_s > 0
    assert "asserts/s" in figures.table()


def test_a_run_whose_result_lines_are_malformed_is_reaped_and_its_slot_works_again() -> None:
    """Lines the parent once raised on left the run's processes alive, its
    cgroup busy and the slot unable to fork; now each is dropped, the run ends
    in a result, and the next run on the slot passes."""
    program = (
        "import os, time\n"
        'lines = [b\'[\' * 100000, b\'{"event": "ready", "isolation": [1]}\',\n'
        '         b\'{"event": "values", "index": 0, "values": [{"c": [1]}]}\']\n'
        "for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n"
        "    for line in lines:\n"
        "        try:\n"
        "            os.write(fd, b'\\n' + line + b'\\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "time.sleep(60)\n"
    )
    with Sandbox(SandboxConfig(workers=1, per_test_timeout_s=1.0, program_timeout_s=2.0)) as box:
        started = time.monotonic()
        result = box.run(program, ["assert f(1) == 2"])
        assert time.monotonic() - started < 30
        assert result.passed == [False] and result.load_status == "timed out"
        uid = result.isolation["uid"]
        assert isinstance(uid, int) and _processes_of_uid(uid) == []
        for _ in range(3):  # the slot can fork again: nothing holds its pids
            assert box.run(GOOD + "import os\nos.fork() or None\n",
                           ["assert f(1) == 2"]).passed == [True]  # fmt: skip


def test_a_run_cannot_use_the_kernel_keyrings_or_watch_the_shared_tree(sandbox: Sandbox) -> None:
    program = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def f():\n"
        "    key = libc.syscall(248, b'user', b'sc-secret', b'x', 1, -4)\n"
        "    denied = ctypes.get_errno()\n"
        "    watch = libc.inotify_init1(0)\n"
        "    return [key, denied, watch]\n"
    )
    result = sandbox.values(program, ["f()"])
    assert result.values == [[-1, 1, -1]] and result.isolation["seccomp"] is True
