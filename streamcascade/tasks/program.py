"""`program`: a whole program that reads standard input and writes standard
output (competitive programming, data-pipeline steps). A test is a pair of an
input and the output a correct program prints; the program runs in the sandbox
once per input, and its output is compared outside the sandbox, whitespace
normalised (numbers within `float_tolerance` where the request sets one)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from streamcascade.backends.base import ChatMessage, Prompt
from streamcascade.sandbox import ExecutionResult, Sandbox
from streamcascade.sandbox.compare import output_tokens, same_output
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck.extract import code_blocks
from streamcascade.tasks.base import Answer, LevelOutcome, LevelTools, PassMatrix

SYSTEM = "You are an expert Python programmer. Answer with code only."
_PAIR = re.compile(
    r"```input[^\n]*\n(.*?)```\s*```output[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE
)


def io_test(stdin: str, stdout: str) -> str:
    """A test in this kind's form: a JSON object with the input and the output."""
    return json.dumps({"stdin": stdin, "stdout": stdout})


def parse_io_test(test: str) -> tuple[str, str]:
    case = json.loads(test)
    return str(case["stdin"]), str(case["stdout"])


def _shown(request: CodeRequest) -> str:
    """The visible examples the prompt does not already show."""
    parts = []
    for example in request.examples[:3]:
        stdin, stdout = str(example.input), str(example.output)
        if stdin.strip() and stdin.strip() in request.prompt:
            continue
        parts.append(f"Example input:\n```\n{stdin.rstrip()}\n```\nIts output:\n```\n"
                     f"{stdout.rstrip()}\n```")  # fmt: skip
    return "\n\n".join(parts)


class ProgramKind:
    """Entry point `program`.

    >>> kind = ProgramKind()
    >>> request = CodeRequest(id="r", kind="program", prompt="Print the sum of two integers.")
    >>> kind.extract_tests(request, "```input\\n1 2\\n```\\n```output\\n3\\n```", 5)
    ['{"stdin": "1 2\\\\n", "stdout": "3\\\\n"}']
    """

    name = "program"
    stop: tuple[str, ...] = ("\n```",)
    test_stop: tuple[str, ...] = ()  # input and output blocks: fences end nothing

    def check(self, request: CodeRequest) -> None:
        for example in [*request.examples, *request.reference_examples]:
            if not isinstance(example.input, str) or not isinstance(example.output, str):
                raise ValueError(
                    "a program request's examples are {input: stdin text, output: stdout text}"
                )

    def step(self, level: LevelTools, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return level.tested_step(requests, self)

    def solution_prompt(
        self, request: CodeRequest, exemplars: Sequence[tuple[str, str]] = ()
    ) -> Prompt:
        examples = _shown(request)
        user = (
            "Write a complete Python 3 program for the task below. It reads standard input "
            "and writes standard output, exactly in the format asked.\n\n"
            f"{request.prompt.rstrip()}\n\n"
            + (f"{examples}\n\n" if examples else "")
            + "Reply with the whole program in one ```python code block; no explanation."
        )
        return Prompt(
            request_id=request.id,
            purpose="solutions",
            messages=(ChatMessage("system", SYSTEM), ChatMessage("user", user)),
            assistant_prefix="```python\n",
        )

    def tests_prompt(self, request: CodeRequest, max_tests: int) -> Prompt:
        user = (
            "Here is a task whose solution is a program reading standard input and writing "
            f"standard output:\n\n{request.prompt.rstrip()}\n\n"
            f"Do not solve it. Write {max_tests} different small test cases, each an input "
            "block followed by the exact output a correct program prints:\n"
            "```input\n...\n```\n```output\n...\n```"
        )
        return Prompt(
            request_id=request.id,
            purpose="tests",
            messages=(ChatMessage("system", SYSTEM), ChatMessage("user", user)),
            assistant_prefix="```input\n",
        )

    def extract_program(self, request: CodeRequest, text: str) -> str:
        blocks = code_blocks(text)
        code = blocks[0] if blocks else text
        return code.strip() + "\n" if code.strip() else ""

    def extract_tests(self, request: CodeRequest, text: str, max_tests: int) -> list[str]:
        return [io_test(stdin, stdout) for stdin, stdout in _PAIR.findall(text)][:max_tests]

    def visible_tests(self, request: CodeRequest) -> list[str]:
        return [io_test(str(e.input), str(e.output)) for e in request.examples]

    def test_key(self, test: str) -> str:
        stdin, stdout = parse_io_test(test)
        return json.dumps([output_tokens(stdin), output_tokens(stdout)])

    def run(
        self, sandbox: Sandbox, request: CodeRequest, programs: Sequence[str], tests: Sequence[str]
    ) -> tuple[PassMatrix, dict[str, ExecutionResult]]:
        cases = [parse_io_test(t) for t in tests]
        unique = list(dict.fromkeys(p for p in programs if p.strip()))
        runs = sandbox.run_io_many([(p, cases) for p in unique], request.float_tolerance)
        results = dict(zip(unique, runs, strict=True))
        passed = [
            results[p].passed
            if p in results and results[p].load_status == "ok"
            else [False] * len(tests)
            for p in programs
        ]
        return passed, results

    def agree(
        self,
        sandbox: Sandbox,
        request: CodeRequest,
        low: Answer,
        high: Answer,
        tests: Sequence[str],
        max_probes: int,
    ) -> bool | None:
        """Both programs on the inputs of the visible and generated tests: the
        lower one agrees where it prints what the higher one prints."""
        if not high.code.strip():
            return None
        if not low.code.strip():
            return False
        inputs = list(dict.fromkeys(
            parse_io_test(t)[0] for t in [*self.visible_tests(request), *tests]
        ))[:max_probes]  # fmt: skip
        if not inputs:
            return None
        if low.code == high.code:
            return True
        reference, candidate = sandbox.run_program_many([(high.code, inputs), (low.code, inputs)])
        informative = [i for i, s in enumerate(reference.test_status) if s == "ran"]
        if reference.load_status != "ok" or not informative:
            return None
        if candidate.load_status != "ok":
            return False
        tolerance = request.float_tolerance
        return all(
            candidate.test_status[i] == "ran"
            and same_output(candidate.outputs[i] or "", reference.outputs[i] or "", tolerance)
            for i in informative
        )

    def teaching(self, request: CodeRequest, answer: Answer) -> tuple[Prompt, str] | None:
        return None  # no level learns to write programs online (yet): it would fine-tune

    def has_reference(self, request: CodeRequest) -> bool:
        return bool(request.reference_examples)

    def grade(self, sandbox: Sandbox, request: CodeRequest, answer: Answer) -> bool | None:
        if not request.reference_examples:
            return None
        if not answer.code.strip():
            return False
        cases = [(str(e.input), str(e.output)) for e in request.reference_examples]
        result = sandbox.run_io(answer.code, cases, request.float_tolerance)
        return result.load_status == "ok" and all(result.passed)


KIND = ProgramKind()
