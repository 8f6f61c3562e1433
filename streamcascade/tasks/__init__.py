"""Kinds of task: how a request is prompted, answered, tested, imitated and
graded. Each kind is an entry point in the group `streamcascade.task_kinds`
(`function`, `io_function`, `program`, `label` are registered the same way in
`pyproject.toml`); a package adds a kind by declaring one."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest
from streamcascade.tasks.base import Answer, LevelOutcome, LevelTools, TaskKind, TestedKind

GROUP = "streamcascade.task_kinds"

__all__ = [
    "Answer",
    "LevelOutcome",
    "LevelTools",
    "TaskKind",
    "TestedKind",
    "check_request",
    "grade_all",
    "grade_answer",
    "installed_task_kinds",
    "task_kind",
]


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def installed_task_kinds() -> list[str]:
    return sorted(_entry_points())


@cache
def task_kind(name: str) -> TaskKind:
    found = _entry_points()
    if name not in found:
        raise ValueError(
            f"unknown task kind {name!r}; installed: {', '.join(installed_task_kinds())}"
        )
    kind: TaskKind = found[name].load()
    return kind


def check_request(request: CodeRequest) -> TaskKind:
    """The request's kind, once it has checked the request (ValueError if not)."""
    kind = task_kind(request.kind)
    kind.check(request)
    return kind


def grade_answer(sandbox: Sandbox, request: CodeRequest, answer: CascadeAnswer) -> bool | None:
    """Whether a published answer is right by the request's hidden reference."""
    return task_kind(request.kind).grade(sandbox, request, Answer(answer.code, answer.label))


def grade_all(sandbox: Sandbox, pairs: Sequence[tuple[CodeRequest, str]]) -> list[bool | None]:
    """Whether each code is right by its request's hidden reference (None: the
    request has none), graded on all of the sandbox's workers."""

    def grade(pair: tuple[CodeRequest, str]) -> bool | None:
        request, code = pair
        return task_kind(request.kind).grade(sandbox, request, Answer(code))

    with ThreadPoolExecutor(max(1, sandbox.workers)) as pool:
        return list(pool.map(grade, pairs))
