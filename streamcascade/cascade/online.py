"""The learning cascade: level 0 gates level 1, learned policies decide who
answers, and every answer that a higher level (or a reference test) can check
becomes a label for the levels below it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from streamcascade.backends import BackendError
from streamcascade.cascade.answer import RequestFailed, build_answer
from streamcascade.cascade.labeler import Labeler, LabelSource
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.learning.budget import Arm, Shape
from streamcascade.learning.deferral import Decision
from streamcascade.learning.learner import CascadeLearner, RequestTrace
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback, RouteStep

__all__ = ["LabelSource", "Labeler", "OnlineCascadeEngine"]

log = logging.getLogger(__name__)


def _decision_score(outcome: LevelOutcome) -> float:
    """The score a policy sees: below every threshold when the level has nothing
    to answer with (no program, or no parsable label), so no policy accepts it."""
    no_answer = outcome.attempt.best_solution_index is None
    return -1.0 if no_answer else outcome.attempt.score


def _figures(decision: Decision, score: float) -> dict[str, float]:
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


class OnlineCascadeEngine:
    """Like CascadeEngine, but who answers is learned while it serves.

    A level that accepts may still send the request up (forced exploration):
    its answer is published, and the higher level's answer labels it.
    """

    def __init__(self, levels: Sequence[Level], learner: CascadeLearner, labeler: Labeler) -> None:
        if len(levels) != learner.n_levels:
            raise ValueError("the learner must have one slot per level")
        self.levels = list(levels)
        self.learner = learner
        self.labeler = labeler

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        """One request after another (each learns from the one before); a
        request that failed has its exception in its place."""
        results: list[CascadeAnswer | Exception] = []
        for request in requests:
            try:
                results.append(self.process_one(request))
            except BackendError as error:
                results.append(RequestFailed(f"backend_unavailable: {error}"))
            except Exception as error:
                results.append(error)
        return results

    def process_one(self, request: CodeRequest) -> CascadeAnswer:
        if request.is_classification:
            return self._classify_one(request)
        started = time.perf_counter()
        learner = self.learner
        trace = learner.plan(request)
        start = learner.start_position(trace)
        exemplars = learner.exemplars(trace) if learner.memory.config.enabled else []
        top = len(self.levels) - 1
        outcomes: dict[int, LevelOutcome] = {}
        attempts = []
        explored: list[int] = []
        published: int | None = None
        highest = start
        trace.reference_labels = self.labeler.uses_reference(request)
        sweep: tuple[int, dict[Shape, LevelOutcome]] | None = None
        for position in range(start, top + 1):
            level = self.levels[position]
            shown = exemplars if position < top else ()
            arms = learner.arms_at(position)
            arm: tuple[int, Arm] | None = None
            if arms is not None and arms.validating:
                sweep = (position, level.sweep(request, shown, arms.shapes))
                outcome = sweep[1][arms.widest]
            elif arms is not None:
                arm = arms.pull()
                outcome = level.attempt(request, shown, arm[1])
            else:
                outcome = level.attempt(request, shown)
            outcomes[position] = outcome
            highest = position
            cost = outcome.attempt.cost_usd
            if position == top:
                learner.record_top(trace, outcome.attempt.score, cost)
                accepted = True
                if published is None:
                    published = position
            else:
                score = _decision_score(outcome)
                if sweep is not None and sweep[0] == position:
                    decision = learner.decide_sweep(trace, position, score, cost)
                elif arm is not None:
                    decision = learner.decide_arm(trace, position, score, cost, *arm)
                else:
                    decision = learner.decide(trace, position, score, cost)
                accepted = decision.accept
                outcome = LevelOutcome(
                    outcome.attempt.model_copy(
                        update={"accepted": decision.would_accept, "threshold": decision.threshold}
                    ),
                    outcome.code,
                    outcome.tests,
                )
                outcomes[position] = outcome
                if decision.explored and published is None:
                    published = position
                    explored.append(level.index)
            attempts.append(outcome.attempt)
            if accepted:
                if published is None:
                    published = position
                break
        assert published is not None
        labels = self.labeler.labels(request, outcomes, highest)
        if sweep is not None:
            row = self._validation_row(request, sweep, outcomes, labels, highest, published)
            if row is not None and learner.arms is not None:
                learner.arms.record_validation(row)
        answer_outcome = outcomes[published]
        top_tested = (
            published == top
            and answer_outcome.attempt.n_tests > 0
            and answer_outcome.attempt.score >= 1.0
        )
        learner.finish(trace, published, labels, answer_outcome.code, top_tested)
        return build_answer(
            request,
            attempts,
            started,
            code=answer_outcome.code,
            level=self.levels[published].index,
            model=answer_outcome.attempt.model,
            score=answer_outcome.attempt.score,
            explored_levels=explored,
            skipped_levels=[self.levels[0].index] if start > 0 else [],
            p_level1=trace.p_level1,
            route=hedge_route(trace, self.levels),
        )

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
        assert self.learner.arms is not None
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
        for arm in self.learner.arms.grid:
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

    def _classify_one(self, request: CodeRequest) -> CascadeAnswer:
        """Level 0 answers when its policy trusts its confidence; otherwise the
        LLM levels vote, climbing like generation requests. The highest level's
        label (or the reference label) teaches level 0 and the levels below."""
        started = time.perf_counter()
        learner = self.learner
        trace = learner.plan(request)
        top = len(self.levels) - 1
        attempts = []
        outcomes: dict[int, LevelOutcome] = {}
        published: int | None = -1 if learner.level0_answers(trace) else None
        explored = [0] if trace.answer0 is not None and trace.answer0.explored else []
        if published is None or explored:
            for position in range(top + 1):
                outcome = self.levels[position].classify(request)
                outcomes[position] = outcome
                attempts.append(outcome.attempt)
                cost = outcome.attempt.cost_usd
                if position == top:
                    learner.record_top(trace, outcome.attempt.score, cost)
                    published = position if published is None else published
                    break
                decision = learner.decide(trace, position, _decision_score(outcome), cost)
                if decision.explored and published is None:
                    published = position
                    explored.append(self.levels[position].index)
                if decision.accept and outcome.label is not None:
                    published = position if published is None else published
                    break
        assert published is not None
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
        learner.finish(trace, published, labels, "", False)
        if published == -1:
            label, level, model, score = trace.label0, 0, "level0", trace.confidence or 0.0
        else:
            answer = outcomes[published]
            label, level = answer.label, self.levels[published].index
            model, score = answer.attempt.model, answer.attempt.score
        return build_answer(
            request,
            attempts,
            started,
            code="",
            level=level,
            model=model,
            score=score,
            explored_levels=explored,
            label=label,
            route=hedge_route(trace, self.levels),
        )

    def learn_one(self, feedback: Feedback) -> bool:
        return self.learner.learn_one(feedback)
