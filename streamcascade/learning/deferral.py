"""A no-regret deferral policy: exponential weights (Hedge) over acceptance thresholds.

Each round a level has scored its best solution (`score` in [0, 1]). Expert
`theta` accepts when score >= theta, else defers to the next level. The loss of
accepting is 1 if the answer turns out wrong; the loss of deferring is
`mu * cost_usd` of going up (clipped to 1), so `mu` trades quality for money.

Feedback is partial: whether an accepted answer was right is known only when a
label arrives (the next level ran anyway, a reference test, downstream
Feedback). Forced exploration defers an acceptable answer with a probability
that decays with the number of updates, so labels keep coming; an accepting
expert's loss is then estimated by importance weighting (observed loss divided
by the probability of observing it), which keeps the estimate unbiased.

The same policy gates level 1 behind level 0 (`explore="accept"`): there the
"accept" side (try level 1) is the partially observed one, and exploration
tries level 1 when the gate would have skipped it.

When drift is detected, `restart_exploration` resets the exploration schedule
and mixes the weights toward uniform (fixed share), so the policy relearns
instead of trusting what the old stream taught it.

With full information and a fixed horizon T, Hedge with learning rate
eta = sqrt(8 ln N / T) has expected regret at most sqrt(T ln N / 2) against
the best fixed threshold in hindsight (Cesa-Bianchi & Lugosi 2006, Thm. 2.2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

STATE_VERSION = 2
# Scores lie in [0, 1]: the last expert never accepts.
DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01)


def json_rng_state(state: tuple[Any, ...]) -> list[Any]:
    """random.Random's state as JSON-native lists (a snapshot is JSON)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


@dataclass(frozen=True)
class DeferralDecision:
    accept: bool
    """What the level does: answer (True) or send the request up."""
    would_accept: bool
    """What the sampled threshold said before forced exploration."""
    threshold: float
    explored: bool
    """Deferred only to get a label (the published answer is still this level's)."""
    p_explore: float


