"""The Hedge policy on the one decision loop: level 0 gates level 1 (or, for
label requests, answers itself), a Hedge threshold per level decides who
answers, budget arms may shape one level's runs, and exemplars from the
memory join the prompts. Every answer a higher level (or a reference test)
can check becomes a label for the levels below it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamcascade.cascade.drivers import (
    SELF,
    AnswerNotes,
    Driver,
    OwnAnswer,
    Runner,
    observation_of,
)
from streamcascade.cascade.labeler import Labeler
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.config import AppConfig
from streamcascade.learning.budget import Arm, Shape
from streamcascade.learning.deferral import DeferralDecision
from streamcascade.learning.learner import CascadeLearner, RequestTrace
from streamcascade.learning.policies import RouteState
from streamcascade.schemas import Attempt, CodeRequest, Feedback, RouteStep

log = logging.getLogger(__name__)


def _decision_score(outcome: LevelOutcome) -> float:
    """The score a policy sees: below every threshold when the level has nothing
    to answer with (no program, or no parsable label), so no policy accepts it."""
    no_answer = outcome.attempt.best_solution_index is None
    return -1.0 if no_answer else outcome.attempt.score


def _figures(decision: DeferralDecision, score: float) -> dict[str, float]:
    return {
        "score": round(score, 4),
        "threshold": round(decision.threshold, 4),
        "p_explore": round(decision.p_explore, 4),
    }


def hedge_route(trace: RequestTrace, levels: Sequence[Level]) -> list[RouteStep]:
    """The Hedge policy's decisions for one request, in words (`explain`): the
    level-0 gate or answer, then each level's score against its sampled threshold."""
    route: list[RouteStep] = []
    if trace.answer0 is not None and trace.confidence is not None:
        answer0 = trace.answer0
        answered = answer0.accept and not answer0.explored
        route.append(RouteStep(
            next_level=None if answered else levels[0].index,
            policy="hedge",
            why=f"level 0's label {trace.label0!r} at confidence {trace.confidence:.2f} "
            f"{'meets' if answer0.would_accept else 'is below'} its threshold "
            f"{answer0.threshold:.2f}"
            + ("; explored: it answers and the LLM levels run for a label" if answer0.explored
               else ("; level 0 answers" if answered else "; the LLM levels vote")),
            figures=_figures(answer0, trace.confidence),
        ))  # fmt: skip
    if trace.gate is not None and trace.p_level1 is not None:
        gate = trace.gate
        start = 0 if gate.accept else 1
        route.append(RouteStep(
            next_level=levels[start].index,
            policy="hedge",
            why=f"level-0 gate: P(level {levels[0].index} answers it) {trace.p_level1:.2f} "
            f"{'meets' if gate.would_accept else 'is below'} its threshold "
            f"{gate.threshold:.2f}" + ("" if gate.accept else f"; skip level {levels[0].index}"),
            figures=_figures(gate, trace.p_level1),
        ))  # fmt: skip
    for number, step in enumerate(trace.steps):
        decision = step.decision
        if decision is None:
            continue  # the top level: it always answers
        nxt = trace.steps[number + 1].position if number + 1 < len(trace.steps) else None
        level = levels[step.position]
        verdict = "meets" if decision.would_accept else "is below"
        who = {"policy": "its sampled threshold", "arm": "its budget arm's threshold",
               "sweep": "the validation sweep (always goes up)"}[step.kind]  # fmt: skip
        if decision.explored:
            then = "explored: its answer is published and the level above runs for a label"
        elif decision.accept:
            then = "it answers"
        else:
            then = "the request goes up"
        route.append(RouteStep(
            next_level=None if nxt is None else levels[nxt].index,
            policy="hedge",
            why=f"level {level.index} ({level.name}) scored {step.score:.2f}, which "
            f"{verdict} {who} {decision.threshold:.2f}: {then}",
            figures=_figures(decision, step.score),
        ))  # fmt: skip
    return route


@dataclass
class _HedgeFlight:
    """What the Hedge policy keeps about one request between its steps."""

    trace: RequestTrace
    start: int = 0
    exemplars: list[tuple[str, str]] = field(default_factory=list)
    published: int | None = None
    explored: list[int] = field(default_factory=list)
    """Positions whose answer was published while the request went on up."""
    explored_level0: bool = False
    scores: dict[int, float] = field(default_factory=dict)
    decisions: dict[int, DeferralDecision] = field(default_factory=dict)
    arms: dict[int, tuple[int, Arm]] = field(default_factory=dict)
    sweep: tuple[int, dict[Shape, LevelOutcome]] | None = None
    failed: set[int] = field(default_factory=set)


