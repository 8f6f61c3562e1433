"""One decision loop: at every step a policy says which level runs next, or
stops, and which of the levels that ran answers.

`Level` returns scores, never decisions. The fixed cascade
(`FixedCascadePolicy`: run in order, the first that passes its threshold
answers) and the learned router (`RouteLearner`) both drive this loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streamcascade.backends import BackendError, generation_deadline
from streamcascade.cascade.answer import RequestFailed, build_answer
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.cascade.online import Labeler
from streamcascade.learning.route_learner import RouteLearner
from streamcascade.learning.routing import (
    CascadePolicy,
    FixedCascadePolicy,
    Observation,
    RouteState,
)
from streamcascade.schemas import (
    CascadeAnswer,
    CodeRequest,
    Feedback,
    LevelFailure,
    RouteStep,
)
from streamcascade.tasks import check_request

log = logging.getLogger(__name__)

_FALLBACK = -1
"""The position of the fallback level, which answers when the top cannot."""


@dataclass
class _Flight:
    """One request on its way up in a batch."""

    request: CodeRequest
    state: RouteState
    started_s: float
    deadline: float | None
    """time.monotonic() by which its generation must end."""
    outcomes: dict[int, LevelOutcome] = field(default_factory=dict)
    failures: dict[int, LevelFailure] = field(default_factory=dict)
    policy_stopped: bool = False
    fallback: LevelOutcome | None = None
    error: Exception | None = None
    done: bool = False


def _without(state: RouteState, failed: set[int]) -> RouteState:
    """The state as if the failed levels had not been asked: what learning sees."""
    kept = RouteState(state.features, forced=state.forced)
    kept.observations = {p: o for p, o in state.observations.items() if p not in failed}
    kept.order = [p for p in state.order if p not in failed]
    kept.agree = {k: v for k, v in state.agree.items() if not (set(k) & failed)}
    return kept


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
        fallback: Level | None = None,
        deadline_s: float | None = None,
    ) -> None:
        """`fallback` answers when the top level's backend failed; `deadline_s`
        bounds all generation for one request."""
        if not levels:
            raise ValueError("a cascade needs at least one level")
        if learner is not None and labeler is None:
            raise ValueError("a learning cascade needs a labeler")
        if learner is not None and learner.n_levels != len(levels):
            raise ValueError("the learner must have one slot per level")
        self.levels = list(levels)
        self.learner = learner
        self.labeler = labeler
        self.fallback = fallback
        self.deadline_s = deadline_s
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
            low, high = (outcome, new) if other < position else (new, outcome)
            result[other] = self.labeler.agree(request, low, high)
        return result

    def _labels(
        self, request: CodeRequest, outcomes: dict[int, LevelOutcome]
    ) -> dict[int, bool | None]:
        """Reference labels for every level that ran when the request has them
        (and the labeler uses them); else the top level's answer labels the
        others, if the top ran and passed its own tests."""
        assert self.labeler is not None
        if self.labeler.uses_reference(request):
            return {
                p: self.labeler.reference(request, o.code, o.label) for p, o in outcomes.items()
            }
        if self.top not in outcomes:
            return {}
        return self.labeler.labels(request, outcomes, self.top)

    def process_one(self, request: CodeRequest) -> CascadeAnswer:
        """Answer one request. Raises `RequestFailed` (reason `backend_unavailable`)
        when no level could answer it, or what a level raised for it alone."""
        result = self.process_many([request])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        """Answer a batch, one level step at a time: at each step the policy
        places every request that is not done, and each level gets the prompts
        of all requests placed there in one backend call; steps of different
        levels run side by side, so one level's sandbox runs overlap another's
        generation. Results are in request order; a request that failed has its
        exception in its place (the others are not affected). With a fixed
        policy the answers are those of `process_one` on each request alone."""
        flights = [self._begin(request) for request in requests]
        mu, costs = self._mu_and_costs()
        while True:
            placed: dict[int, list[_Flight]] = {}
            for flight in flights:
                if flight.done:
                    continue
                position = self._next(flight, mu, costs)
                if position is None:
                    flight.done = True
                else:
                    placed.setdefault(position, []).append(flight)
            if not placed:
                break
            self._steps(placed)
            if self.learner is not None:
                mu, costs = self._mu_and_costs()
        return [self._finish(flight) for flight in flights]

    # -- one request's way up ---------------------------------------------------------

    def _begin(self, request: CodeRequest) -> _Flight:
        state = self.learner.begin(request) if self.learner is not None else RouteState({})
        started = time.perf_counter()
        deadline = time.monotonic() + self.deadline_s if self.deadline_s is not None else None
        flight = _Flight(request, state, started, deadline)
        try:
            check_request(request)  # what its kind asks of it, before any model runs
        except ValueError as error:
            flight.error = error
        return flight

    def _next(self, flight: _Flight, mu: float, costs: list[float]) -> int | None:
        if flight.error is not None or flight.policy_stopped:
            return None
        position = self.policy.decide(flight.state, mu, costs)
        if position is not None:
            return position
        flight.policy_stopped = True
        # The answer the policy would publish is from a level that failed.
        if (
            self.fallback is not None
            and flight.state.order
            and self.policy.answer(flight.state) in flight.failures
        ):
            return _FALLBACK
        return None

    def _steps(self, placed: dict[int, list[_Flight]]) -> None:
        if len(placed) == 1:
            for position, group in placed.items():
                self._step(position, group)
            return
        with ThreadPoolExecutor(len(placed), thread_name_prefix="level-step") as pool:
            for future in [pool.submit(self._step, p, g) for p, g in placed.items()]:
                future.result()

    def _level(self, position: int) -> Level:
        if position == _FALLBACK:
            assert self.fallback is not None
            return self.fallback
        return self.levels[position]

    def _step(self, position: int, group: list[_Flight]) -> None:
        """Run one level on every request placed there (one backend call per
        kind of request and purpose), and record what came of it in each
        request's state."""
        self._run_group(position, self._level(position), group)

    def _run_group(self, position: int, level: Level, group: list[_Flight]) -> None:
        requests = [flight.request for flight in group]
        deadlines = [f.deadline for f in group if f.deadline is not None]
        try:
            with generation_deadline(min(deadlines) if deadlines else None):
                outcomes = level.step(requests)
        except BackendError as error:
            for flight in group:
                self._failed(flight, position, level, str(error))
            return
        except Exception as error:
            if len(group) > 1:
                # One request's fault must not fail the batch: each runs alone.
                log.info("level %s failed on a batch of %d (%r): one by one", level.name,
                         len(group), error)  # fmt: skip
                for flight in group:
                    self._run_group(position, level, [flight])
                return
            group[0].error = error
            return
        for flight, outcome in zip(group, outcomes, strict=True):
            if position == _FALLBACK:
                flight.fallback = outcome
                continue
            flight.outcomes[position] = outcome
            agree = (
                self._agreements(flight.request, flight.outcomes, position)
                if self.learner is not None
                else {}
            )
            flight.state.add(observation_of(position, outcome), agree)

    def _failed(self, flight: _Flight, position: int, level: Level, reason: str) -> None:
        log.warning("level %s failed on %s: %s", level.name, flight.request.id, reason)
        flight.failures[position] = LevelFailure(level=level.index, name=level.name, reason=reason)
        if position == _FALLBACK:
            return
        # The level ran and gave no answer: a policy passes the request on.
        flight.state.add(
            Observation(position, False, 0.0, 0, 0, 0.0),
            {other: None for other in flight.outcomes},
        )

    def _finish(self, flight: _Flight) -> CascadeAnswer | Exception:
        if flight.error is not None:
            return flight.error
        request, state, outcomes = flight.request, flight.state, flight.outcomes
        failures = [flight.failures[p] for p in sorted(flight.failures)]
        published: int | None = self.policy.answer(state) if state.order else None
        if published is not None and published in flight.failures:
            published = None
        if self.learner is not None:
            learned = state if not flight.failures else _without(state, set(flight.failures))
            if learned.order:
                self.learner.finish(
                    request.id,
                    learned,
                    self._labels(request, outcomes),
                    published if published is not None else learned.order[-1],
                )
        attempts = [
            outcomes[p].attempt
            if self.learner is None
            else outcomes[p].attempt.model_copy(update={"accepted": p == published})
            for p in state.order
            if p in outcomes
        ]
        if published is None:
            if flight.fallback is None:
                why = "; ".join(f"level {f.level} {f.name!r}: {f.reason}" for f in failures)
                return RequestFailed(f"backend_unavailable: {why or 'no level answered'}")
            answer, level = flight.fallback, self.fallback
            assert level is not None
            attempts.append(answer.attempt)
        else:
            answer, level = outcomes[published], self.levels[published]
        return build_answer(
            request,
            attempts,
            flight.started_s,
            code=answer.code,
            level=level.index,
            model=answer.attempt.model,
            score=answer.attempt.score,
            label=answer.label,
            explored_levels=[self.levels[self.top].index] if state.forced else [],
            skipped_levels=[
                self.levels[p].index
                for p in range(published if published is not None else self.top)
                if p not in state.order
            ],
            failed_levels=failures,
            route=[
                RouteStep(
                    next_level=None if d.position is None else self.levels[d.position].index,
                    policy=d.policy,
                    why=d.why,
                    figures=d.figures,
                )
                for d in state.decisions
            ],
        )

    def learn_one(self, feedback: Feedback) -> bool:
        return self.learner.learn_one(feedback) if self.learner is not None else False
