"""One decision loop: at every step a policy says which level runs next, or
stops, and which of the levels that ran answers.

`Level` returns scores, never decisions. The fixed cascade
(`FixedCascadePolicy`: run in order, the first that passes its threshold
answers), the learned router (`RouteLearner`) and the Hedge thresholds
(`CascadeLearner`) all drive this loop, each through its `Driver`
(`streamcascade.cascade.drivers`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streamcascade.backends import BackendError, generation_deadline
from streamcascade.cascade.answer import RequestFailed, build_answer
from streamcascade.cascade.drivers import SELF, Driver, Runner, attempt_meets_threshold
from streamcascade.cascade.level import Level, LevelOutcome
from streamcascade.learning.policies import FixedCascadePolicy, RouteState
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback, LevelFailure
from streamcascade.tasks import Answer, check_request

log = logging.getLogger(__name__)

_FALLBACK = -1
"""The position of the fallback level, which answers when the top cannot."""
ANSWERS_KEPT_FOR_FEEDBACK = 10_000
"""Answers of levels that learn online, kept for Feedback that may come later
(the oldest go first; Feedback on one no longer kept teaches the policy only)."""


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
    runner: Runner | None = None
    """How the level it is placed at runs for it (None: the level's batch step)."""
    policy_stopped: bool = False
    fallback: LevelOutcome | None = None
    error: Exception | None = None
    done: bool = False


class RoutedCascadeEngine:
    """Runs the levels a policy picks, one step at a time.

    What decides is a `Driver`: the fixed cascade's by default, or any driver
    given (the router's `RouterDriver`, the Hedge policy's `HedgeDriver`, or a
    plug-in policy's, from `drivers.driver_for`).
    """

    def __init__(
        self,
        levels: Sequence[Level],
        driver: Driver | None = None,
        fallback: Level | None = None,
        deadline_s: float | None = None,
    ) -> None:
        """The one way to build an engine: its levels and the driver of its
        policy (None: the fixed cascade on the levels' thresholds; a learning
        policy's driver comes from `drivers.driver_for`, or `RouterDriver`).
        `fallback` answers when the top level's backend failed; `deadline_s`
        bounds all generation for one request."""
        if not levels:
            raise ValueError("a cascade needs at least one level")
        self.levels = list(levels)
        self.driver = driver or Driver(
            FixedCascadePolicy([level.config.threshold for level in self.levels])
        )
        self.driver.check(self.levels)
        self.fallback = fallback
        self.deadline_s = deadline_s
        self._learning = [p for p, level in enumerate(self.levels[:-1]) if level.learns]
        """Positions of levels below the top whose backends learn from its answers."""
        self._answered: OrderedDict[str, tuple[int, CodeRequest, Answer]] = OrderedDict()
        """The latest answers of those levels, by request id, for Feedback on them."""

    @property
    def learner(self) -> OnlineLearner | None:
        """What the driver learns with (its state is what snapshots hold)."""
        return self.driver.learner

    @property
    def top(self) -> int:
        return len(self.levels) - 1

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
        mu, costs = self.driver.weights(len(self.levels))
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
            mu, costs = self.driver.weights(len(self.levels))
        results = [self._finish(flight) for flight in flights]
        if self._learning:
            self._teach(flights)
            self._remember(flights, results)
        return results

    def _remember(self, flights: Sequence[_Flight], results: Sequence[object]) -> None:
        positions = {self.levels[p].index: p for p in self._learning}
        for flight, result in zip(flights, results, strict=True):
            if isinstance(result, CascadeAnswer) and result.level in positions:
                answer = Answer(result.code, result.label)
                self._answered[flight.request.id] = (
                    positions[result.level],
                    flight.request,
                    answer,
                )
                self._answered.move_to_end(flight.request.id)
        while len(self._answered) > ANSWERS_KEPT_FOR_FEEDBACK:
            self._answered.popitem(last=False)

    def _teach(self, flights: Sequence[_Flight]) -> None:
        """The top's answers are what the levels that learn online imitate: each
        such level is shown, in one call, every request of the batch the top
        answered (whether or not the level itself ran on it)."""
        taught = [
            (flight.request, Answer(outcome.code, outcome.label))
            for flight in flights
            if flight.error is None and (outcome := flight.outcomes.get(self.top)) is not None
        ]
        if not taught:
            return
        requests = [request for request, _ in taught]
        answers = [answer for _, answer in taught]
        for position in self._learning:
            level = self.levels[position]
            try:
                level.learn(requests, answers)
            except Exception:  # learning must never cost a batch its answers
                log.exception("level %s could not learn from the top's answers", level.name)

    # -- one request's way up ---------------------------------------------------------

    def _begin(self, request: CodeRequest) -> _Flight:
        started = time.perf_counter()
        deadline = time.monotonic() + self.deadline_s if self.deadline_s is not None else None
        try:
            check_request(request)  # what its kind asks of it, before any model runs
        except ValueError as error:
            flight = _Flight(request, RouteState({}), started, deadline)
            flight.error = error
            return flight
        return _Flight(request, self.driver.begin(request), started, deadline)

    def _next(self, flight: _Flight, mu: float, costs: list[float]) -> int | None:
        if flight.error is not None or flight.policy_stopped:
            return None
        position = self.driver.decide(flight.state, mu, costs)
        if position is not None:
            flight.runner = self.driver.runner(flight.request, flight.state, position)
            return position
        flight.policy_stopped = True
        flight.runner = None
        # The answer the policy would publish is from a level that failed.
        if self.fallback is not None and self.driver.answer(flight.state) in flight.failures:
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
        kind of request and purpose, for those that run its plain step), and
        record what came of it in each request's state."""
        level = self._level(position)
        batch = [flight for flight in group if flight.runner is None]
        if batch:
            self._run_group(position, level, batch)
        for flight in group:
            if flight.runner is not None:
                self._run_group(position, level, [flight])

    def _run_group(self, position: int, level: Level, group: list[_Flight]) -> None:
        requests = [flight.request for flight in group]
        deadlines = [f.deadline for f in group if f.deadline is not None]
        runner = group[0].runner if len(group) == 1 else None
        try:
            with generation_deadline(min(deadlines) if deadlines else None):
                outcomes = (
                    [runner(level, requests[0])] if runner is not None else level.step(requests)
                )
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
            self.driver.record(flight.request, flight.state, flight.outcomes, position)

    def _failed(self, flight: _Flight, position: int, level: Level, reason: str) -> None:
        log.warning("level %s failed on %s: %s", level.name, flight.request.id, reason)
        flight.failures[position] = LevelFailure(level=level.index, name=level.name, reason=reason)
        if position != _FALLBACK:
            # The level ran and gave no answer: a policy passes the request on.
            self.driver.record_failure(flight.state, position)

    def _finish(self, flight: _Flight) -> CascadeAnswer | Exception:
        if flight.error is not None:
            return flight.error
        request, state, outcomes = flight.request, flight.state, flight.outcomes
        driver = self.driver
        failures = [flight.failures[p] for p in sorted(flight.failures)]
        published = driver.answer(state)
        if published is not None and published in flight.failures:
            published = None
        driver.finish(request, state, outcomes, published, set(flight.failures))
        attempts = [
            driver.annotate(state, p, outcomes[p].attempt, published)
            for p in state.order
            if p in outcomes
        ]
        notes = driver.notes(state, self.levels)
        fields: dict[str, object]
        if published == SELF:
            own = driver.own_answer(state)
            fields = {"code": own.code, "level": own.level, "model": own.model,
                      "score": own.score, "label": own.label}  # fmt: skip
        else:
            if published is None:
                if flight.fallback is None:
                    why = "; ".join(f"level {f.level} {f.name!r}: {f.reason}" for f in failures)
                    return RequestFailed(f"backend_unavailable: {why or 'no level answered'}")
                answer, level = flight.fallback, self.fallback
                assert level is not None
                # The fallback publishes whatever it answered, on its own rule.
                accepted = attempt_meets_threshold(answer.attempt)
                attempts.append(answer.attempt.model_copy(update={"accepted": accepted}))
            else:
                answer, level = outcomes[published], self.levels[published]
            fields = {"code": answer.code, "level": level.index, "model": answer.attempt.model,
                      "score": answer.attempt.score, "label": answer.label}  # fmt: skip
        # Levels below the answer's that never ran (none when level 0 answered).
        below = 0 if published == SELF else self.top if published is None else published
        return build_answer(
            request,
            attempts,
            flight.started_s,
            **fields,
            explored_levels=notes.explored_levels,
            skipped_levels=[self.levels[p].index for p in range(below) if p not in state.order],
            failed_levels=failures,
            p_level1=notes.p_level1,
            route=notes.route,
        )

    def learn_one(self, feedback: Feedback) -> bool:
        """The policy learns from the Feedback, and so does a level that learns
        online when the answer was its own."""
        learned = self.driver.learn_one(feedback)
        remembered = self._answered.pop(feedback.id, None)
        if remembered is None:
            return learned
        position, request, answer = remembered
        level = self.levels[position]
        if feedback.level is not None and feedback.level != level.index:
            return learned
        try:
            level.learn_outcome(request, answer, feedback.passed)
        except Exception:  # learning must never cost the service
            log.exception("level %s could not learn from Feedback on %s", level.name, feedback.id)
            return learned
        return True
