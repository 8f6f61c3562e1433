"""Labels for what the levels answered: by the request's hidden reference, or
by imitation (does a lower level's answer behave like the highest one's?).
What "right" and "behaves like" mean is the request's kind's."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.tasks import Answer, LevelOutcome, task_kind

LabelSource = Literal["auto", "imitation", "reference"]


class Labeler:
    """Says whether a level's answer was right: by the request's reference, or
    by agreeing with a higher level's answer (imitation). Verdicts are cached,
    since a replayed stream repeats them."""

    def __init__(self, sandbox: Sandbox, source: LabelSource, max_probes: int = 16) -> None:
        self.sandbox = sandbox
        self.source = source
        self.max_probes = max_probes
        self._reference: dict[tuple[str, str, str | None], bool | None] = {}
        self._imitation: dict[tuple[str, ...], bool | None] = {}
        self.seconds = 0.0

    def share_cache(self, other: Labeler) -> None:
        """Use `other`'s caches of verdicts (the same sandbox and probes)."""
        self._reference = other._reference
        self._imitation = other._imitation

    def uses_reference(self, request: CodeRequest) -> bool:
        has = task_kind(request.kind).has_reference(request)
        return self.source == "reference" or (self.source == "auto" and has)

    def reference(self, request: CodeRequest, code: str, label: str | None = None) -> bool | None:
        key = (request.id, code, label)
        if key not in self._reference:
            started = time.perf_counter()
            kind = task_kind(request.kind)
            self._reference[key] = kind.grade(self.sandbox, request, Answer(code, label))
            self.seconds += time.perf_counter() - started
        return self._reference[key]

    def imitation(
        self,
        request: CodeRequest,
        code: str,
        higher_code: str,
        tests: Sequence[str],
        label: str | None = None,
        higher_label: str | None = None,
    ) -> bool | None:
        key = (request.id, code, higher_code, label or "", higher_label or "")
        if key not in self._imitation:
            started = time.perf_counter()
            self._imitation[key] = task_kind(request.kind).agree(
                self.sandbox,
                request,
                Answer(code, label),
                Answer(higher_code, higher_label),
                tests,
                self.max_probes,
            )
            self.seconds += time.perf_counter() - started
        return self._imitation[key]

    def agree(self, request: CodeRequest, low: LevelOutcome, high: LevelOutcome) -> bool | None:
        """Whether the less capable level's answer behaves like the more capable one's."""
        tests = [*low.tests, *high.tests]
        return self.imitation(request, low.code, high.code, tests, low.label, high.label)

    def labels(
        self, request: CodeRequest, outcomes: dict[int, LevelOutcome], highest: int
    ) -> dict[int, bool | None]:
        """A label per level that ran: the highest one's only from the reference.
        Imitation needs a tested teacher: a higher answer that fails any of its
        pooled tests labels nothing."""
        if self.uses_reference(request):
            return {p: self.reference(request, o.code, o.label) for p, o in outcomes.items()}
        return {
            p: self.label_code(request, o.code, outcomes, highest, o.label)
            for p, o in outcomes.items()
            if p != highest
        }

    def label_code(
        self,
        request: CodeRequest,
        code: str,
        outcomes: dict[int, LevelOutcome],
        highest: int,
        label: str | None = None,
    ) -> bool | None:
        """Whether an answer is right, by the reference or by the highest level's answer."""
        if self.uses_reference(request):
            return self.reference(request, code, label)
        higher = outcomes[highest]
        if higher.attempt.n_tests > 0 and higher.attempt.score < 1.0:
            # The higher answer fails tests of its own: it is no teacher.
            return None
        tests = _pool_unique([o.tests for o in outcomes.values()])
        return self.imitation(request, code, higher.code, tests, label, higher.label)


def _pool_unique(groups: Sequence[Sequence[str]]) -> list[str]:
    return list(dict.fromkeys(test for group in groups for test in group))
