"""What the one decision loop asks of a policy, step by step.

`RoutedCascadeEngine` climbs the levels the same way whatever decides: it
asks a `Driver` where each request goes next, runs every level's batch, and
hands each outcome back. A driver wraps one `CascadePolicy` (which decides)
and, when it learns, its learner: the fixed cascade (`Driver` itself), the
cascade router (`RouterDriver`) and the Hedge thresholds with their level-0
gate, budget arms and exemplar memory (`HedgeDriver`, in `cascade.hedge`).
Which driver a config gets is an entry point of `streamcascade.policies`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from streamcascade.cascade.labeler import Labeler
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.config import AppConfig
from streamcascade.learning.policies import (
    CascadePolicy,
    Observation,
    RouteState,
    meets_threshold,
)
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.learning.router_learner import RouteLearner
from streamcascade.schemas import Attempt, CodeRequest, Feedback, RouteStep

SELF = -2
"""`Driver.answer`'s value when the policy answers itself (level 0's label),
with no level's answer."""

Runner = Callable[[Level, CodeRequest], LevelOutcome]
"""How one level runs for one request when it is not the level's plain batch
step (exemplars in the prompt, a budget arm's shape, a validation sweep)."""


@dataclass(frozen=True)
class OwnAnswer:
    """The policy's own answer, when no level's answer is published (`SELF`)."""

    level: int
    model: str
    score: float
    label: str | None = None
    code: str = ""


@dataclass
class AnswerNotes:
    """What an answer says about how it was reached (`streamcascade explain`)."""

    explored_levels: list[int] = field(default_factory=list)
    p_level1: float | None = None
    route: list[RouteStep] = field(default_factory=list)


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


def attempt_meets_threshold(attempt: Attempt) -> bool:
    """The fixed rule (`policies.meets_threshold`) on an attempt's own figures."""
    return meets_threshold(attempt.best_solution_index is not None, attempt.score,
                           attempt.threshold)  # fmt: skip


class Driver:
    """A policy that does not learn (the fixed cascade, or any `CascadePolicy`).

    Subclasses that learn override the hooks; every hook is called on the
    loop's thread except `record`, which runs on the thread of the level's
    step (it touches only the request's own state).
    """

    learner: OnlineLearner | None = None

    def __init__(self, policy: CascadePolicy) -> None:
        self.policy = policy

    def check(self, levels: Sequence[Level]) -> None:
        """Raise ValueError if this driver cannot drive `levels` (a learner
        sized for another cascade)."""

    def begin(self, request: CodeRequest) -> RouteState:
        """A request's state before any level runs."""
        return RouteState({})

    def weights(self, n_levels: int) -> tuple[float, list[float]]:
        """mu (loss per USD) and each level's expected cost, for this step."""
        return 0.0, [0.0] * n_levels

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None:
        """The position to run next, or None: stop."""
        return self.policy.decide(state, mu, cost_usd)

    def runner(self, request: CodeRequest, state: RouteState, position: int) -> Runner | None:
        """How the level at `position` runs for this request; None: its batch step."""
        return None

    def record(
        self, request: CodeRequest, state: RouteState, outcomes: dict[int, LevelOutcome],
        position: int,
    ) -> None:  # fmt: skip
        """The level at `position` answered (its outcome is in `outcomes`)."""
        state.add(observation_of(position, outcomes[position]), {})

    def record_failure(self, state: RouteState, position: int) -> None:
        """The level at `position` failed (its backend): it ran and gave no answer."""
        state.add(Observation(position, False, 0.0, 0, 0, 0.0), dict.fromkeys(state.ran))

    def answer(self, state: RouteState) -> int | None:
        """The position whose answer is published, `SELF`, or None: nothing ran."""
        return self.policy.answer(state) if state.order else None

    def own_answer(self, state: RouteState) -> OwnAnswer:
        raise ValueError("this policy has no answer of its own")

    def annotate(self, state: RouteState, position: int, attempt: Attempt, published: int | None
                 ) -> Attempt:  # fmt: skip
        """The attempt as the answer records it, stamped with what the policy made
        of it. A policy that does not learn publishes the first answer that meets
        its level's threshold, or the top's: accepted is published on that rule."""
        return attempt.model_copy(
            update={"accepted": position == published and attempt_meets_threshold(attempt)}
        )

    def finish(
        self,
        request: CodeRequest,
        state: RouteState,
        outcomes: dict[int, LevelOutcome],
        published: int | None,
        failed: set[int],
    ) -> None:
        """The request is answered: learn from it."""

    def notes(self, state: RouteState, levels: Sequence[Level]) -> AnswerNotes:
        return AnswerNotes(
            explored_levels=[levels[-1].index] if state.forced else [],
            route=[
                RouteStep(
                    next_level=None if d.position is None else levels[d.position].index,
                    policy=d.policy,
                    why=d.why,
                    figures=d.figures,
                )
                for d in state.decisions
            ],
        )

    def learn_one(self, feedback: Feedback) -> bool:
        return False


