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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamcascade.config import BudgetArmsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Arm:
    k_solutions: int
    t_test_generations: int
    max_test_lines: int
    threshold: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """(k, t, L): what the level generates and tests for this arm."""
        return (self.k_solutions, self.t_test_generations, self.max_test_lines)

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
    """UCB over arms on a Lagrangian reward, with a dual-ascent multiplier.

    Cost is seen on every pull; rightness only sometimes (an accepted answer is
    checked only when it is also sent up for a label). `update` takes an
    unbiased estimate of it: the observed rightness divided by the probability
    of observing it, 0 when not observed (Horvitz-Thompson), or None when the
    round says nothing about it.
    """

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
        self.n_right = [prior_weight] * len(arms)
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
        mean_right = self.right[i] / self.n_right[i]
        mean_cost = self.cost[i] / self.pulls[i] / self.budget_usd
        bonus = self.exploration * math.sqrt(math.log(self.t + 2) / self.n_right[i])
        return mean_right - self.lam * mean_cost + bonus

    def pull(self) -> int:
        """Index of the arm to play for the next request."""
        return max(range(len(self.arms)), key=lambda i: (self._value(i), -i))

    def update(
        self, index: int, right: float | None, cost_usd: float, extra_usd: float = 0.0
    ) -> None:
        """`right`: 1/0, or an importance-weighted estimate; None: unknown.
        `extra_usd`: spent this round beyond the arm's own cost (a label bought
        from a higher level): it counts against the budget, not against the arm."""
        self.t += 1
        self.pulls[index] += 1
        self.cost[index] += cost_usd
        if right is not None:
            self.n_right[index] += 1
            self.right[index] += float(right)
        self.spent_usd += cost_usd + extra_usd
        # Over budget on average so far: cost weighs more.
        overspend = self.spent_usd / (self.t * self.budget_usd) - 1.0
        self.lam = max(0.0, self.lam + self.dual_step * max(-1.0, min(1.0, overspend)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            "arms": [a.__dict__ for a in self.arms],
            "budget_usd": self.budget_usd,
            "pulls": self.pulls,
            "n_right": self.n_right,
            "right": self.right,
            "cost": self.cost,
            "lam": self.lam,
            "t": self.t,
            "spent_usd": self.spent_usd,
        }


def bandit_from_state_dict(
    state: dict[str, Any], exploration: float = 0.2, dual_step: float = 0.05
) -> BudgetedBandit:
    if state.get("version") != 2:
        raise ValueError(f"unsupported bandit state version {state.get('version')!r}")
    arms = [ArmFigures(Arm(**a), 0.0, 0.0) for a in state["arms"]]
    bandit = BudgetedBandit(arms, state["budget_usd"], 1, exploration, dual_step)
    bandit.pulls = [int(x) for x in state["pulls"]]
    bandit.n_right = [int(x) for x in state["n_right"]]
    bandit.right = [float(x) for x in state["right"]]
    bandit.cost = [float(x) for x in state["cost"]]
    bandit.lam, bandit.t = float(state["lam"]), int(state["t"])
    bandit.spent_usd = float(state["spent_usd"])
    return bandit


Shape = tuple[int, int, int]
"""(k solutions, t test generations, L test lines): what one generation pass fixes."""


def grid_arms(config: BudgetArmsConfig) -> list[Arm]:
    """Every arm of the grid; L varies only where there are test generations."""
    return [
        Arm(k, t, lines, threshold)
        for k in config.k_grid
        for t in config.t_grid
        for lines in (config.l_grid if t else config.l_grid[:1])
        for threshold in config.thresholds
    ]


class LevelArms:
    """The budget heuristic on one level while the service runs.

    Validation: the level runs at the widest shape and the request always goes
    up; `record_validation` is given every arm's outcome on it (right, and the
    cost from this level up). After `validation_requests` rows, the Pareto
    front of the arms' mean figures becomes a BudgetedBandit's arms, started
    from those figures. A validation row needs labels for every arm's answer,
    so a request without them (an untested teacher) does not count.
    """

    def __init__(self, config: BudgetArmsConfig) -> None:
        self.config = config
        self.grid = grid_arms(config)
        self.shapes: list[Shape] = sorted(
            {(a.k_solutions, a.t_test_generations, a.max_test_lines) for a in self.grid}
        )
        self.widest: Shape = (max(config.k_grid), max(config.t_grid), max(config.l_grid))
        self.n_rows = 0
        self.sum_right = [0.0] * len(self.grid)
        self.sum_cost = [0.0] * len(self.grid)
        self.bandit: BudgetedBandit | None = None
        self.front: list[ArmFigures] = []

    @property
    def validating(self) -> bool:
        return self.bandit is None

    def figures(self) -> list[ArmFigures]:
        n = max(1, self.n_rows)
        return [
            ArmFigures(arm, self.sum_cost[i] / n, self.sum_right[i] / n)
            for i, arm in enumerate(self.grid)
        ]

    def record_validation(self, row: dict[Arm, tuple[bool, float]]) -> None:
        """`row[arm]`: whether the cascade was right from this level up under the
        arm, and what it cost."""
        if self.bandit is not None:
            raise RuntimeError("validation is over")
        for i, arm in enumerate(self.grid):
            right, cost_usd = row[arm]
            self.sum_right[i] += float(right)
            self.sum_cost[i] += cost_usd
        self.n_rows += 1
        if self.n_rows >= self.config.validation_requests:
            self._start_bandit()

    def _start_bandit(self) -> None:
        config = self.config
        self.front = pareto_front(self.figures())
        self.bandit = BudgetedBandit(
            self.front,
            config.budget_usd_per_request,
            config.prior_weight,
            config.exploration,
            config.dual_step,
        )
        chosen = choose_for_budget(self.front, config.budget_usd_per_request)
        log.info(
            "budget arms: validation over after %d requests; %d arms on the front; "
            "offline choice %s (accuracy %.3f, cost %.3g USD)",
            self.n_rows,
            len(self.front),
            chosen.arm.label(),
            chosen.accuracy,
            chosen.cost_usd,
        )

    def pull(self) -> tuple[int, Arm]:
        if self.bandit is None:
            raise RuntimeError("still validating")
        index = self.bandit.pull()
        return index, self.bandit.arms[index]

    def update(
        self, index: int, right: float | None, cost_usd: float, extra_usd: float = 0.0
    ) -> None:
        if self.bandit is None:
            raise RuntimeError("still validating")
        self.bandit.update(index, right, cost_usd, extra_usd)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "n_rows": self.n_rows,
            "sum_right": self.sum_right,
            "sum_cost": self.sum_cost,
            "grid": [a.__dict__ for a in self.grid],
            "front": [[f.arm.__dict__, f.cost_usd, f.accuracy] for f in self.front],
            "bandit": self.bandit.state_dict() if self.bandit is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported arms state version {state.get('version')!r}")
        if [Arm(**a) for a in state["grid"]] != self.grid:
            raise ValueError("the snapshot's arms grid differs from the configured one")
        self.n_rows = int(state["n_rows"])
        self.sum_right = [float(x) for x in state["sum_right"]]
        self.sum_cost = [float(x) for x in state["sum_cost"]]
        self.front = [ArmFigures(Arm(**a), float(c), float(r)) for a, c, r in state["front"]]
        self.bandit = (
            bandit_from_state_dict(state["bandit"], self.config.exploration, self.config.dual_step)
            if state["bandit"] is not None
            else None
        )
