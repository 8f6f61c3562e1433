"""One track of the Hedge learner: a deferral policy per non-top level, what
deferring from each level costs, what the levels from level 1 up cost, and a
drift monitor per level.

Generation requests and classification requests each have one: their levels
score differently (tests vs vote share), so what a threshold means differs
too. Each track owns its state, and its snapshot keeps the learner's layout
(`prefix` "" or "class_"), so snapshots written before the split still load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streamcascade.config import LearningConfig
from streamcascade.learning.deferral import DeferralDecision, HedgeThresholdPolicy
from streamcascade.learning.drift import DriftMonitor
from streamcascade.learning.running import RunningMean

log = logging.getLogger(__name__)


class DeferralTrack:
    """Policies, cost estimates and drift monitors for one kind of request.

    >>> from streamcascade.config import LearningConfig
    >>> track = DeferralTrack(LearningConfig(), n_levels=3, seed=0, level1_key="above_level1_cost")
    >>> decision, p_accept = track.decide(0, score=1.0)
    >>> sorted(track.state_dict(""))[:3]
    ['above_level1_cost', 'drift', 'next_cost']
    """

    def __init__(
        self,
        config: LearningConfig,
        n_levels: int,
        seed: int,
        level1_key: str,
        new_policy: Callable[[int], HedgeThresholdPolicy] | None = None,
    ) -> None:
        self.config = config
        self.n_levels = n_levels
        self.level1_key = level1_key
        """The snapshot's name for `level1_cost`."""
        make = new_policy or (lambda s: _policy(config, s))
        self.policies = [make(seed + position) for position in range(n_levels - 1)]
        self.next_cost = [RunningMean() for _ in range(n_levels - 1)]
        """What deferring from each level costs: the next level's attempt."""
        self.level1_cost = RunningMean()
        """What the levels from level 1 up cost (the gate's skip loss), or level 1
        alone for classification (level 0's defer loss)."""
        self.drift = [DriftMonitor(config.drift_delta) for _ in range(n_levels - 1)]

    def decide(self, position: int, score: float) -> tuple[DeferralDecision, float]:
        """The policy's decision at `position`, and its probability of accepting."""
        policy = self.policies[position]
        p_act_accept = policy.p_act_accept(score)
        return policy.decide(score), p_act_accept

    def update_next_costs(self, costs_by_position: dict[int, float]) -> None:
        """What deferring from a level costs, observed where it happened."""
        for position in costs_by_position:
            above = costs_by_position.get(position + 1)
            if position < self.n_levels - 1 and above is not None:
                self.next_cost[position].update(above)

    def update(
        self,
        position: int,
        score: float,
        right: bool | None,
        decision: DeferralDecision,
        p_act_accept: float,
        loss_cost: Callable[[float], float],
    ) -> None:
        """One round of the level's policy: the defer loss is mu times the next
        level's cost; the accept loss, when a label came, is whether it was wrong,
        weighted by the probability that the label was seen."""
        policy = self.policies[position]
        defer_loss = loss_cost(self.next_cost[position].value)
        if right is None:
            policy.update_losses(score, None, defer_loss)
            return
        # The label arrives when the level deferred (the next level's answer
        # labels it) or always, with reference labels; its probability weights it.
        p_label = 1.0 if decision.accept else min(1.0, max(1e-3, 1.0 - p_act_accept))
        policy.update_losses(score, float(not right), defer_loss, p_label)
        self.observe_error(position, float(not right))

    def observe_error(self, position: int, wrong: float) -> None:
        """Feed the level's drift monitor; on a change, exploration restarts."""
        if self.config.drift and self.drift[position].update(wrong):
            log.info("drift at level position %d: exploration restarts", position)
            self.policies[position].restart_exploration(self.config.drift_share)

    @property
    def n_drift_alarms(self) -> int:
        return sum(monitor.n_detections for monitor in self.drift)

    def state_dict(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}policies": [p.state_dict() for p in self.policies],
            f"{prefix}next_cost": [[m.value, m.n] for m in self.next_cost],
            self.level1_key: [self.level1_cost.value, self.level1_cost.n],
            f"{prefix}drift": [d.state_dict() for d in self.drift],
        }

    def load_state_dict(self, state: dict[str, Any], prefix: str) -> None:
        self.policies = [
            HedgeThresholdPolicy.from_state_dict(p) for p in state[f"{prefix}policies"]
        ]
        for mean, (value, n) in zip(self.next_cost, state[f"{prefix}next_cost"], strict=True):
            mean.value, mean.n = float(value), int(n)
        self.level1_cost.value = float(state[self.level1_key][0])
        self.level1_cost.n = int(state[self.level1_key][1])
        self.drift = [DriftMonitor.from_state_dict(d) for d in state[f"{prefix}drift"]]


def _policy(config: LearningConfig, seed: int) -> HedgeThresholdPolicy:
    return HedgeThresholdPolicy(
        mu=1.0,  # losses arrive already weighted by the learner's mu
        thresholds=config.thresholds,
        explore_initial=config.explore_initial,
        explore_min=config.explore_min,
        seed=seed,
    )