def _flight(state: RouteState) -> _HedgeFlight:
    flight = state.context
    assert isinstance(flight, _HedgeFlight), "a state the Hedge driver did not begin"
    return flight


class HedgeDriver(Driver):
    """Drives the loop with a `CascadeLearner`. A level that accepts may still
    send the request up (forced exploration): its answer is published, and the
    higher level's answer labels it."""

    def __init__(self, learner: CascadeLearner, labeler: Labeler, levels: Sequence[Level]) -> None:
        if len(levels) != learner.n_levels:
            raise ValueError("the learner must have one slot per level")
        self.hedge = learner
        self.learner = learner
        self.labeler = labeler
        self.levels = list(levels)

    @property
    def top(self) -> int:
        return self.hedge.n_levels - 1

    def begin(self, request: CodeRequest) -> RouteState:
        learner = self.hedge
        trace = learner.plan(request)
        flight = _HedgeFlight(trace)
        if request.is_classification:
            if learner.level0_answers(trace):
                flight.published = SELF
            flight.explored_level0 = trace.answer0 is not None and trace.answer0.explored
        else:
            flight.start = learner.start_position(trace)
            if learner.memory.config.enabled:
                flight.exemplars = learner.exemplars(trace)
            trace.reference_labels = self.labeler.uses_reference(request)
        return RouteState({}, context=flight)

    def weights(self, n_levels: int) -> tuple[float, list[float]]:
        return self.hedge.mu, [0.0] * n_levels

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None:
        flight = _flight(state)
        trace = flight.trace
        if not state.order:
            if flight.published == SELF and not flight.explored_level0:
                return None  # level 0 answers
            return flight.start
        last = state.order[-1]
        if last in flight.failed:
            # Its backend failed: nothing to learn, and the next level tries.
            return last + 1 if last < self.top else None
        observation = state.observations[last]
        if last == self.top:
            self.hedge.record_top(trace, observation.score, observation.cost_usd)
            if flight.published is None:
                flight.published = last
            return None
        score = flight.scores[last]
        if flight.sweep is not None and flight.sweep[0] == last:
            decision = self.hedge.decide_sweep(trace, last, score, observation.cost_usd)
        elif last in flight.arms:
            decision = self.hedge.decide_arm(
                trace, last, score, observation.cost_usd, *flight.arms[last]
            )
        else:
            decision = self.hedge.decide(trace, last, score, observation.cost_usd)
        flight.decisions[last] = decision
        if decision.explored and flight.published is None:
            flight.published = last
            flight.explored.append(last)
        # A label request's level accepts only with a label to answer.
        if decision.accept and (not trace.request.is_classification or observation.has_answer):
            if flight.published is None:
                flight.published = last
            return None
        return last + 1

    def runner(self, request: CodeRequest, state: RouteState, position: int) -> Runner | None:
        """Exemplars and budget arms shape function requests' runs; the arm is
        pulled here, on the loop's thread."""
        if request.is_classification:
            return None
        flight = _flight(state)
        shown = flight.exemplars if position < self.top else []
        arms = self.hedge.arms_at(position)
        if arms is not None and arms.validating:
            shapes, widest = arms.shapes, arms.widest

            def sweep(level: Level, request: CodeRequest) -> LevelOutcome:
                by_shape = level.sweep(request, shown, shapes)
                flight.sweep = (position, by_shape)
                return by_shape[widest]

            return sweep
        if arms is not None:
            pulled = arms.pull()
            flight.arms[position] = pulled
            arm = pulled[1]
            return lambda level, request: level.attempt(request, shown, arm.shape, arm.threshold)
        if shown:
            return lambda level, request: level.attempt(request, shown)
        return None

    def record(
        self, request: CodeRequest, state: RouteState, outcomes: dict[int, LevelOutcome],
        position: int,
    ) -> None:  # fmt: skip
        outcome = outcomes[position]
        _flight(state).scores[position] = _decision_score(outcome)
        state.add(observation_of(position, outcome), {})

    def record_failure(self, state: RouteState, position: int) -> None:
        _flight(state).failed.add(position)
        super().record_failure(state, position)

    def answer(self, state: RouteState) -> int | None:
        published = _flight(state).published
        if published is not None:
            return published
        return state.order[-1] if state.order else None

    def own_answer(self, state: RouteState) -> OwnAnswer:
        trace = _flight(state).trace
        return OwnAnswer(level=0, model="level0", score=trace.confidence or 0.0,
                         label=trace.label0)  # fmt: skip

    def annotate(self, state: RouteState, position: int, attempt: Attempt, published: int | None
                 ) -> Attempt:  # fmt: skip
        decision = _flight(state).decisions.get(position)
        if decision is None:
            return super().annotate(state, position, attempt, published)
        return attempt.model_copy(
            update={"accepted": decision.would_accept, "threshold": decision.threshold}
        )

    def finish(
        self,
        request: CodeRequest,
        state: RouteState,
        outcomes: dict[int, LevelOutcome],
        published: int | None,
        failed: set[int],
    ) -> None:
        if request.is_classification:
            self._finish_classification(request, state, outcomes, published)
            return
        if published is None or published not in outcomes:
            # No level's answer was published (a fallback answered): the
            # policies have no round to learn from.
            log.info("request %s: no level's answer to learn from", request.id)
            return
        flight = _flight(state)
        highest = max(outcomes)
        labels = self.labeler.labels(request, outcomes, highest)
        learner = self.hedge
        if flight.sweep is not None:
            row = self._validation_row(request, flight.sweep, outcomes, labels, highest, published)
            if row is not None and learner.arms is not None:
                learner.arms.record_validation(row)
        answer = outcomes[published]
        top_tested = (
            published == self.top and answer.attempt.n_tests > 0 and answer.attempt.score >= 1.0
        )
        learner.finish(flight.trace, published, labels, answer.code, top_tested)

    def _finish_classification(
        self,
        request: CodeRequest,
        state: RouteState,
        outcomes: dict[int, LevelOutcome],
        published: int | None,
    ) -> None:
        """The highest level's label (or the reference label) teaches level 0
        and the levels below."""
        trace = _flight(state).trace
        if published is None:
            return
        highest = max(outcomes) if outcomes else None
        labels: dict[int, bool | None] = {}
        if request.reference_label is not None and self.labeler.uses_reference(request):
            trace.teacher_label = request.reference_label
        elif highest is not None:
            trace.teacher_label = outcomes[highest].label
        teacher = trace.teacher_label
        if teacher is not None:
            for position, outcome in outcomes.items():
                if position != highest or teacher == request.reference_label:
                    labels[position] = outcome.label == teacher
            if trace.label0 is not None:
                labels[-1] = trace.label0 == teacher
        self.hedge.finish(trace, -1 if published == SELF else published, labels, "", False)

    def _validation_row(
        self,
        request: CodeRequest,
        sweep: tuple[int, dict[Shape, LevelOutcome]],
        outcomes: dict[int, LevelOutcome],
        labels: dict[int, bool | None],
        highest: int,
        published: int,
    ) -> dict[Arm, tuple[bool, float]] | None:
        """Every arm's outcome on this request, from one sweep: its own answer
        when its threshold accepts, else what the levels above did (right, and
        cost from this level up). None when some answer has no label."""
        position, by_shape = sweep
        assert self.hedge.arms is not None
        above_cost_usd = sum(o.attempt.cost_usd for p, o in outcomes.items() if p > position)
        above_right = labels.get(published)
        if above_right is None and published == highest and labels.get(position) is not None:
            above_right = True  # an imitation teacher: it labelled this level, so it is tested
        if above_right is None:
            return None
        right_of: dict[str, bool | None] = {}
        for outcome in by_shape.values():
            if outcome.code not in right_of:
                right_of[outcome.code] = outcome.code.strip() != "" and self.labeler.label_code(
                    request, outcome.code, outcomes, highest
                )
        row: dict[Arm, tuple[bool, float]] = {}
        for arm in self.hedge.arms.grid:
            outcome = by_shape[(arm.k_solutions, arm.t_test_generations, arm.max_test_lines)]
            cost_usd = outcome.attempt.cost_usd
            if _decision_score(outcome) >= arm.threshold:
                right = right_of[outcome.code]
                if right is None:
                    return None
                row[arm] = (right, cost_usd)
            else:
                row[arm] = (above_right, cost_usd + above_cost_usd)
        return row

    def notes(self, state: RouteState, levels: Sequence[Level]) -> AnswerNotes:
        flight = _flight(state)
        return AnswerNotes(
            explored_levels=[0] * flight.explored_level0
            + [levels[p].index for p in flight.explored],
            p_level1=flight.trace.p_level1,
            route=hedge_route(flight.trace, levels),
        )

    def learn_one(self, feedback: Feedback) -> bool:
        return self.hedge.learn_one(feedback)


def hedge_driver(config: AppConfig, levels: Sequence[Level], labeler: Labeler) -> Driver:
    """The `hedge` entry point of `streamcascade.policies`."""
    return HedgeDriver(CascadeLearner(config.learning, len(levels)), labeler, levels)
