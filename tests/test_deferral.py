from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from streamcascade.learning import HedgeThresholdPolicy


def _adversarial_round(t: int, rng: random.Random) -> tuple[float, bool, float]:
    """A score, whether accepting would be wrong, and the cost of deferring. The
    regime flips every 50 rounds between "scores mean nothing" and "high scores
    are right", against a learner that chases the last regime."""
    score = rng.random()
    noisy_regime = (t // 50) % 2 == 0
    wrong = rng.random() < 0.5 if noisy_regime else score < 0.6
    return score, wrong, rng.choice([0.2, 0.4, 0.6])


def test_regret_stays_under_the_hedge_bound_with_full_information() -> None:
    horizon = 2000
    policy = HedgeThresholdPolicy(mu=1.0, horizon=horizon, seed=1)
    rng = random.Random(7)
    learner_loss = 0.0
    expert_totals = [0.0] * len(policy.thresholds)
    for t in range(horizon):
        score, wrong, cost = _adversarial_round(t, rng)
        losses = policy.expert_losses(score, wrong, cost, weight=1.0)
        # Expected loss of the randomized learner: its mixture over experts.
        learner_loss += sum(
            p * loss for p, loss in zip(policy.probabilities(), losses, strict=True)
        )
        for i, loss in enumerate(losses):
            expert_totals[i] += loss
        policy.update(score, wrong, cost, observed=True, p_observed=1.0)
    regret = learner_loss - min(expert_totals)
    bound = math.sqrt(horizon * math.log(len(policy.thresholds)) / 2)
    assert regret <= bound, (regret, bound)
    assert regret > -bound  # sanity: the learner is not magically better than every expert by a lot


def test_importance_weighted_losses_are_unbiased() -> None:
    policy = HedgeThresholdPolicy(mu=1.0)
    p_observed = 0.25
    rng = random.Random(3)
    estimates = []
    for _ in range(20000):
        observed = rng.random() < p_observed
        estimates.append(
            policy.expert_losses(
                0.9, True if observed else None, 0.3, 1 / p_observed if observed else 0.0
            )[0]
        )
    # Expert 0 (threshold 0) accepts; its true loss is 1 (the answer is wrong).
    assert abs(sum(estimates) / len(estimates) - 1.0) < 0.05


def test_learns_the_right_threshold_under_partial_feedback() -> None:
    """Answers scoring >= 0.7 are right, the rest wrong; deferring costs 0.3.
    Labels arrive only when the level defers (the next level grades it)."""
    policy = HedgeThresholdPolicy(mu=1.0, seed=5)
    rng = random.Random(11)
    for _ in range(3000):
        score = rng.random()
        decision = policy.decide(score)
        wrong = score < 0.7
        observed = not decision.accept
        p_observed = 1 - policy.p_accept(score) * (1 - decision.p_explore)
        policy.update(score, wrong, 0.3, observed=observed, p_observed=p_observed)
    best = policy.thresholds[
        max(range(len(policy.thresholds)), key=lambda i: policy.log_weights[i])
    ]
    assert best == pytest.approx(0.7)


def test_exploration_decays_with_updates_to_its_floor() -> None:
    policy = HedgeThresholdPolicy(mu=1.0, explore_initial=0.5, explore_min=0.02)
    assert policy.p_explore() == 0.5
    values = []
    for _ in range(3000):
        policy.update(0.5, False, 0.1, observed=True, p_observed=1.0)
        values.append(policy.p_explore())
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[99] == pytest.approx(0.5 / math.sqrt(101))
    assert values[-1] == 0.02


def test_forced_exploration_defers_only_acceptable_answers() -> None:
    policy = HedgeThresholdPolicy(
        mu=1.0, thresholds=[0.5], explore_initial=1.0, explore_min=1.0, seed=2
    )
    decision = policy.decide(1.0)
    assert decision.would_accept and decision.explored and not decision.accept
    low = policy.decide(-1.0)
    assert not low.would_accept and not low.explored


def test_state_round_trips_exactly_through_json() -> None:
    policy = HedgeThresholdPolicy(mu=2.0, seed=9)
    rng = random.Random(4)
    for _ in range(50):
        policy.update(rng.random(), rng.random() < 0.3, 0.2, observed=True, p_observed=0.5)
    restored = HedgeThresholdPolicy.from_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.state_dict() == json.loads(json.dumps(policy.state_dict()))
    assert [restored.decide(s) for s in (0.1, 0.5, 0.9)] == [
        policy.decide(s) for s in (0.1, 0.5, 0.9)
    ]
    with pytest.raises(ValueError, match="version"):
        HedgeThresholdPolicy.from_state_dict({"version": 99})


def test_drift_restart_raises_exploration_and_unsettles_the_weights() -> None:
    policy = HedgeThresholdPolicy(mu=1.0, explore_initial=0.5, explore_min=0.02)
    for _ in range(400):
        policy.update(0.95, True, 0.1, observed=True, p_observed=1.0)  # accepting is wrong
    settled_explore = policy.p_explore()
    settled_top = max(policy.probabilities())
    policy.restart_exploration(share=0.5)
    assert policy.p_explore() == 0.5 > settled_explore
    assert max(policy.probabilities()) < settled_top
    assert policy.n_restarts == 1 and policy.n_updates == 400
