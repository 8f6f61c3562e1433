"""`io_function`: a function with a given signature (`starter_code`), specified
by argument/result examples instead of asserts (APPS's call-based problems).
Each example becomes an assert, so the rest is the `function` kind's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamcascade.backends.base import ChatMessage, Prompt
from streamcascade.evaluation import grade_many
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest, IOExample
from streamcascade.selfcheck import extract_program
from streamcascade.tasks import prompts
from streamcascade.tasks.base import Answer
from streamcascade.tasks.function import FunctionKind, check_entry_point


def example_assert(entry_point: str, example: IOExample) -> str:
    """`assert f(*args) == result` for one example.

    >>> example_assert("add", IOExample(input=[1, 2], output=3))
    'assert add(1, 2) == 3'
    """
    args: list[Any] = list(example.input)
    call = f"{entry_point}({', '.join(repr(a) for a in args)})"
    return f"assert {call} == {example.output!r}"


class IOFunctionKind(FunctionKind):
    """Entry point `io_function`."""

    name = "io_function"

    def check(self, request: CodeRequest) -> None:
        check_entry_point(request)
        for example in [*request.examples, *request.reference_examples]:
            if not isinstance(example.input, list):
                raise ValueError(
                    "an io_function request's examples are {input: [arguments...], output: result}"
                )

    def solution_prompt(
        self, request: CodeRequest, exemplars: Sequence[tuple[str, str]] = ()
    ) -> Prompt:
        starter = request.starter_code.strip() or f"def {request.entry_point}(...):"
        shown = [example_assert(request.entry_point, e) for e in request.examples[:3]]
        user = (
            f"Write the Python function `{request.entry_point}` for the task below, starting "
            f"from:\n\n```python\n{starter}\n```\n\n{request.prompt.rstrip()}\n\n"
            + ("It must pass:\n```python\n" + "\n".join(shown) + "\n```\n\n" if shown else "")
            + "Reply with the whole function, including any imports it needs, in one ```python "
            "code block; no explanation, no examples, no input reading."
        )
        return Prompt(
            request_id=request.id,
            purpose="solutions",
            messages=(ChatMessage("system", prompts.SYSTEM), ChatMessage("user", user)),
            assistant_prefix="```python\n" + (request.starter_code.strip() + "\n"
                                              if request.starter_code.strip() else ""),
        )  # fmt: skip

    def extract_program(self, request: CodeRequest, text: str) -> str:
        return extract_program(text, request.starter_code, request.entry_point)

    def visible_tests(self, request: CodeRequest) -> list[str]:
        return [
            *request.visible_tests,
            *(example_assert(request.entry_point, e) for e in request.examples),
        ]

    def has_reference(self, request: CodeRequest) -> bool:
        return bool(request.reference_examples) or request.reference_tests is not None

    def grade(self, sandbox: Sandbox, request: CodeRequest, answer: Answer) -> bool | None:
        if request.reference_tests is not None:
            return grade_many(sandbox, [(request, answer.code)])[0]
        if not request.reference_examples:
            return None
        if not answer.code.strip():
            return False
        tests = [example_assert(request.entry_point, e) for e in request.reference_examples]
        result = sandbox.run(answer.code, tests)
        return result.load_status == "ok" and all(result.passed)


KIND = IOFunctionKind()
