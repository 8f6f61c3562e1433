"""What a kind of task is: the protocol each one implements.

A level's step for a request is its kind's: a tested kind (a function checked
by asserts, a whole program checked on stdin/stdout, ...) hands the level its
prompts, how to read a program and tests out of the model's text and how to
run them; a label kind has the level vote. Imitation (does a lower level's
answer behave like the higher one's?) and grading by hidden references are
the kind's too, so the engine, the levels and the learner never ask what kind
a request is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamcascade.backends.base import Prompt
from streamcascade.sandbox import ExecutionResult, Sandbox
from streamcascade.schemas import Attempt, CodeRequest


@dataclass
class LevelOutcome:
    """An attempt record plus the answer it would give."""

    attempt: Attempt
    code: str
    tests: list[str] = field(default_factory=list)
    """The pooled tests the attempt ran (visible and generated), in its kind's form."""
    label: str | None = None
    """A label kind's majority label (None: no vote parsed)."""


@dataclass(frozen=True)
class Answer:
    """What a level answered: code, or a label."""

    code: str
    label: str | None = None


PassMatrix = list[list[bool]]


class TestedKind(Protocol):
    """The hooks of a kind whose answers are programs checked by tests. Tests
    are strings in the kind's own form (an assert line; a JSON stdin/stdout pair)."""

    stop: tuple[str, ...]
    """Solution generation stops at these."""
    test_stop: tuple[str, ...]
    """Test generation stops at these."""

    def solution_prompt(
        self, request: CodeRequest, exemplars: Sequence[tuple[str, str]] = ()
    ) -> Prompt: ...

    def tests_prompt(self, request: CodeRequest, max_tests: int) -> Prompt: ...

    def extract_program(self, request: CodeRequest, text: str) -> str: ...

    def extract_tests(self, request: CodeRequest, text: str, max_tests: int) -> list[str]: ...

    def visible_tests(self, request: CodeRequest) -> list[str]:
        """The tests the request shows every level."""
        ...

    def test_key(self, test: str) -> str:
        """Equal for tests that differ only in form, so the pool keeps one."""
        ...

    def run(
        self, sandbox: Sandbox, request: CodeRequest, programs: Sequence[str], tests: Sequence[str]
    ) -> tuple[PassMatrix, dict[str, ExecutionResult]]:
        """Every distinct program against every test: the pass matrix (a row per
        program, in order) and each program's result."""
        ...


class LevelTools(Protocol):
    """What a level offers a kind: its generate-and-test machinery and its vote."""

    def tested_step(
        self, requests: Sequence[CodeRequest], kind: TestedKind
    ) -> list[LevelOutcome]: ...

    def vote_step(
        self,
        requests: Sequence[CodeRequest],
        prompt: Callable[[CodeRequest], Prompt],
        parse: Callable[[CodeRequest, str], str | None],
    ) -> list[LevelOutcome]: ...


class TaskKind(Protocol):
    """One kind of task (entry point group `streamcascade.task_kinds`)."""

    name: str

    def check(self, request: CodeRequest) -> None:
        """Raise ValueError, saying what to fix, if the request is not one of this kind."""
        ...

    def step(self, level: LevelTools, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        """One level's attempt at each request, in one batch."""
        ...

    def agree(
        self,
        sandbox: Sandbox,
        request: CodeRequest,
        low: Answer,
        high: Answer,
        tests: Sequence[str],
        max_probes: int,
    ) -> bool | None:
        """Whether `low` behaves like `high` (None: nothing to tell them apart by).
        `tests`: the tests the levels ran, in this kind's form."""
        ...

    def has_reference(self, request: CodeRequest) -> bool:
        """Whether the request carries a hidden reference to grade by."""
        ...

    def teaching(self, request: CodeRequest, answer: Answer) -> tuple[Prompt, str] | None:
        """What a level that learns online is shown when a more capable level
        answered `answer`: the prompt it would have been asked and the text it
        should have given (None: this kind teaches nothing)."""
        ...

    def grade(self, sandbox: Sandbox, request: CodeRequest, answer: Answer) -> bool | None:
        """Whether the answer is right by the hidden reference (None: no reference)."""
        ...
