"""The budget heuristic of Chen et al. 2024 (*Model Cascading for Code*), offline
then online.

A level's configuration is an arm: k solutions, t test generations of at most
L asserts, and an acceptance threshold. Offline, on a validation prefix of the
stream, every arm's mean cost and accuracy are measured and the Pareto front is
kept; for a budget (USD per request) the most accurate front arm within budget
is chosen. Online, the front's arms are played as a bandit under the cost
constraint: UCB on the Lagrangian reward `right - lam * cost / budget`, where
the multiplier `lam` rises while the running spend exceeds the budget and falls
back while it is under (dual ascent), and each arm's statistics start from its
validation figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Arm:
    k_solutions: int
    t_test_generations: int
    max_test_lines: int
    threshold: float

    def label(self) -> str:
        return (
            f"k={self.k_solutions} t={self.t_test_generations} "
            f"L={self.max_test_lines} th={self.threshold:g}"
        )


@dataclass(frozen=True)
class ArmFigures:
    arm: Arm
    cost_usd: float
    """Mean per request."""
    accuracy: float


def pareto_front(figures: Sequence[ArmFigures]) -> list[ArmFigures]:
    """The arms no other arm beats on both cost and accuracy, cheapest first."""
    ordered = sorted(figures, key=lambda f: (f.cost_usd, -f.accuracy, f.arm))
    front: list[ArmFigures] = []
    for figure in ordered:
        if not front or figure.accuracy > front[-1].accuracy:
            front.append(figure)
    return front


def choose_for_budget(front: Sequence[ArmFigures], budget_usd: float) -> ArmFigures:
    """The most accurate arm whose mean cost fits the budget; the cheapest if none does."""
    if not front:
        raise ValueError("empty front")
    within = [f for f in front if f.cost_usd <= budget_usd]
    return max(within, key=lambda f: f.accuracy) if within else front[0]


class BudgetedBandit:
    """UCB over arms on a Lagrangian reward, with a dual-ascent multiplier."""

    def __init__(
        self,
        arms: Sequence[ArmFigures],
        budget_usd: float,
        prior_weight: int = 5,
        exploration: float = 0.2,
        dual_step: float = 0.05,
    ) -> None:
        if not arms:
            raise ValueError("need at least one arm")
        if budget_usd <= 0:
            raise ValueError("budget must be > 0")
        self.arms = [f.arm for f in arms]
        self.budget_usd = budget_usd
        self.exploration = exploration
        self.dual_step = dual_step
        # Validation figures count as `prior_weight` pulls each.
        self.pulls = [prior_weight] * len(arms)
        self.right = [prior_weight * f.accuracy for f in arms]
        self.cost = [prior_weight * f.cost_usd for f in arms]
        self.lam = self.warm_multiplier(arms, budget_usd)
        self.t = 0
        self.spent_usd = 0.0

    @staticmethod
    def warm_multiplier(arms: Sequence[ArmFigures], budget_usd: float) -> float:
        """The smallest multiplier under which the offline choice for the budget
        beats every costlier arm on validation figures: online play starts where
        the offline heuristic left off."""
        chosen = choose_for_budget(arms, budget_usd)
        slopes = [
            (f.accuracy - chosen.accuracy) / ((f.cost_usd - chosen.cost_usd) / budget_usd)
            for f in arms
            if f.cost_usd > chosen.cost_usd and f.accuracy > chosen.accuracy
        ]
        return max([0.0, *slopes])

    def _value(self, i: int) -> float:
        mean_right = self.right[i] / self.pulls[i]
        mean_cost = self.cost[i] / self.pulls[i] / self.budget_usd
        bonus = self.exploration * math.sqrt(math.log(self.t + 2) / self.pulls[i])
        return mean_right - self.lam * mean_cost + bonus

    def pull(self) -> int:
        """Index of the arm to play for the next request."""
        return max(range(len(self.arms)), key=lambda i: (self._value(i), -i))

    def update(self, index: int, right: bool, cost_usd: float) -> None:
        self.t += 1
        self.pulls[index] += 1
        self.right[index] += float(right)
        self.cost[index] += cost_usd
        self.spent_usd += cost_usd
        # Over budget on average so far: cost weighs more.
        overspend = self.spent_usd / (self.t * self.budget_usd) - 1.0
        self.lam = max(0.0, self.lam + self.dual_step * max(-1.0, min(1.0, overspend)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "arms": [a.__dict__ for a in self.arms],
            "budget_usd": self.budget_usd,
            "pulls": self.pulls,
            "right": self.right,
            "cost": self.cost,
            "lam": self.lam,
            "t": self.t,
            "spent_usd": self.spent_usd,
        }


def bandit_from_state_dict(
    state: dict[str, Any], exploration: float = 0.2, dual_step: float = 0.05
) -> BudgetedBandit:
    if state.get("version") != 1:
        raise ValueError(f"unsupported bandit state version {state.get('version')!r}")
    arms = [ArmFigures(Arm(**a), 0.0, 0.0) for a in state["arms"]]
    bandit = BudgetedBandit(arms, state["budget_usd"], 1, exploration, dual_step)
    bandit.pulls = [int(x) for x in state["pulls"]]
    bandit.right = [float(x) for x in state["right"]]
    bandit.cost = [float(x) for x in state["cost"]]
    bandit.lam, bandit.t = float(state["lam"]), int(state["t"])
    bandit.spent_usd = float(state["spent_usd"])
    return bandit
