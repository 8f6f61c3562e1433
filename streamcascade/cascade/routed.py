"""One decision loop: at every step a policy says which level runs next, or
stops, and which of the levels that ran answers.

`Level` returns scores, never decisions. The fixed cascade
(`FixedCascadePolicy`: run in order, the first that passes its threshold
answers) and the learned router (`RouteLearner`) both drive this loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from streamcascade.cascade.answer import build_answer
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.cascade.online import Labeler
from streamcascade.learning.route_learner import RouteLearner
from streamcascade.learning.routing import (
    CascadePolicy,
    FixedCascadePolicy,
    Observation,
    RouteState,
)
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback


def observation_of(position: int, outcome: LevelOutcome) -> Observation:
    attempt = outcome.attempt
    has_answer = attempt.best_solution_index is not None and (
        outcome.label is not None if outcome.code == "" else bool(outcome.code.strip())
    )
    return Observation(
        position=position,
        has_answer=has_answer,
        score=attempt.score if has_answer else 0.0,
        n_tests=attempt.n_tests,
        n_chars=len(outcome.code) if outcome.code else len(outcome.label or ""),
        cost_usd=attempt.cost_usd,
    )


class RoutedCascadeEngine:
    """Runs the levels a policy picks, one step at a time.

    With a `RouteLearner` (and a `Labeler`), the learner is the policy: after
    each level runs, its answer is compared with those of the levels that ran
    before it on probe inputs (the router's evidence), and when the request is
    done the top level's answer (or the reference tests) labels the others.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        policy: CascadePolicy | None = None,
        learner: RouteLearner | None = None,
        labeler: Labeler | None = None,
    ) -> None:
        if not levels:
            raise ValueError("a cascade needs at least one level")
        if learner is not None and labeler is None:
            raise ValueError("a learning cascade needs a labeler")
        if learner is not None and learner.n_levels != len(levels):
            raise ValueError("the learner must have one slot per level")
        self.levels = list(levels)
        self.learner = learner
        self.labeler = labeler
        self.policy = (
            policy
            or learner
            or FixedCascadePolicy([level.config.threshold for level in self.levels])
        )

    @property
    def top(self) -> int:
        return len(self.levels) - 1

    def _mu_and_costs(self) -> tuple[float, list[float]]:
        if self.learner is None:
            return 0.0, [0.0] * len(self.levels)
        return self.learner.mu, self.learner.expected_costs()

    def _run(self, position: int, request: CodeRequest) -> LevelOutcome:
        level = self.levels[position]
        return level.classify(request) if request.is_classification else level.attempt(request)

    def _agreements(
        self, request: CodeRequest, outcomes: dict[int, LevelOutcome], position: int
    ) -> dict[int, bool | None]:
        """Whether the new answer behaves like each earlier one (the more capable
        level's answer is the reference)."""
        assert self.labeler is not None
        new = outcomes[position]
        result: dict[int, bool | None] = {}
        for other, outcome in outcomes.items():
            if other == position:
                continue
            if request.is_classification:
                labelled = new.label is not None and outcome.label is not None
                same = new.label == outcome.label if labelled else None
            else:
                low, high = (outcome, new) if other < position else (new, outcome)
                tests = [*low.tests, *high.tests]
                same = self.labeler.imitation(request, low.code, high.code, tests)
            result[other] = same
        return result

    def _labels(
        self, request: CodeRequest, outcomes: dict[int, LevelOutcome]
    ) -> dict[int, bool | None]:
        """Reference labels for every level that ran when the request has them
        (and the labeler uses them); else the top level's answer labels the
        others, if the top ran and passed its own tests."""
        assert self.labeler is not None
        if request.is_classification:
            teacher = request.reference_label if self.labeler.uses_reference(request) else None
            if teacher is None and self.top in outcomes:
                teacher = outcomes[self.top].label
            if teacher is None:
                return {}
            return {
                p: o.label == teacher
                for p, o in outcomes.items()
                if o.label is not None and (p != self.top or teacher == request.reference_label)
            }
        if self.labeler.uses_reference(request):
            return {p: self.labeler.reference(request, o.code) for p, o in outcomes.items()}
        if self.top not in outcomes:
            return {}
        return self.labeler.labels(request, outcomes, self.top)

    def process_one(self, request: CodeRequest) -> CascadeAnswer:
        started = time.perf_counter()
        learner = self.learner
        state = learner.begin(request) if learner is not None else RouteState({})
        outcomes: dict[int, LevelOutcome] = {}
        mu, costs = self._mu_and_costs()
        while (position := self.policy.decide(state, mu, costs)) is not None:
            outcome = self._run(position, request)
            outcomes[position] = outcome
            agree = self._agreements(request, outcomes, position) if learner is not None else {}
            state.add(observation_of(position, outcome), agree)
        published = self.policy.answer(state)
        if learner is not None:
            learner.finish(request.id, state, self._labels(request, outcomes), published)
        # A fixed policy's attempts say whether they reached their threshold (the
        # top answers either way); a learned one's, whether the policy chose them.
        attempts = [
            outcomes[p].attempt
            if learner is None
            else outcomes[p].attempt.model_copy(update={"accepted": p == published})
            for p in state.order
        ]
        answer = outcomes[published]
        return build_answer(
            request,
            attempts,
            started,
            code=answer.code,
            level=self.levels[published].index,
            model=answer.attempt.model,
            score=answer.attempt.score,
            label=answer.label,
            explored_levels=[self.levels[self.top].index] if state.forced else [],
            skipped_levels=[self.levels[p].index for p in range(published) if p not in outcomes],
        )

    def learn_one(self, feedback: Feedback) -> bool:
        return self.learner.learn_one(feedback) if self.learner is not None else False
