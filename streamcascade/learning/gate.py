"""The level-0 gate of the Hedge learner: before level 1 runs, a cheap online
model (`Level0Router`, over the request's features) estimates whether level 1
would answer it well, and a Hedge threshold policy over that estimate decides
whether to try level 1 or skip it.

Losses, per round (try level 1 vs skip it):
  try:  mu * cost of level 1 + (wrong, if level 1 accepts; else mu * cost above);
  skip: mu * cost above level 1 (its running mean).
The router learns from level 1's outcome when it is seen, weighted by the
inverse probability of seeing it; a drift monitor on its errors restarts the
gate's exploration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streamcascade.config import LearningConfig
from streamcascade.learning.deferral import DeferralDecision, HedgeThresholdPolicy
from streamcascade.learning.drift import DriftMonitor
from streamcascade.learning.level0 import Level0Router

log = logging.getLogger(__name__)

_MAX_SAMPLE_WEIGHT = 5.0  # caps an importance weight used as an SGD sample weight


class Level0Gate:
    """The router, the gate's policy and its drift monitor, with their state."""

    def __init__(self, config: LearningConfig, policy: HedgeThresholdPolicy) -> None:
        self.config = config
        self.router = Level0Router(config.level0_learning_rate, n_buckets=config.level0_buckets)
        self.policy = policy
        self.drift = DriftMonitor(config.drift_delta)

    def plan(self, features: dict[str, float]) -> tuple[float, float, DeferralDecision]:
        """(P(level 1 answers well), P(the gate tries level 1), the decision)."""
        p_level1 = self.router.predict_features(features)
        p_try = self.policy.p_act_accept(p_level1)
        return p_level1, p_try, self.policy.decide(p_level1)

    def update(
        self,
        features: dict[str, float],
        p_level1: float,
        p_try: float,
        first: tuple[DeferralDecision, float, bool | None] | None,
        above_cost_usd: float,
        loss_cost: Callable[[float], float],
    ) -> None:
        """One round. `first`: level 1's decision, cost and label, if it ran (and
        was not a validation sweep, which says nothing of what it would do)."""
        skip_loss = loss_cost(above_cost_usd)
        if first is None:
            self.policy.update_losses(p_level1, None, skip_loss)
            return
        decision, cost_1, right = first
        label: bool | None  # router target: level 1 would accept and is right
        if not decision.would_accept:
            try_loss: float | None = loss_cost(cost_1 + above_cost_usd)
            p_obs = p_try
            label, weight = False, 1.0
        elif right is not None:
            try_loss = min(1.0, loss_cost(cost_1) + float(not right))
            # An explored accept is seen with probability p_explore (without
            # reference labels), an unexplored one is not seen at all.
            p_seen = decision.p_explore if decision.explored and not decision.accept else 1.0
            p_obs = p_try * max(p_seen, 1e-3)
            label, weight = right, min(_MAX_SAMPLE_WEIGHT, 1.0 / max(p_seen, 1e-3))
        else:
            try_loss, p_obs, label, weight = None, 1.0, None, 0.0
        self.policy.update_losses(p_level1, try_loss, skip_loss, min(1.0, max(p_obs, 1e-3)))
        if label is not None:
            # The prediction made at plan time: no update has happened since.
            self.router.model.learn_one(features, label, w=weight)
            self.router.n_learned += 1
            if self.config.drift and self.drift.update(float((p_level1 >= 0.5) != label)):
                log.info("drift at level 0: gate exploration restarts")
                self.policy.restart_exploration(self.config.drift_share)

    def learn_feedback(self, features: dict[str, float], passed: bool) -> None:
        """Downstream said how level 1's published answer fared."""
        self.router.model.learn_one(features, passed)
        self.router.n_learned += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "gate": self.policy.state_dict(),
            "router": self.router.state_dict(),
            "gate_drift": self.drift.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy = HedgeThresholdPolicy.from_state_dict(state["gate"])
        self.router = Level0Router.from_state_dict(state["router"])
        self.drift = DriftMonitor.from_state_dict(state["gate_drift"])
