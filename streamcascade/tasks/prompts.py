"""Prompt shapes for the two things a level asks its model: solutions and tests.

Asked for a function, small code models repeat its signature and docstring
before the body: tokens paid for nothing. So the answer is prefilled with the
opening fence and the prompt's own code, and the model writes only the body
(a backend that cannot prefill gets the same request as a plain chat): on the
first 8 HumanEval problems this cut the 0.5B model's output from 1259 to 418
tokens at the same pass count. Tests are prefilled with the opening fence only:
prefilling `assert entry_point(` made the 0.5B model drop list brackets from
its arguments. A closing fence ends generation.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.backends.base import ChatMessage, Prompt
from streamcascade.schemas import CodeRequest

SYSTEM = "You are an expert Python programmer. Answer with code only."
STOP = ("\n```", "\nif __name__")


def _solution_user(prompt: str) -> str:
    return (
        "Complete this Python function. Reply with the whole function, including any "
        "imports it needs, in one ```python code block; no explanation, no examples, "
        "no tests.\n\n"
        f"```python\n{prompt.rstrip()}\n```"
    )


def solution_prompt(request: CodeRequest, exemplars: Sequence[tuple[str, str]] = ()) -> Prompt:
    """`exemplars` are (prompt, tested code) pairs from the exemplar memory; each
    becomes a worked example: an earlier turn of the same conversation."""
    shots: list[ChatMessage] = []
    for prompt, code in exemplars:
        shots.append(ChatMessage("user", _solution_user(prompt)))
        shots.append(ChatMessage("assistant", f"```python\n{code.strip()}\n```"))
    return Prompt(
        request_id=request.id,
        purpose="solutions",
        messages=(
            ChatMessage("system", SYSTEM),
            *shots,
            ChatMessage("user", _solution_user(request.prompt)),
        ),
        assistant_prefix=f"```python\n{request.prompt.rstrip()}\n",
    )


def tests_prompt(request: CodeRequest, max_lines: int) -> Prompt:
    user = (
        f"Here is the specification of the Python function `{request.entry_point}`:\n\n"
        f"```python\n{request.prompt.rstrip()}\n```\n\n"
        f"Do not implement it. Write {max_lines} different test cases for it, each a single "
        f"line `assert {request.entry_point}(...) == expected` with concrete arguments and the "
        "value a correct implementation returns, covering edge cases. Reply with the assert "
        "lines only, in one ```python code block."
    )
    return Prompt(
        request_id=request.id,
        purpose="tests",
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", user)),
        assistant_prefix="```python\n",
    )


def classification_prompt(request: CodeRequest) -> Prompt:
    labels = request.label_set or []
    choices = ", ".join(f'"{label}"' for label in labels)
    user = (
        f"{request.prompt.rstrip()}\n\n"
        f"Answer with exactly one of these labels and nothing else: {choices}."
    )
    return Prompt(
        request_id=request.id,
        purpose="classification",
        messages=(
            ChatMessage("system", "You are a careful code reviewer. Answer with a label only."),
            ChatMessage("user", user),
        ),
    )


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label an answer gives: the one it starts with (longest match first, so
    "request changes" is not read as "request"), else the only one it mentions."""
    answer = text.strip().strip("`\"'*. ").lower()
    by_length = sorted(labels, key=len, reverse=True)
    for label in by_length:
        if answer.startswith(label.lower()):
            return label
    mentioned = [label for label in by_length if label.lower() in answer]
    return mentioned[0] if len(mentioned) == 1 else None
