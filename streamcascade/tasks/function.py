"""`function`: write the function `entry_point` that the prompt (signature and
docstring) describes; tests are assert lines (HumanEval, MBPP)."""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence

from streamcascade.backends.base import Prompt
from streamcascade.evaluation import grade_many
from streamcascade.learning.imitation import agreement, probe_calls
from streamcascade.sandbox import ExecutionResult, Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck import extract_asserts, extract_program
from streamcascade.selfcheck.execution import run_candidates
from streamcascade.selfcheck.extract import normalize_assert
from streamcascade.tasks import prompts
from streamcascade.tasks.base import Answer, LevelOutcome, LevelTools, PassMatrix

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_entry_point(request: CodeRequest) -> None:
    name = request.entry_point
    if not _IDENTIFIER.match(name) or keyword.iskeyword(name):
        raise ValueError(
            f"a {request.kind} request needs entry_point, the name of the function to write "
            f"(a Python identifier), got {name!r}"
        )


class FunctionKind:
    """Entry point `function`.

    >>> kind = FunctionKind()
    >>> prompt = "def inc(x):\\n    '''Add one.'''\\n"
    >>> request = CodeRequest(id="r", prompt=prompt, entry_point="inc")
    >>> kind.extract_program(request, "```python\\ndef inc(x):\\n    return x + 1\\n```")
    'def inc(x):\\n    return x + 1\\n'
    """

    name = "function"
    stop: tuple[str, ...] = prompts.STOP
    test_stop: tuple[str, ...] = prompts.STOP

    def check(self, request: CodeRequest) -> None:
        check_entry_point(request)

    def step(self, level: LevelTools, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return level.tested_step(requests, self)

    # -- the tested kind's hooks ---------------------------------------------------

    def solution_prompt(
        self, request: CodeRequest, exemplars: Sequence[tuple[str, str]] = ()
    ) -> Prompt:
        return prompts.solution_prompt(request, exemplars)

    def tests_prompt(self, request: CodeRequest, max_tests: int) -> Prompt:
        return prompts.tests_prompt(request, max_tests)

    def extract_program(self, request: CodeRequest, text: str) -> str:
        return extract_program(text, request.prompt, request.entry_point)

    def extract_tests(self, request: CodeRequest, text: str, max_tests: int) -> list[str]:
        return extract_asserts(text, request.entry_point, max_tests)

    def visible_tests(self, request: CodeRequest) -> list[str]:
        return list(request.visible_tests)

    def test_key(self, test: str) -> str:
        return normalize_assert(test)

    def run(
        self, sandbox: Sandbox, request: CodeRequest, programs: Sequence[str], tests: Sequence[str]
    ) -> tuple[PassMatrix, dict[str, ExecutionResult]]:
        return run_candidates(sandbox, programs, tests)

    # -- imitation and grading -------------------------------------------------------

    def agree(
        self,
        sandbox: Sandbox,
        request: CodeRequest,
        low: Answer,
        high: Answer,
        tests: Sequence[str],
        max_probes: int,
    ) -> bool | None:
        calls = probe_calls([*self.visible_tests(request), *tests], request.entry_point, max_probes)
        return agreement(sandbox, high.code, low.code, calls)

    def teaching(self, request: CodeRequest, answer: Answer) -> tuple[Prompt, str] | None:
        return None  # no level learns to write programs online (yet): it would fine-tune

    def has_reference(self, request: CodeRequest) -> bool:
        return request.reference_tests is not None

    def grade(self, sandbox: Sandbox, request: CodeRequest, answer: Answer) -> bool | None:
        return grade_many(sandbox, [(request, answer.code)])[0]


KIND = FunctionKind()
