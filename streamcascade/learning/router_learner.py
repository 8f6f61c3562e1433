"""What the routed cascade learns while it serves, and how it is kept.

`RouteLearner` owns the `CascadeRouter` (quality and value estimators), the
running cost of each level, the cost weight mu in the units a user thinks in,
drift monitors, and the answers awaiting downstream Feedback. Its state is
JSON with a version number, like `CascadeLearner`'s, so the service snapshots,
restores and shares it the same way.

mu is never a raw per-USD constant: the user says how many top-model calls
one wrong answer is worth (`top_calls_per_wrong_answer`), and mu follows the
observed price of a top call; or the user sets a budget per request, or a
share of requests that may reach the top, and mu is steered to meet it.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from streamcascade.config import LearningConfig, LevelConfig
from streamcascade.learning.drift import DriftMonitor
from streamcascade.learning.features import RequestFeaturizer
from streamcascade.learning.policies import (
    CascadeRouter,
    Observation,
    RouterSettings,
    RouteState,
)
from streamcascade.learning.protocol import EventOutbox
from streamcascade.learning.running import RunningMean
from streamcascade.learning.snapshots import SnapshotMismatch, check_snapshot
from streamcascade.schemas import CodeRequest, Feedback

log = logging.getLogger(__name__)

STATE_VERSION = 2
_TRUSTED_AGREEMENT = 0.9
# 2: the router learns each level's gain ("gain"), not its ex-ante quality ("value").
# How far the budget may push the weight of a wrong answer, in top calls.
_CALLS_RANGE = (0.05, 1000.0)
# ... and the factor a share budget may put on the top's cost.
_SURCHARGE_RANGE = (0.01, 1000.0)


def prior_cost_usd(level: LevelConfig) -> float:
    """A level's cost before it has run: its prices on a typical request
    (a 500-token prompt, 300 tokens out per solution and test generation)."""
    calls = level.k_solutions + level.t_test_generations
    tokens_in = 500 * (1 + (level.t_test_generations > 0))
    return (tokens_in * level.price_in_usd_per_1m + 300 * calls * level.price_out_usd_per_1m) / 1e6


@dataclass
class PendingAnswer:
    """Kept per published answer until its Feedback arrives (bounded)."""

    state: dict[str, Any]
    position: int
    verdict: bool | None = None
    """What the router itself held of the published answer: its label
    (imitation or reference) if it had one, else whether it passed its tests."""


def state_to_dict(state: RouteState) -> dict[str, Any]:
    return {
        "features": state.features,
        # By hand, not dataclasses.asdict: this runs for every request.
        "observations": [
            {
                "position": o.position,
                "has_answer": o.has_answer,
                "score": o.score,
                "n_tests": o.n_tests,
                "n_chars": o.n_chars,
                "cost_usd": o.cost_usd,
            }
            for o in state.observations.values()
        ],
        "agree": [[i, j, same] for (i, j), same in state.agree.items()],
        "order": state.order,
        "forced": state.forced,
    }


def state_from_dict(data: dict[str, Any]) -> RouteState:
    observations = {o["position"]: Observation(**o) for o in data["observations"]}
    return RouteState(
        features={str(k): float(v) for k, v in data["features"].items()},
        observations=observations,
        agree={(int(i), int(j)): same for i, j, same in data["agree"]},
        order=[int(p) for p in data["order"]],
        forced=bool(data["forced"]),
    )


class RouteLearner:
    """The routed cascade's learner: decide with `router`, learn with `finish`
    and `learn_one`, keep with `state_dict`."""

    def __init__(self, config: LearningConfig, levels: Sequence[LevelConfig]) -> None:
        if not levels:
            raise ValueError("a cascade needs at least one level")
        self.config = config
        self.levels = list(levels)
        self.n_levels = len(levels)
        settings = config.router
        self.router = CascadeRouter(
            RouterSettings(
                n_levels=self.n_levels,
                prior_precision=settings.prior_precision,
                forgetting=settings.forgetting,
                explore_floor=settings.explore_floor,
                thompson=settings.thompson,
                top_quality=settings.top_quality,
                top_quality_failed=settings.top_quality_failed,
                ex_ante_scale=settings.ex_ante_scale,
                answer_margin=settings.answer_margin,
                seed=config.seed,
            )
        )
        self.featurizer = RequestFeaturizer(config.level0_buckets)
        self.costs = [RunningMean() for _ in levels]
        for mean, level in zip(self.costs, levels, strict=True):
            mean.value = prior_cost_usd(level)  # until it has run: the first cost replaces it
        self.top_calls = settings.top_calls_per_wrong_answer
        self.top_surcharge = 1.0
        """`budget_top_share`: the factor on the top's cost the router decides with.
        A share is steered on the top's own price, not on mu: when the top is the
        cheapest level (prices move), a larger mu would send more requests there."""
        self.budget_mean = RunningMean()
        self.drift = [DriftMonitor(config.drift_delta) for _ in range(self.n_levels)]
        self.pending: OrderedDict[str, PendingAnswer] = OrderedDict()
        self.n_requests = 0
        self.n_labels = 0
        self.n_feedback = 0
        self.n_feedback_unmatched = 0
        # How often Feedback agrees with the router's own verdicts: Feedback
        # counts by it, and Feedback no better than a coin counts for nothing.
        self.feedback_agreement = RunningMean(alpha=0.01, warmup=100)
        self.feedback_agreement.value, self.feedback_agreement.n = _TRUSTED_AGREEMENT, 20
        self.n_drifts = 0
        self.outbox = EventOutbox()
        """Each learning event (see `apply_event`), until the service takes it."""
        self.n_events_applied = 0
        self.last: tuple[dict[str, Any], dict[int, bool | None]] | None = None
        """The last finished request's route and labels (for benchmarks)."""

    # -- the units a user thinks in ------------------------------------------------

    @property
    def mu(self) -> float:
        """Loss per USD: one wrong answer weighs `top_calls` calls of the top model."""
        top_cost = max(self.costs[-1].value, 1e-12)
        return 1.0 / (self.top_calls * top_cost)

    def expected_costs(self) -> list[float]:
        costs = [mean.value for mean in self.costs]
        costs[-1] *= self.top_surcharge
        return costs

    # -- acting --------------------------------------------------------------------

    def begin(self, request: CodeRequest) -> RouteState:
        if not self.config.router.ex_ante_scale:
            return RouteState({})
        return RouteState(self.featurizer.transform_one(request))

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None:
        """The `CascadePolicy` step; the engine passes this learner's own mu and costs."""
        return self.router.decide(state, mu, cost_usd)

    def answer(self, state: RouteState) -> int:
        return self.router.answer(state)

    def finish(
        self,
        request_id: str,
        state: RouteState,
        labels: dict[int, bool | None],
        published: int,
    ) -> None:
        """Learn from a finished request, remember it for Feedback, and emit the
        learning event that replicas apply too."""
        self._learn(state, labels)
        route = state_to_dict(state)
        self.last = (route, dict(labels))
        verdict = labels.get(published)
        if verdict is None and published in state.observations:
            observation = state.observations[published]
            verdict = observation.has_answer and observation.score >= 1.0
        self._remember(request_id, PendingAnswer(route, published, verdict))
        self.outbox.put(
            {
                "version": STATE_VERSION,
                "kind": "route",
                "state": state_to_dict(state),
                "labels": {str(k): v for k, v in labels.items()},
            }
        )

    def take_events(self) -> list[dict[str, Any]]:
        """The learning events since the last call, oldest first (for replicas)."""
        return self.outbox.take()

    def apply_event(self, event: dict[str, Any]) -> None:
        """Learn from a request another replica answered."""
        if event.get("version") != STATE_VERSION or event.get("kind") != "route":
            raise ValueError(f"unsupported learning event {event.get('kind')!r}")
        labels = {int(k): v for k, v in event["labels"].items()}
        self._learn(state_from_dict(event["state"]), labels)
        self.n_events_applied += 1

    def _learn(self, state: RouteState, labels: dict[int, bool | None]) -> None:
        self.n_requests += 1
        for position, observation in state.observations.items():
            self.costs[position].update(observation.cost_usd)
        known = {p: v for p, v in labels.items() if v is not None}
        self.n_labels += bool(known)
        # Drift: how wrong the estimates were, before learning from this request.
        if self.config.drift:
            for position, right in known.items():
                if position not in state.observations:
                    continue
                predicted = self.router.quality_of(state, position)
                if self.drift[position].update(abs(float(right) - predicted)):
                    log.info("drift at level position %d: the estimators widen", position)
                    self.router.widen(self.config.drift_share)
                    self.n_drifts += 1
        self.router.observe(state, labels)
        self._steer(state)

    def _steer(self, state: RouteState) -> None:
        """Dual ascent on the budget: while the running mean of the spend is over
        target, a wrong answer weighs fewer top calls, so cost counts for more;
        while the share reaching the top is over target, the top's cost is
        surcharged, so the router calls it less, whatever the levels' prices."""
        config = self.config
        if config.budget_usd_per_request is not None:
            target = config.budget_usd_per_request
            self.budget_mean.update(sum(o.cost_usd for o in state.observations.values()))
            signal = max(-1.0, min(1.0, self.budget_mean.value / target - 1.0))
            calls = self.top_calls * math.exp(-config.budget_step * signal)
            self.top_calls = min(_CALLS_RANGE[1], max(_CALLS_RANGE[0], calls))
        elif config.budget_top_share is not None:
            target = config.budget_top_share
            self.budget_mean.update(float(self.n_levels - 1 in state.observations))
            signal = max(-1.0, min(1.0, self.budget_mean.value / target - 1.0))
            surcharge = self.top_surcharge * math.exp(config.budget_step * signal)
            self.top_surcharge = min(_SURCHARGE_RANGE[1], max(_SURCHARGE_RANGE[0], surcharge))

    def _remember(self, request_id: str, pending: PendingAnswer) -> None:
        self.pending[request_id] = pending
        self.pending.move_to_end(request_id)
        while len(self.pending) > self.config.pending_capacity:
            self.pending.popitem(last=False)

    def learn_one(self, feedback: Feedback) -> bool:
        """A downstream outcome of a published answer labels the level that
        answered. False when the answer is unknown here (too old, or published
        before a restart)."""
        self.n_feedback += 1
        pending = self.pending.pop(feedback.id, None)
        if pending is None:
            self.n_feedback_unmatched += 1
            log.warning("feedback for unknown or expired answer %s: not learned", feedback.id)
            return False
        state = state_from_dict(pending.state)
        if pending.verdict is not None:
            self.feedback_agreement.update(float(pending.verdict == feedback.passed))
        weight = self.feedback_weight()
        if weight > 0:
            self.router.observe_quality(state, {pending.position: feedback.passed}, weight)
        self.n_labels += 1
        return True

    def feedback_weight(self) -> float:
        """What one Feedback record counts for, against one label of the router's
        own: 2a - 1 for the share a of Feedback that agrees with the router's own
        verdicts, over 0.9 agreement (what honest Feedback shows against
        imitation labels and pass bits, both imperfect) scaled to 1. A source
        that lies on a share e of its records agrees about (1 - e) as often as
        an honest one, so its weight, and what it can move, shrinks with e, and
        is 0 at e = 0.5: the harm lying Feedback can do is bounded by the weight
        it earned by agreeing."""
        agreement = self.feedback_agreement.value
        return max(0.0, min(1.0, (2 * agreement - 1) / (2 * _TRUSTED_AGREEMENT - 1)))

    def gauges(self) -> dict[str, float]:
        return {
            "requests": self.n_requests,
            "labels": self.n_labels,
            "feedback": self.n_feedback,
            "drift_alarms": self.n_drifts,
            "mu_per_usd": self.mu,
            "feedback_weight": self.feedback_weight(),
            "top_calls_per_wrong_answer": self.top_calls,
            "forced_explorations": self.router.n_forced,
        }

    # -- state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": "route",
            "n_levels": self.n_levels,
            "levels": [level.name for level in self.levels],
            "router": self.router.state_dict(),
            "costs": [[m.value, m.n] for m in self.costs],
            "top_calls": self.top_calls,
            "top_surcharge": self.top_surcharge,
            "budget_mean": [self.budget_mean.value, self.budget_mean.n],
            "feedback_agreement": [self.feedback_agreement.value, self.feedback_agreement.n],
            "drift": [d.state_dict() for d in self.drift],
            "counters": {
                "n_requests": self.n_requests,
                "n_labels": self.n_labels,
                "n_feedback": self.n_feedback,
                "n_feedback_unmatched": self.n_feedback_unmatched,
                "n_drifts": self.n_drifts,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot (answers awaiting Feedback are not part of it).
        A snapshot of a ladder that lacked some of this one's levels below the
        top (a model joined) restores what it knows, and the newcomers start
        from the prior."""
        if state.get("kind") == "route" and state.get("version") == 1:
            state = upgrade_v1(state)
        names = [level.name for level in self.levels]
        saved = state.get("levels", names if state.get("n_levels") == self.n_levels else None)
        joined = joined_positions(saved, names) if saved is not None else []
        check_snapshot(state, "route", "router", STATE_VERSION, self.n_levels - len(joined))
        self.router = CascadeRouter(replace(self.router.settings, n_levels=len(saved or names)))
        self.router.load_state_dict(state["router"])
        self.costs = []
        for value, n in state["costs"]:
            mean = RunningMean()
            mean.value, mean.n = float(value), int(n)
            self.costs.append(mean)
        self.top_calls = float(state["top_calls"])
        self.top_surcharge = float(state["top_surcharge"])
        self.budget_mean.value = float(state["budget_mean"][0])
        self.budget_mean.n = int(state["budget_mean"][1])
        self.feedback_agreement.value = float(state["feedback_agreement"][0])
        self.feedback_agreement.n = int(state["feedback_agreement"][1])
        self.drift = [DriftMonitor.from_state_dict(d) for d in state["drift"]]
        for key, value in state["counters"].items():
            setattr(self, key, int(value))
        for position in joined:
            self.router.insert_level(position)
            fresh = RunningMean()
            fresh.value = prior_cost_usd(self.levels[position])
            self.costs.insert(position, fresh)
            self.drift.insert(position, DriftMonitor(self.config.drift_delta))
            log.info("level %s joined the ladder at position %d: it starts from the prior",
                     names[position], position)  # fmt: skip


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 snapshot as version 2: what it learned of the answers'
    quality, the costs and the budget is kept; version 1 learned each level's
    ex-ante quality, not its gain, so the gains start at the prior."""
    n = int(state["n_levels"])
    fresh = CascadeRouter(RouterSettings(n_levels=n)).state_dict()
    router = {**state["router"], "gain": fresh["gain"], "spread": fresh["spread"],
              "spread_in": fresh["spread_in"]}  # fmt: skip
    router.pop("value", None)
    return {**state, "version": 2, "router": router, "top_surcharge": 1.0,
            "feedback_agreement": [_TRUSTED_AGREEMENT, 20]}  # fmt: skip


def joined_positions(saved: Sequence[str], names: Sequence[str]) -> list[int]:
    """The positions in `names` of the levels a snapshot of the ladder `saved`
    lacks, when `names` is `saved` with levels added below its top; else
    SnapshotMismatch.

    >>> joined_positions(["a", "c", "top"], ["a", "b", "c", "top"])
    [1]
    >>> joined_positions(["a", "top"], ["a", "top"])
    []
    """
    saved, names = list(saved), list(names)
    if saved == names:
        return []
    matched, position = 0, 0
    joined: list[int] = []
    for position, name in enumerate(names):
        if matched < len(saved) and saved[matched] == name:
            matched += 1
        else:
            joined.append(position)
    if matched != len(saved) or not saved or saved[-1] != names[-1]:
        raise SnapshotMismatch(
            f"the snapshot is for levels {saved}; this cascade has {names}: only levels added "
            "below the same top can join a learned router's snapshot"
        )
    return joined
