"""The parent's reading of the result channel: whatever the child (or the
program, which shares the pipe) writes, a line is an event or is dropped,
never an exception in the parent, and the child's claims are bounded."""

from __future__ import annotations

import json
import random

import pytest

from streamcascade.sandbox.protocol import ResultChannel
from streamcascade.sandbox.verdicts import plan_test


def _channel(inputs: list[str] | None = None) -> ResultChannel:
    tests = ["assert f(1) == 2", "for x in range(2): assert f(x)"]
    split = [plan_test(t) for t in tests] if inputs is None else []
    return ResultChannel(
        n_cases=len(inputs) if inputs is not None else len(tests), split=split, inputs=inputs,
        want_values=False, required=["proc"], has_cgroup=True,
    )  # fmt: skip


MALFORMED = [
    b"[" * 100_000,
    b"{" * 50_000,
    b'{"event": "ready", "isolation": [1, 2]}',
    b'{"event": "ready", "isolation": "yes"}',
    b'{"event": "values", "index": 0, "values": [{"c": [1]}]}',
    b'{"event": "values", "index": 0, "values": [{"d": [[1]]}]}',
    b'{"event": "values", "index": 0, "values": [{"s": [[1]]}]}',
    b'{"event": "values", "index": "0", "values": [2]}',
    b'{"event": "test", "index": 1, "status": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"event": "test", "index": 1.0, "status": "passed"}',
    b'{"event": "test", "index": 99, "status": "passed"}',
    b'{"event": "loaded", "status": 7}',
    b'{"event": ["done"]}',
    b'{"event": null}',
    b"7",
    b'"event"',
    b"\xff\xfe\x00",
    b"NaN",
]


@pytest.mark.parametrize("line", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_line_is_dropped_never_raised(line: bytes) -> None:
    channel = _channel()
    channel.feed(b'{"event": "ready", "isolation": {"proc": true}}')
    channel.feed(b'{"event": "loaded", "status": "ok"}')
    assert channel.feed(line) is None or channel.statuses[0].startswith("error: malformed")
    assert "passed" not in channel.statuses


def test_random_lines_never_raise_and_never_pass() -> None:
    rng = random.Random(0)
    atoms: list[object] = ["event", "test", "values", "case", "passed", "ran", 0, 1, -1, None,
                           True, 1e308, [], {}, "index", "status", "done", "loaded", "ok"]  # fmt: skip

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 4 or roll < 0.5:
            return rng.choice(atoms)
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {str(rng.choice(atoms)): value(depth + 1) for _ in range(rng.randint(0, 4))}

    for inputs in (None, ["1", "2"]):
        channel = _channel(inputs)
        for _ in range(3000):
            line = json.dumps(value(0)).encode()
            if rng.random() < 0.2:
                line = line[: rng.randint(0, len(line))]
            channel.feed(line)
        assert "passed" not in channel.statuses


def test_a_split_test_passes_only_by_the_parents_judgement() -> None:
    channel = _channel()
    assert channel.feed(b'{"event": "test", "index": 0, "status": "passed"}') is None
    assert channel.feed(b'{"event": "values", "index": 0, "values": [3]}') == "step"
    assert channel.statuses[0] == "failed: AssertionError"
    assert channel.feed(b'{"event": "values", "index": 0, "values": [2]}') is None  # once only
    # A test the parent could not split is the child's to report (and untrusted).
    assert channel.feed(b'{"event": "test", "index": 1, "status": "passed"}') == "step"
    assert channel.statuses == ["failed: AssertionError", "passed"]


def test_a_whole_programs_case_reports_output_and_how_it_ended_never_a_verdict() -> None:
    channel = _channel(["1", "2"])
    forged = b'{"event": "case", "index": 0, "status": "passed", "stdout": "3"}'
    assert channel.feed(forged) is None
    assert channel.feed(b'{"event": "test", "index": 0, "status": "passed"}') is None
    assert channel.feed(b'{"event": "case", "index": 0, "status": "ran", "stdout": "3"}') == "step"
    assert channel.feed(b'{"event": "case", "index": 1, "status": "error: exit 3", "stdout": ""}')
    assert channel.statuses == ["ran", "error: exit 3"] and channel.outputs == ["3", ""]


def test_missing_isolation_refuses_and_a_second_ready_is_dropped() -> None:
    channel = _channel()
    assert channel.feed(b'{"event": "ready", "isolation": {"proc": false}}') == "refused"
    assert channel.refused == ["proc"] and channel.isolation["cgroup"] is True
    assert channel.feed(b'{"event": "ready", "isolation": {"proc": true}}') is None


def test_a_reload_is_accepted_only_after_the_load_and_at_most_once_per_test() -> None:
    channel = _channel()
    assert channel.feed(b'{"event": "reloading"}') is None  # nothing loaded yet
    channel.feed(b'{"event": "ready", "isolation": {"proc": true}}')
    channel.feed(b'{"event": "loaded", "status": "ok"}')
    assert channel.feed(b'{"event": "reloading"}') == "ready"  # the load's budget again
    assert channel.feed(b'{"event": "reloading"}') == "ready"
    assert channel.feed(b'{"event": "reloading"}') is None  # more than there are tests
    assert channel.reloads == 2
