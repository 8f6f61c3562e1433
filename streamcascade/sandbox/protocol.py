"""The parent's reading of the result channel: one JSON event per line, written
by the harness, but on a pipe the untrusted program can also write to.

So nothing on it is taken on its word: a line is parsed with bounded depth and
size, each field is checked for type before use, and a line that is not a
well-formed event of the expected kind is dropped, never raised. What the
child may claim is limited too: a split test passes only by the parent's
judgement of the values it sent, and a whole program's case only by the
parent's comparison of its output (`Sandbox.run_io`): the child reports raw
output and how the run ended, nothing else. A flood of lines ends the run.

Examples
--------
>>> channel = ResultChannel(n_cases=1, split=[None], inputs=None, want_values=False,
...                         required=[], has_cgroup=False)
>>> channel.feed(b'{"event": "loaded", "status": "ok"}')
'step'
>>> channel.feed(b'[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[') is None
True
>>> channel.feed(b'{"event": "test", "index": 0, "status": "passed"}')
'step'
>>> channel.statuses
['passed']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamcascade.sandbox.verdicts import BadValue, TestPlan, decode_value, judge

MAX_STATUS_CHARS = 400
"""A status the child sends is cut to this: it is shown, never parsed further."""
CASE_STATUSES = ("ran", "timed out")
"""What a whole program's case may report besides "error: ..."; never "passed"."""


def _status(value: Any) -> str | None:
    return value[:MAX_STATUS_CHARS] if type(value) is str else None


@dataclass
class ResultChannel:
    """What one run reported, event by event. `feed` returns "step" when an
    event shows progress (the run's per-step deadline moves), "ready",
    "done", "refused" (isolation missing), or None for a line dropped."""

    n_cases: int
    split: Sequence[TestPlan | None]
    inputs: Sequence[str] | None
    want_values: bool
    required: Sequence[str]
    """Isolation steps the run must have, or it is refused."""
    has_cgroup: bool
    load_status: str = "not run"
    statuses: list[str] = field(default_factory=list)
    outputs: list[str | None] = field(default_factory=list)
    values: list[object] = field(default_factory=list)
    isolation: dict[str, object] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    isolation_errors: list[str] = field(default_factory=list)
    n_dropped: int = 0
    """Lines that were not a well-formed event: junk or forgery, dropped."""
    reloads: int = 0
    """Times the harness restarted the program's process."""

    def __post_init__(self) -> None:
        self.statuses = ["not run"] * self.n_cases
        self.outputs = [None] * (self.n_cases if self.inputs is not None else 0)
        self.values = [None] * (self.n_cases if self.want_values else 0)

    def interrupt(self, status: str) -> None:
        """The run was stopped: what was running (the program's load, or the
        first test not reported) gets `status`; later ones stay "not run"."""
        if self.load_status == "not run" and self.isolation:
            self.load_status = status
        elif self.load_status == "ok":
            first = next((i for i, s in enumerate(self.statuses) if s == "not run"), None)
            if first is not None:
                self.statuses[first] = status

    def feed(self, line: bytes) -> str | None:
        try:
            event = json.loads(line)  # too deep: RecursionError, caught below
            if type(event) is not dict or type(event.get("event")) is not str:
                raise ValueError("not an event")
            return self._event(event["event"], event)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, MemoryError):
            self.n_dropped += 1
            return None

    def _index(self, event: dict[str, Any]) -> int | None:
        index = event.get("index")
        return index if type(index) is int and 0 <= index < self.n_cases else None

    def _event(self, kind: str, event: dict[str, Any]) -> str | None:
        if kind == "ready":
            if self.isolation:
                raise ValueError("ready twice")
            reported = event.get("isolation")
            if type(reported) is not dict:
                raise ValueError("isolation is not a mapping")
            self.isolation = {str(k)[:40]: v for k, v in list(reported.items())[:20]
                              if type(v) in (bool, int)}  # fmt: skip
            self.isolation["cgroup"] = self.has_cgroup
            self.refused = [k for k in self.required if not self.isolation.get(k)]
            return "refused" if self.refused else "ready"
        if kind == "isolation_error":
            self.isolation_errors.append(str(_status(event.get("error"))))
            return None
        if kind == "loaded":
            status = _status(event.get("status"))
            if status is None or self.load_status != "not run":
                raise ValueError("malformed or repeated load status")
            self.load_status = status
            return "step" if status == "ok" else "done"
        if kind == "values":
            index = self._index(event)
            if index is None or index >= len(self.split):
                raise ValueError("values for no split test")
            plan = self.split[index]
            if plan is None or self.statuses[index] != "not run":
                raise ValueError("values for a test not split, or twice")
            self.statuses[index] = self._judged(plan, event.get("values"), index)
            return "step"
        if kind in ("test", "case"):
            return self._reported(kind, event)
        if kind == "reloading":
            # The harness restarts a program that stopped answering (after a
            # timeout): its load gets the load's budget. Only after a test.
            if self.load_status != "ok" or self.reloads >= self.n_cases:
                raise ValueError("a reload with nothing to reload for")
            self.reloads += 1
            return "ready"
        if kind == "done":
            return "done"
        raise ValueError(f"unknown event {kind[:40]!r}")

    def _reported(self, kind: str, event: dict[str, Any]) -> str:
        index = self._index(event)
        status = _status(event.get("status"))
        if index is None or status is None or self.statuses[index] != "not run":
            raise ValueError("malformed or repeated result")
        if kind == "case":
            # A whole program's case: only how it ended. Its output is compared
            # by the caller; a status the harness never sends is a forgery.
            if self.inputs is None or not (status in CASE_STATUSES or status.startswith("error: ")):
                raise ValueError("not a case status")
            stdout = event.get("stdout")
            if type(stdout) is not str:
                raise ValueError("case without output")
            self.outputs[index] = stdout
        elif self.inputs is not None:
            raise ValueError("a test result from a whole program")
        elif status == "passed" and index < len(self.split) and self.split[index] is not None:
            # A split test passes only by the parent's judgement of its values
            # (the child reports how it failed: an error or timeout in a hole).
            raise ValueError("a split test claimed passed")
        self.statuses[index] = status
        return "step"

    def _judged(self, plan: TestPlan, raw: Any, index: int) -> str:
        """The status of a split test from the values the child sent."""
        if type(raw) is not list or len(raw) != len(plan.holes):
            return "error: malformed values from the sandbox"
        try:
            decoded = [decode_value(v) for v in raw]
        except (BadValue, RecursionError, IndexError, TypeError, ValueError) as error:
            return f"error: malformed values from the sandbox ({str(error)[:100]})"
        if not plan.asserts:  # an expression asked for its value
            if self.values:
                self.values[index] = decoded[0]
            return "ran"
        return judge(plan, decoded)
