"""The budget heuristic: Pareto front, choice for a budget, and the budgeted bandit."""

from __future__ import annotations

import json
import random

import pytest
from test_cascade import RIGHT, TESTS, WRONG, ScriptedBackend, _level

from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.config import AppConfig, BudgetArmsConfig, LearningConfig
from streamcascade.learning.budget import (
    Arm,
    ArmFigures,
    BudgetedBandit,
    bandit_from_state_dict,
    choose_for_budget,
    pareto_front,
)
from streamcascade.learning.learner import CascadeLearner
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest


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


def test_bandit_estimates_rightness_without_bias_from_sampled_labels() -> None:
    bandit = BudgetedBandit([_fig(1, 1.0, 0.0)], budget_usd=1.0, prior_weight=1)
    rng = random.Random(1)
    for _ in range(20_000):
        right = rng.random() < 0.7
        seen = rng.random() < 0.2  # a label for one answer in five
        bandit.update(0, float(right) / 0.2 if seen else 0.0, 1.0)
    assert abs(bandit.right[0] / bandit.n_right[0] - 0.7) < 0.03
    bandit.update(0, None, 1.0)  # a round with no label says nothing of rightness
    assert bandit.pulls[0] == bandit.n_right[0] + 1


# -- in service ---------------------------------------------------------------------

ARMS = BudgetArmsConfig(
    enabled=True,
    # Labels for one accepted answer in five cost a fifth of the top level's
    # 0.01 USD: the budget must cover them.
    budget_usd_per_request=3e-3,
    validation_requests=4,
    k_grid=[1, 2],
    t_grid=[0, 1],
    l_grid=[1, 3],
    thresholds=[1.0],
    label_share=0.2,
)


def _double(i: int) -> CodeRequest:
    return CodeRequest(
        id=f"b{i}",
        prompt='def double(x):\n    """Twice x."""\n',
        entry_point="double",
        visible_tests=["assert double(2) == 4"],
    )


def test_a_sweep_reads_every_smaller_shape_as_its_own_attempt(sandbox: Sandbox) -> None:
    more_tests = "```python\nassert double(5) == 10\nassert double(1) == 2\n```"
    backend = ScriptedBackend("small", [WRONG, RIGHT], [TESTS, more_tests])
    level = _level(1, backend, sandbox)
    shapes = [(k, t, lines) for k in (1, 2) for t in (0, 1, 2) for lines in (1, 2)]
    swept = level.sweep(_double(0), (), shapes)
    assert len(backend.prompts) == 2  # one solution pass and one test pass for all shapes
    for k, t, lines in shapes:
        alone = level.attempt(_double(0), (), (k, t, lines), 1.0)
        outcome = swept[(k, t, lines)]
        assert outcome.code == alone.code and outcome.tests == alone.tests
        for field in ("score", "n_solutions", "n_tests", "tokens_in", "tokens_out", "cost_usd"):
            assert getattr(outcome.attempt, field) == getattr(alone.attempt, field), field
        assert outcome.attempt.tests == alone.attempt.tests
    # One solution passes the visible test; a second, with tests, shows it was wrong.
    assert swept[(1, 0, 1)].code.strip().endswith("x + 2") and swept[(1, 0, 1)].attempt.score == 1.0
    assert swept[(2, 1, 2)].code.strip().endswith("2 * x") and swept[(2, 1, 2)].attempt.score == 1.0


def _arms_engine(sandbox: Sandbox, arms: BudgetArmsConfig) -> OnlineCascadeEngine:
    small = ScriptedBackend("small", [WRONG, RIGHT], [TESTS])
    big = ScriptedBackend("big", [RIGHT], [])
    levels = [
        _level(1, small, sandbox),
        _level(2, big, sandbox, t_test_generations=0, price_in_usd_per_1m=100.0),
    ]
    config = LearningConfig(enabled=True, level0=False, arms=arms, seed=3)
    return OnlineCascadeEngine(levels, CascadeLearner(config, 2), Labeler(sandbox, "imitation"))


def test_the_service_validates_every_arm_then_plays_what_the_budget_affords(
    sandbox: Sandbox,
) -> None:
    engine = _arms_engine(sandbox, ARMS)
    arms = engine.learner.arms
    assert arms is not None and arms.validating
    answers = [engine.process_one(_double(i)) for i in range(30)]
    # Validation: the widest shape ran once and every request went up for labels.
    for answer in answers[:4]:
        assert answer.level == 2 and answer.attempts[0].n_solutions == 2
    assert not arms.validating and arms.n_rows == 4
    figures = {f.arm: f for f in arms.figures()}
    # One solution and no tests: it passes the visible test and is wrong.
    assert figures[Arm(1, 0, 1, 1.0)].accuracy == 0.0
    # Two solutions and generated tests: the right one wins, at level 1's cost.
    best = figures[Arm(2, 1, 3, 1.0)]
    assert best.accuracy == 1.0 and best.cost_usd < 1e-3
    # L=1 already catches the wrong solution, at the same cost as L=3.
    assert [f.arm for f in arms.front] == [Arm(1, 0, 1, 1.0), Arm(2, 1, 1, 1.0)]
    # Then the bandit plays the affordable right arm: level 1 answers, right.
    played = answers[4:]
    assert sum(a.level == 1 and a.code.strip().endswith("2 * x") for a in played) >= 20
    assert arms.bandit is not None
    assert arms.bandit.spent_usd / arms.bandit.t <= ARMS.budget_usd_per_request
    labelled = [a for a in played if a.explored_levels]
    assert labelled and all(a.level == 1 and len(a.attempts) == 2 for a in labelled)


def test_a_tight_budget_keeps_the_cheap_arm(sandbox: Sandbox) -> None:
    tight = ARMS.model_copy(update={"budget_usd_per_request": 1.25e-4, "label_share": 0.01})
    engine = _arms_engine(sandbox, tight)
    answers = [engine.process_one(_double(i)) for i in range(24)]
    assert sum(a.attempts[0].n_solutions == 1 for a in answers[4:]) >= 14


def test_arms_state_round_trips_through_a_snapshot(sandbox: Sandbox) -> None:
    engine = _arms_engine(sandbox, ARMS)
    for i in range(8):
        engine.process_one(_double(i))
    state = json.loads(json.dumps(engine.learner.state_dict()))
    clone = CascadeLearner(engine.learner.config, 2)
    clone.load_state_dict(state)
    assert clone.state_dict() == engine.learner.state_dict()
    assert clone.arms is not None and engine.learner.arms is not None
    assert clone.arms.pull() == engine.learner.arms.pull()
    other = ARMS.model_copy(update={"k_grid": [1, 3]})
    with pytest.raises(ValueError, match="grid"):
        CascadeLearner(LearningConfig(enabled=True, arms=other), 2).load_state_dict(state)


def test_arms_config_names_a_level_below_the_top() -> None:
    level = {"name": "a", "backend": {"kind": "replay", "format": "ladder", "path": "x.jsonl"}}
    with pytest.raises(ValueError, match="below the top"):
        AppConfig.model_validate(
            {"levels": [level], "learning": {"enabled": True, "arms": {"enabled": True}}}
        )
