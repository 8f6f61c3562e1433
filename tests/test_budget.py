"""The budget heuristic: Pareto front, choice for a budget, and the budgeted bandit."""

from __future__ import annotations

import json
import random

from streamcascade.learning.budget import (
    Arm,
    ArmFigures,
    BudgetedBandit,
    bandit_from_state_dict,
    choose_for_budget,
    pareto_front,
)


def _fig(k: int, cost: float, accuracy: float) -> ArmFigures:
    return ArmFigures(Arm(k, 0, 1, 0.0), cost, accuracy)


def test_pareto_front_keeps_only_undominated_arms_cheapest_first() -> None:
    figures = [_fig(1, 1.0, 0.5), _fig(2, 2.0, 0.4), _fig(3, 3.0, 0.8), _fig(4, 3.0, 0.7),
               _fig(5, 0.5, 0.3), _fig(6, 5.0, 0.8)]  # fmt: skip
    front = pareto_front(figures)
    assert [f.arm.k_solutions for f in front] == [5, 1, 3]
    assert choose_for_budget(front, 2.5).arm.k_solutions == 1
    assert choose_for_budget(front, 10).arm.k_solutions == 3
    assert choose_for_budget(front, 0.1).arm.k_solutions == 5  # none fits: the cheapest


def test_bandit_meets_the_budget_between_a_cheap_and_an_expensive_arm() -> None:
    cheap, dear = _fig(1, 1.0, 0.6), _fig(2, 10.0, 0.9)
    budget = 4.0
    bandit = BudgetedBandit([cheap, dear], budget)
    rng = random.Random(0)
    right = 0
    for _ in range(3000):
        index = bandit.pull()
        figure = (cheap, dear)[index]
        was_right = rng.random() < figure.accuracy
        right += was_right
        bandit.update(index, was_right, figure.cost_usd)
    mean_cost = bandit.spent_usd / bandit.t
    # On budget within 10 %, and spending it: better than the cheap arm alone.
    assert 0.8 * budget <= mean_cost <= 1.1 * budget
    assert right / 3000 > 0.65
    clone = bandit_from_state_dict(json.loads(json.dumps(bandit.state_dict())))
    assert clone.state_dict() == bandit.state_dict()
    assert clone.pull() == bandit.pull()


def test_bandit_starts_from_the_offline_choice() -> None:
    front = [_fig(1, 1.0, 0.6), _fig(2, 3.0, 0.7), _fig(3, 10.0, 0.9)]
    bandit = BudgetedBandit(front, budget_usd=3.0, exploration=0.0)
    assert bandit.arms[bandit.pull()] == front[1].arm
