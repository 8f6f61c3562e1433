"""`label`: answer with one label of `label_set` (a review verdict on a diff, a
triage class): the level's samples vote."""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.backends.base import Prompt
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.tasks import prompts
from streamcascade.tasks.base import Answer, LevelOutcome, LevelTools


class LabelKind:
    """Entry point `label`.

    >>> kind = LabelKind()
    >>> request = CodeRequest(id="r", prompt="diff", label_set=["approve", "request changes"])
    >>> kind.parse(request, "Request changes: the loop never ends.")
    'request changes'
    """

    name = "label"

    def check(self, request: CodeRequest) -> None:
        if request.label_set is None:
            raise ValueError("a label request needs label_set, the labels it may be answered with")

    def step(self, level: LevelTools, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return level.vote_step(requests, prompts.classification_prompt, self.parse)

    def parse(self, request: CodeRequest, text: str) -> str | None:
        return prompts.parse_label(text, request.label_set or [])

    def agree(
        self,
        sandbox: Sandbox,
        request: CodeRequest,
        low: Answer,
        high: Answer,
        tests: Sequence[str],
        max_probes: int,
    ) -> bool | None:
        if low.label is None or high.label is None:
            return None
        return low.label == high.label

    def has_reference(self, request: CodeRequest) -> bool:
        return request.reference_label is not None

    def teaching(self, request: CodeRequest, answer: Answer) -> tuple[Prompt, str] | None:
        """The prompt a level votes on, and the label it should have voted."""
        if answer.label is None:
            return None
        return prompts.classification_prompt(request), answer.label

    def grade(self, sandbox: Sandbox, request: CodeRequest, answer: Answer) -> bool | None:
        if request.reference_label is None:
            return None
        return answer.label == request.reference_label


KIND = LabelKind()
