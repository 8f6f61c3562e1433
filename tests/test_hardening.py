"""Issue 13's edges: the runner's deadline and line caps, hostile exceptions,
keywords as entry points, and control characters in logs."""

from __future__ import annotations

import io
import logging
import time

import pytest

from streamcascade.cli import PlainLogFormatter
from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox
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


def test_an_endless_line_on_the_result_pipe_keeps_the_timeout_status() -> None:
    program = (
        "import os, time\n"
        "def f():\n"
        "    chunk = b'x' * 65536\n"
        "    end = time.monotonic() + 0.5\n"
        "    while time.monotonic() < end:\n"
        "        for fd in range(3, 20):\n"
        "            try:\n"
        "                os.write(fd, chunk)\n"
        "            except OSError:\n"
        "                pass\n"
        "    while True:\n"
        "        pass\n"
    )
    config = SandboxConfig(workers=1, per_test_timeout_s=1.0)
    with Sandbox(config) as box:
        result = box.run(program, ["f()", "assert True"])
    assert result.test_status[0] == "timed out"