class HedgeThresholdPolicy:
    """Exponential weights over `thresholds`, with decaying forced exploration.

    >>> policy = HedgeThresholdPolicy(mu=1.0, horizon=100, seed=0)
    >>> decision = policy.decide(0.9)
    >>> losses = policy.update(0.9, answer_wrong=False, defer_cost_usd=0.5, observed=True,
    ...                        p_observed=1.0)
    >>> losses[-1]  # each threshold's loss: deferring at 0.9 cost 0.5 where accepting was right
    0.5
    """

    def __init__(
        self,
        mu: float,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        horizon: int | None = None,
        explore_initial: float = 0.5,
        explore_min: float = 0.02,
        seed: int = 0,
        explore: Literal["defer", "accept"] = "defer",
    ) -> None:
        if mu < 0:
            raise ValueError("mu must be >= 0")
        if not thresholds:
            raise ValueError("need at least one threshold")
        self.mu = mu
        self.thresholds = tuple(float(t) for t in thresholds)
        self.horizon = horizon
        self.explore_initial = explore_initial
        self.explore_min = explore_min
        self.explore = explore
        self.log_weights = [0.0] * len(self.thresholds)
        self.n_updates = 0
        # Updates counted by the exploration schedule: a drift restart zeroes it.
        self.n_since_restart = 0
        self.n_restarts = 0
        self._rng = random.Random(seed)

    # -- the learning rate and exploration schedules ---------------------------

    def learning_rate(self) -> float:
        """sqrt(8 ln N / T) for a known horizon; else the anytime sqrt(8 ln N / t)."""
        n = len(self.thresholds)
        rounds = self.horizon or (self.n_updates + 1)
        return math.sqrt(8 * math.log(max(n, 2)) / rounds)

    def p_explore(self) -> float:
        """Decays as 1/sqrt(updates), never below `explore_min`."""
        return max(self.explore_min, self.explore_initial / math.sqrt(1 + self.n_since_restart))

    def probabilities(self) -> list[float]:
        top = max(self.log_weights)
        weights = [math.exp(w - top) for w in self.log_weights]
        total = sum(weights)
        return [w / total for w in weights]

    def p_accept(self, score: float) -> float:
        """Probability that the sampled expert accepts this score."""
        return sum(
            p for p, t in zip(self.probabilities(), self.thresholds, strict=True) if score >= t
        )

    # -- acting and learning ---------------------------------------------------

    def p_act_accept(self, score: float) -> float:
        """Probability that `decide` returns accept=True, exploration included."""
        p_accept, p_explore = self.p_accept(score), self.p_explore()
        if self.explore == "defer":
            return p_accept * (1 - p_explore)
        return p_accept + (1 - p_accept) * p_explore

    def decide(self, score: float) -> DeferralDecision:
        index = self._rng.choices(range(len(self.thresholds)), weights=self.probabilities())[0]
        threshold = self.thresholds[index]
        would_accept = score >= threshold
        p_explore = self.p_explore()
        if self.explore == "defer":
            explored = would_accept and self._rng.random() < p_explore
            accept = would_accept and not explored
        else:
            explored = not would_accept and self._rng.random() < p_explore
            accept = would_accept or explored
        return DeferralDecision(
            accept=accept,
            would_accept=would_accept,
            threshold=threshold,
            explored=explored,
            p_explore=p_explore,
        )

    def expert_losses(
        self, score: float, answer_wrong: bool | None, defer_cost_usd: float, weight: float
    ) -> list[float]:
        """Loss of every expert this round; an accepting expert's loss is the
        importance-weighted estimate `weight * wrong` (0 when unobserved)."""
        defer_loss = min(1.0, self.mu * defer_cost_usd)
        accept_loss = weight * float(bool(answer_wrong)) if answer_wrong is not None else 0.0
        return [accept_loss if score >= t else defer_loss for t in self.thresholds]

    def update(
        self,
        score: float,
        answer_wrong: bool | None,
        defer_cost_usd: float,
        observed: bool,
        p_observed: float,
    ) -> list[float]:
        """Learn from one round. `observed` says whether the label (answer_wrong)
        arrived; `p_observed` is the probability it would have, for the
        importance weight. Returns the loss estimates used."""
        if observed and not 0 < p_observed <= 1:
            raise ValueError("p_observed must be in (0, 1] when observed")
        weight = 1.0 / p_observed if observed else 0.0
        losses = self.expert_losses(
            score, answer_wrong if observed else None, defer_cost_usd, weight
        )
        self._apply(losses)
        return losses

    def update_losses(
        self,
        score: float,
        accept_loss: float | None,
        defer_loss: float | None,
        p_accept_observed: float = 1.0,
        p_defer_observed: float = 1.0,
    ) -> list[float]:
        """Learn from one round given each side's loss in [0, 1], or None when
        that side went unobserved; an observed loss is divided by the
        probability it had of being observed (importance weighting)."""
        for p in (p_accept_observed, p_defer_observed):
            if not 0 < p <= 1:
                raise ValueError("observation probabilities must be in (0, 1]")
        accept = 0.0 if accept_loss is None else min(1.0, accept_loss) / p_accept_observed
        defer = 0.0 if defer_loss is None else min(1.0, defer_loss) / p_defer_observed
        losses = [accept if score >= t else defer for t in self.thresholds]
        self._apply(losses)
        return losses

    def _apply(self, losses: list[float]) -> None:
        eta = self.learning_rate()
        self.log_weights = [
            w - eta * loss for w, loss in zip(self.log_weights, losses, strict=True)
        ]
        self.n_updates += 1
        self.n_since_restart += 1

    def restart_exploration(self, share: float = 0.5) -> None:
        """After drift: explore as if new, and move `share` of the mass back to uniform."""
        probabilities = self.probabilities()
        uniform = 1.0 / len(probabilities)
        self.log_weights = [math.log((1 - share) * p + share * uniform) for p in probabilities]
        self.n_since_restart = 0
        self.n_restarts += 1

    # -- state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "mu": self.mu,
            "explore": self.explore,
            "n_since_restart": self.n_since_restart,
            "n_restarts": self.n_restarts,
            "thresholds": list(self.thresholds),
            "horizon": self.horizon,
            "explore_initial": self.explore_initial,
            "explore_min": self.explore_min,
            "log_weights": list(self.log_weights),
            "n_updates": self.n_updates,
            "rng": json_rng_state(self._rng.getstate()),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> HedgeThresholdPolicy:
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unsupported policy state version {version!r}")
        policy = cls(
            mu=state["mu"],
            thresholds=state["thresholds"],
            horizon=state["horizon"],
            explore_initial=state["explore_initial"],
            explore_min=state["explore_min"],
            explore=state.get("explore", "defer"),
        )
        policy.log_weights = [float(w) for w in state["log_weights"]]
        policy.n_updates = int(state["n_updates"])
        # Version 1 had no restarts: its schedule counted every update.
        policy.n_since_restart = int(state.get("n_since_restart", policy.n_updates))
        policy.n_restarts = int(state.get("n_restarts", 0))
        rng_state = state["rng"]
        policy._rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        return policy