def _without(state: RouteState, failed: set[int]) -> RouteState:
    """The state as if the failed levels had not been asked: what learning sees."""
    kept = RouteState(state.features, forced=state.forced)
    kept.observations = {p: o for p, o in state.observations.items() if p not in failed}
    kept.order = [p for p in state.order if p not in failed]
    kept.agree = {k: v for k, v in state.agree.items() if not (set(k) & failed)}
    return kept


class RouterDriver(Driver):
    """The cascade router: after each level runs, its answer is compared with
    those of the levels that ran before it on probe inputs (the router's
    evidence), and when the request is done the top level's answer (or the
    reference tests) labels the others."""

    def __init__(self, learner: RouteLearner, labeler: Labeler) -> None:
        super().__init__(learner)
        self.router = learner
        self.learner = learner
        self.labeler = labeler

    def check(self, levels: Sequence[Level]) -> None:
        if self.router.n_levels != len(levels):
            raise ValueError("the learner must have one slot per level")

    def begin(self, request: CodeRequest) -> RouteState:
        return self.router.begin(request)

    def weights(self, n_levels: int) -> tuple[float, list[float]]:
        return self.router.mu, self.router.expected_costs()

    def record(
        self, request: CodeRequest, state: RouteState, outcomes: dict[int, LevelOutcome],
        position: int,
    ) -> None:  # fmt: skip
        new = outcomes[position]
        agree: dict[int, bool | None] = {}
        for other, outcome in outcomes.items():
            if other != position:
                # The more capable level's answer is the reference.
                low, high = (outcome, new) if other < position else (new, outcome)
                agree[other] = self.labeler.agree(request, low, high)
        state.add(observation_of(position, new), agree)

    def annotate(self, state: RouteState, position: int, attempt: Attempt, published: int | None
                 ) -> Attempt:  # fmt: skip
        return attempt.model_copy(update={"accepted": position == published})

    def _labels(
        self, request: CodeRequest, outcomes: dict[int, LevelOutcome]
    ) -> dict[int, bool | None]:
        """Reference labels for every level that ran when the request has them
        (and the labeler uses them); else the top level's answer labels the
        others, if the top ran and passed its own tests."""
        if self.labeler.uses_reference(request):
            return {
                p: self.labeler.reference(request, o.code, o.label) for p, o in outcomes.items()
            }
        top = self.router.n_levels - 1
        if top not in outcomes:
            return {}
        return self.labeler.labels(request, outcomes, top)

    def finish(
        self,
        request: CodeRequest,
        state: RouteState,
        outcomes: dict[int, LevelOutcome],
        published: int | None,
        failed: set[int],
    ) -> None:
        learned = state if not failed else _without(state, failed)
        if learned.order:
            self.router.finish(
                request.id,
                learned,
                self._labels(request, outcomes),
                published if published is not None else learned.order[-1],
            )

    def learn_one(self, feedback: Feedback) -> bool:
        return self.router.learn_one(feedback)


class DriverFactory(Protocol):
    """An entry point of `streamcascade.policies`: the driver (and so the
    learner) a config's `learning.policy` names."""

    def __call__(self, config: AppConfig, levels: Sequence[Level], labeler: Labeler) -> Driver: ...


def router_driver(config: AppConfig, levels: Sequence[Level], labeler: Labeler) -> Driver:
    return RouterDriver(RouteLearner(config.learning, config.levels), labeler)


def policy_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="streamcascade.policies"))


def driver_for(config: AppConfig, levels: Sequence[Level], labeler: Labeler) -> Driver:
    """The driver of `config.learning.policy`, from the `streamcascade.policies`
    entry points (a plugin package can add its own)."""
    name = config.learning.policy
    found = entry_points(group="streamcascade.policies", name=name)
    if not found:
        raise ValueError(
            f"unknown learning policy {name!r}: installed are {', '.join(policy_names())}"
        )
    factory: Any = next(iter(found)).load()
    driver = factory(config, levels, labeler)
    if not isinstance(driver, Driver):
        raise TypeError(f"policy {name!r} built {type(driver).__name__}, not a Driver")
    return driver
