"""Cascade routing: the Bayesian estimators, the router's decisions, the
learner's state, and the one engine loop (fixed and learned policies)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_cascade import REQUEST, RIGHT, TESTS, WRONG, ScriptedBackend, _level

from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.benchtools.routebench import Signals, pareto
from streamcascade.cascade import CascadeEngine
from streamcascade.cascade.drivers import RouterDriver
from streamcascade.cascade.online import Labeler
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import LearningConfig, LevelConfig, RouterConfig
from streamcascade.learning.bayes import BayesLogit
from streamcascade.learning.policies import (
    CascadeRouter,
    FixedCascadePolicy,
    Observation,
    RouterSettings,
    RouteState,
)
from streamcascade.learning.router_learner import RouteLearner, state_from_dict, state_to_dict
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest, Feedback


def test_bayes_logit_is_sure_where_it_has_seen_data_and_unsure_elsewhere() -> None:
    model = BayesLogit()
    for _ in range(100):
        model.learn_one({"seen": 1.0}, True)
    mean_seen, var_seen = model.logit({"seen": 1.0})
    mean_new, var_new = model.logit({"new": 1.0})
    assert mean_seen > 2 and mean_new == 0
    assert var_seen < 0.2 < var_new == 1.0
    before = var_seen
    model.widen(0.5)
    assert model.logit({"seen": 1.0})[1] > before  # after drift, less sure
    again = BayesLogit.from_state_dict(json.loads(json.dumps(model.state_dict())))
    assert again.logit({"seen": 1.0}) == model.logit({"seen": 1.0})


def test_bayes_logit_learns_soft_targets() -> None:
    model = BayesLogit()
    for _ in range(2000):
        model.learn_one({"bias": 1.0}, 0.3)
    assert model.predict_one({"bias": 1.0}) == pytest.approx(0.3, abs=0.03)


def _observe(
    router: CascadeRouter, outcomes: dict[int, tuple[bool, bool]], order: list[int]
) -> RouteState:
    """A finished request: `outcomes[m]` = (passes its tests, right)."""
    state = RouteState({})
    for m in order:
        passes, _ = outcomes[m]
        state.add(Observation(m, True, 1.0 if passes else 0.0, 1, 60, 0.01 * (m + 1) ** 2), {})
    top = max(outcomes)
    labels = {m: right for m, (_, right) in outcomes.items() if m != top}
    router.observe(state, labels)
    return state


def test_the_router_learns_to_skip_a_level_that_never_helps() -> None:
    # Level 0 always fails its tests; level 1 passes and is right 90 % of the time.
    router = CascadeRouter(RouterSettings(n_levels=3, explore_floor=0.0, seed=0))
    rng = random.Random(0)
    costs = [0.01, 0.02, 0.2]
    for _ in range(200):
        right = rng.random() < 0.9
        _observe(router, {0: (False, False), 1: (True, right), 2: (True, True)}, [0, 1, 2])
    first = router.decide(RouteState({}), mu=1.5, cost_usd=costs, explore=False)
    assert first == 1
    state = RouteState({})
    state.add(Observation(1, True, 1.0, 1, 60, 0.02), {})
    assert router.decide(state, mu=1.5, cost_usd=costs, explore=False) is None
    assert router.answer(state) == 1


def test_the_router_trusts_agreement_between_cheap_levels() -> None:
    # A passing level-1 answer is right exactly when level 0's answer agrees with it.
    router = CascadeRouter(RouterSettings(n_levels=3, explore_floor=0.0, seed=0))
    for i in range(300):
        same = i % 2 == 0
        state = RouteState({})
        state.add(Observation(0, True, 1.0, 1, 60, 0.01), {})
        state.add(Observation(1, True, 1.0, 1, 60, 0.02), {0: same})
        state.add(Observation(2, True, 1.0, 1, 60, 0.2), {0: same, 1: True})
        router.observe(state, {0: same, 1: same})
    agreeing, disagreeing = RouteState({}), RouteState({})
    for state, same in ((agreeing, True), (disagreeing, False)):
        state.add(Observation(0, True, 1.0, 1, 60, 0.01), {})
        state.add(Observation(1, True, 1.0, 1, 60, 0.02), {0: same})
    assert router.quality_of(agreeing, 1) > 0.9 > 0.3 > router.quality_of(disagreeing, 1)
    costs = [0.01, 0.02, 0.2]
    assert router.decide(agreeing, mu=1.0, cost_usd=costs, explore=False) is None
    assert router.decide(disagreeing, mu=1.0, cost_usd=costs, explore=False) == 2


def test_fixed_policy_in_the_loop_answers_as_the_fixed_engine(sandbox: Sandbox) -> None:
    def levels() -> list:
        small = ScriptedBackend("small", [WRONG], [TESTS])
        big = ScriptedBackend("big", [RIGHT], [])
        return [
            _level(1, small, sandbox, t_test_generations=1),
            _level(2, big, sandbox, threshold=0.0),
        ]

    fixed = CascadeEngine(levels()).process_one(REQUEST)
    looped = RoutedCascadeEngine(levels()).process_one(REQUEST)
    assert (looped.level, looped.code, looped.cost_usd) == (fixed.level, fixed.code, fixed.cost_usd)
    assert [a.accepted for a in looped.attempts] == [a.accepted for a in fixed.attempts]
    assert [a.score for a in looped.attempts] == [a.score for a in fixed.attempts]


def _level_configs(n: int) -> list[LevelConfig]:
    return [
        LevelConfig(
            name=f"l{i}",
            backend=ReplayBackendConfig(format="ladder", path="unused.jsonl"),
            t_test_generations=0,
            price_in_usd_per_1m=10.0**i,
        )
        for i in range(n)
    ]


def test_the_learning_loop_labels_by_imitation_and_learns_feedback(sandbox: Sandbox) -> None:
    small = ScriptedBackend("small", [WRONG], [])
    big = ScriptedBackend("big", [RIGHT], [])
    levels = [_level(1, small, sandbox, t_test_generations=0),
              _level(2, big, sandbox, threshold=0.0, price_in_usd_per_1m=20.0)]  # fmt: skip
    # A weak prior: twelve requests must be enough to learn from.
    learning = LearningConfig(
        enabled=True, router=RouterConfig(explore_floor=0.0, prior_precision=1.0)
    )
    learner = RouteLearner(learning, [level.config for level in levels])
    engine = RoutedCascadeEngine(levels, RouterDriver(learner, Labeler(sandbox, "imitation")))
    requests = [
        CodeRequest(id=f"r{i}", prompt=REQUEST.prompt, entry_point="double",
                    visible_tests=["assert double(2) == 4"])
        for i in range(12)
    ]  # fmt: skip
    answers = [engine.process_one(r) for r in requests]
    # double(2) == 4 holds for x + 2 too: the small level passes its test and is
    # wrong. Whenever the big level ran, it labelled the small one wrong.
    assert all(a.attempts[-1].accepted and not any(x.accepted for x in a.attempts[:-1])
               for a in answers)  # fmt: skip
    events = learner.take_events()
    assert len(events) == 12 and learner.n_requests == 12
    labelled = [e for e in events if e["labels"]]
    assert labelled and all(e["labels"] == {"0": False} for e in labelled)
    # Once taught, a passing small answer is no longer trusted.
    state = RouteState({})
    state.add(Observation(0, True, 1.0, 1, 40, 1e-4), {})
    assert learner.router.quality_of(state, 0) < 0.5
    # Feedback on a published answer is learned; on an unknown one it is not.
    assert learner.learn_one(Feedback(id="r11", passed=True))
    assert not learner.learn_one(Feedback(id="nope", passed=False))
    assert learner.n_feedback == 2 and learner.n_feedback_unmatched == 1


def test_route_learner_state_round_trips_and_then_decides_identically() -> None:
    learning = LearningConfig(enabled=True, budget_top_share=0.3)
    learner = RouteLearner(learning, _level_configs(3))
    rng = random.Random(3)
    for i in range(60):
        state = learner.begin(CodeRequest(id=f"r{i}", prompt="def f(x):\n    pass\n",
                                          entry_point="f"))  # fmt: skip
        while (m := learner.decide(state, learner.mu, learner.expected_costs())) is not None:
            state.add(Observation(m, True, float(rng.random() < 0.7), 1, 50, 1e-5 * 10**m),
                      {k: rng.random() < 0.8 for k in state.ran})  # fmt: skip
        learner.finish(f"r{i}", state, {0: rng.random() < 0.6}, learner.answer(state))
    saved = json.loads(json.dumps(learner.state_dict()))
    again = RouteLearner(learning, _level_configs(3))
    again.load_state_dict(saved)
    assert again.state_dict() == learner.state_dict()
    assert again.mu == learner.mu and again.top_surcharge != 1.0  # the budget moved it
    probe = RouteState({})
    probe.add(Observation(0, True, 1.0, 1, 50, 1e-5), {})
    decisions = [learner.decide(probe, learner.mu, learner.expected_costs()) for _ in range(20)]
    probe.forced = False
    replayed = [again.decide(probe, again.mu, again.expected_costs()) for _ in range(20)]
    assert decisions == replayed
    with pytest.raises(ValueError, match="levels"):
        RouteLearner(learning, _level_configs(2)).load_state_dict(saved)
    route = learner.begin(CodeRequest(id="x", prompt="def f():\n    pass\n", entry_point="f"))
    route.add(Observation(0, True, 1.0, 2, 10, 0.1), {})
    route.add(Observation(1, False, 0.0, 2, 0, 0.2), {0: None})
    assert state_to_dict(state_from_dict(state_to_dict(route))) == state_to_dict(route)


def test_a_learning_event_teaches_a_replica_as_it_taught_the_source() -> None:
    learning = LearningConfig(enabled=True)
    source, replica = (RouteLearner(learning, _level_configs(2)) for _ in range(2))
    for i in range(20):
        state = RouteState({})
        state.add(Observation(0, True, 1.0, 1, 50, 1e-5), {})
        state.add(Observation(1, True, 1.0, 1, 50, 1e-4), {0: i % 2 == 0})
        source.finish(f"r{i}", state, {0: i % 2 == 0}, 1)
    for event in json.loads(json.dumps(source.take_events())):
        replica.apply_event(event)
    assert replica.router.state_dict()["quality"] == source.router.state_dict()["quality"]
    with pytest.raises(ValueError, match="unsupported"):
        replica.apply_event({"version": 1, "kind": "hedge"})


def test_fixed_policy_stops_at_the_first_accepting_level() -> None:
    policy = FixedCascadePolicy([1.0, 1.0, 0.0])
    state = RouteState({})
    assert policy.decide(state, 0.0, [0, 0, 0]) == 0
    state.add(Observation(0, False, 0.0, 1, 0, 0.1), {})
    assert policy.decide(state, 0.0, [0, 0, 0]) == 1
    state.add(Observation(1, True, 1.0, 1, 30, 0.1), {})
    assert policy.decide(state, 0.0, [0, 0, 0]) is None and policy.answer(state) == 1


def test_pass_fail_rules_are_every_deterministic_policy() -> None:
    from streamcascade.benchtools.routebench import all_rules

    # Two levels: run the top; or run level 0 and then stop or go up, on each outcome.
    assert sorted(map(str, all_rules(2))) == sorted(
        map(str, [(1, None, None), (0, None, None), (0, None, (1, None, None)),
                  (0, (1, None, None), None), (0, (1, None, None), (1, None, None))])
    )  # fmt: skip
    assert len(all_rules(3)) == 73


def _rule_loss(rule: Any, task: Signals, mu: float) -> float:
    """A pass/fail rule's loss on one task (the rule answers with its most
    capable passing level, else its last)."""
    node, cost, ran, passing = rule, 0.0, [], []
    while node is not None:
        m, if_pass, if_fail = node
        cost += task.cost_usd[m]
        ran.append(m)
        passing += [m] if task.passes[m] else []
        node = if_pass if task.passes[m] else if_fail
    answer = max(passing) if passing else max(ran)
    return float(not task.right[answer]) + mu * cost


def test_the_ceiling_is_exact_where_it_can_be_worked_out_by_hand() -> None:
    from streamcascade.benchtools.routebench import hindsight_best

    # Level 0 is right exactly when it passes; the top is always right.
    tasks = [
        Signals((passes, True), {(0, 1): passes}, (passes, True), (1.0, 10.0))
        for passes in (True, False, True, False)
    ]
    # Cheap enough: run level 0, go up when it fails. 0 wrong, cost 4 + 2 x 10.
    assert hindsight_best(tasks, mu=0.01) == pytest.approx((0.24, 0, 24.0))
    # Too dear to go up: level 0 alone, 2 wrong.
    assert hindsight_best(tasks, mu=1.0) == pytest.approx((6.0, 2, 4.0))


def test_the_ceiling_is_at_least_as_good_as_every_pass_fail_rule() -> None:
    from streamcascade.benchtools.routebench import all_rules, hindsight_best

    rng = random.Random(3)
    for n_levels in (2, 3):
        tasks = []
        for _ in range(40):
            right = tuple(rng.random() < 0.5 + 0.1 * m for m in range(n_levels))
            passes = tuple(r if rng.random() < 0.8 else not r for r in right)
            agree: dict[tuple[int, int], bool | None] = {
                (i, j): rng.random() < 0.5 for i in range(n_levels) for j in range(i + 1, n_levels)
            }
            cost = tuple(rng.uniform(0.5, 1.5) * 3**m for m in range(n_levels))
            tasks.append(Signals(passes, agree, right, cost))
        for mu in (0.01, 0.1, 1.0):
            best_rule = min(
                sum(_rule_loss(rule, t, mu) for t in tasks) for rule in all_rules(n_levels)
            )
            ceiling, wrong, cost_usd = hindsight_best(tasks, mu)
            assert ceiling <= best_rule + 1e-9
            assert ceiling == pytest.approx(wrong + mu * cost_usd)


def test_recovery_counts_requests_until_the_loss_stays_within_five_percent() -> None:
    from streamcascade.benchtools.routebench import recovery_requests

    best = [1.0] * 10
    assert recovery_requests([1.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], best, 0) == 2
    assert recovery_requests([2.0] * 10, best, 0) is None
    assert recovery_requests([1.0] * 10, best, 0) == 1


def test_a_snapshot_of_the_other_policy_is_refused_before_anything_changes() -> None:
    from streamcascade.learning.learner import CascadeLearner
    from streamcascade.learning.snapshots import SnapshotMismatch

    hedge = CascadeLearner(LearningConfig(enabled=True, policy="hedge"), 2)
    router = RouteLearner(LearningConfig(enabled=True), _level_configs(2))
    before = router.state_dict()
    with pytest.raises(SnapshotMismatch, match="'hedge' policy's"):
        router.load_state_dict(hedge.state_dict())
    assert router.state_dict() == before
    with pytest.raises(SnapshotMismatch, match="'route' policy's"):
        hedge.load_state_dict(router.state_dict())


def test_a_switched_level_answers_with_the_other_model_in_both_engines(sandbox: Sandbox) -> None:
    from streamcascade.benchtools.learnbench import SwitchLevel

    before = _level(2, ScriptedBackend("mid", [RIGHT], []), sandbox, t_test_generations=0)
    after = _level(
        0, ScriptedBackend("small", [WRONG], []), sandbox, t_test_generations=0,
        price_in_usd_per_1m=0.1, price_out_usd_per_1m=0.1,
    )  # fmt: skip
    switch = SwitchLevel(before, after)
    assert "2 * x" in switch.step([REQUEST])[0].code and "2 * x" in switch.attempt(REQUEST).code
    switch.switched = True  # the drift run's change: step (routed engine) and attempt (Hedge)
    assert "x + 2" in switch.step([REQUEST])[0].code and "x + 2" in switch.attempt(REQUEST).code
    # A silent swap behind the same name and price: billed as the level it replaces.
    attempt = switch.step([REQUEST])[0].attempt
    assert (attempt.level, attempt.model) == (2, "mid")
    assert attempt.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert after.step([REQUEST])[0].attempt.cost_usd == pytest.approx((100 + 10) * 0.1 / 1e6)


def test_the_rules_pareto_front_lists_each_pass_rate_once() -> None:
    # 130/164 as a percentage and back is not 130/164 in floating point: the
    # front once listed one pass rate at every dearer cost.
    right = 130 / 164
    figures = [(right, 0.20), (right, 0.21), (right, 0.22), (0.5, 0.01), (0.9, 0.5), (0.4, 0.3)]
    assert pareto(figures, 1.0) == [(50.0, 1.0), (100 * right, 20.0), (90.0, 50.0)]


def test_every_router_setting_of_the_config_reaches_the_router() -> None:
    router = RouterConfig(answer_margin=0.2, explore_floor=0.1, ex_ante_scale=0.5)
    learner = RouteLearner(LearningConfig(enabled=True, router=router), _level_configs(2))
    settings = learner.router.settings
    assert (settings.answer_margin, settings.explore_floor, settings.ex_ante_scale) == (
        0.2,
        0.1,
        0.5,
    )


def _duplicated_ladder(router: CascadeRouter, n: int = 300) -> None:
    """Level 1 serves level 0's answers (so it always agrees with them); the top
    is always right."""
    rng = random.Random(1)
    for _ in range(n):
        passes = rng.random() < 0.5
        right = passes and rng.random() < 0.8
        state = RouteState({})
        state.add(Observation(0, True, float(passes), 1, 60, 0.01), {})
        state.add(Observation(1, True, float(passes), 1, 60, 0.05), {0: True})
        state.add(Observation(2, True, 1.0, 1, 60, 0.2), {0: right, 1: right})
        router.observe(state, {0: right, 1: right})


def test_a_model_that_only_repeats_one_that_ran_stops_being_worth_running() -> None:
    from streamcascade.learning.policies import value_features

    router = CascadeRouter(RouterSettings(n_levels=3, explore_floor=0.0, seed=0))
    _duplicated_ladder(router)
    nothing = RouteState({})
    # Alone, level 1 is as good as level 0: running it first is worth as much.
    alone = router.gain_of(1, value_features(nothing, [], 0.0))
    assert alone == pytest.approx(router.gain_of(0, value_features(nothing, [], 0.0)), abs=0.05)
    assert alone > 0.2
    costs = [0.01, 0.05, 0.2]
    for passes in (True, False):
        ran = RouteState({})
        ran.add(Observation(0, True, float(passes), 1, 60, 0.01), {})
        x = value_features(ran, ran.ran, 0.0)
        # Once level 0 ran, level 1 adds nothing, and the router is sure of it.
        assert abs(router.gain_of(1, x)) < 0.05
        # Level 0, run first, is as uncertain as a right-or-wrong answer is.
        assert router.spread_of(1, x) < 0.02
        assert router.spread_of(0, value_features(nothing, [], 0.0)) > 0.1
        values = router.plan_values(ran, router.quality_of(ran, 0), 1.0, costs)
        # Running it, then stopping or calling the top, is worth less than
        # stopping or calling the top now.
        assert values[(1,)] < max(values[()], values[(2,)])
        assert router.decide(ran, 1.0, costs, explore=False) != 1


def test_a_level_joins_below_the_top_and_the_rest_is_kept() -> None:
    router = CascadeRouter(RouterSettings(n_levels=3, explore_floor=0.0, seed=0))
    _duplicated_ladder(router, 100)
    before = json.loads(json.dumps(router.state_dict()))
    router.insert_level(1)
    assert router.settings.n_levels == 4 and router.top == 3
    after = router.state_dict()
    # The old levels' estimators moved with them, their features renumbered.
    assert after["quality"][0]["mean"]["o2.Pa"] == before["quality"][0]["mean"]["o1.Pa"]
    assert after["quality"][3] == before["quality"][2] | {"mean": after["quality"][3]["mean"]}
    assert after["gain"][2]["mean"]["o0.P"] == before["gain"][1]["mean"]["o0.P"]
    assert after["spread"][2] == before["spread"][1] and after["spread_in"][1] == {}
    # The newcomer knows nothing: its estimators are the priors.
    assert after["quality"][1]["mean"] == {} and after["gain"][1]["mean"] == {}
    state = RouteState({})
    state.add(Observation(0, True, 1.0, 1, 60, 0.01), {})
    values = router.plan_values(state, router.quality_of(state, 0), 1.0, [0.01, 0.02, 0.05, 0.2])
    assert set(values) == {(), (1,), (2,), (3,)}
    with pytest.raises(ValueError, match="below the top"):
        router.insert_level(4)


def test_a_snapshot_of_a_shorter_ladder_restores_with_the_newcomer_cold() -> None:
    from streamcascade.learning.snapshots import SnapshotMismatch

    def configs(*names: str) -> list[LevelConfig]:
        return [c.model_copy(update={"name": name})
                for c, name in zip(_level_configs(len(names)), names, strict=True)]  # fmt: skip

    learning = LearningConfig(enabled=True)
    old = RouteLearner(learning, configs("small", "big"))
    rng = random.Random(2)
    for i in range(40):
        state = old.begin(CodeRequest(id=f"r{i}", prompt="def f(x):\n    pass\n", entry_point="f"))
        while (m := old.decide(state, old.mu, old.expected_costs())) is not None:
            state.add(Observation(m, True, float(rng.random() < 0.7), 1, 50, 1e-5 * 10**m),
                      {k: rng.random() < 0.8 for k in state.ran})  # fmt: skip
        old.finish(f"r{i}", state, {0: rng.random() < 0.6}, old.answer(state))
    saved = json.loads(json.dumps(old.state_dict()))
    grown = RouteLearner(learning, configs("small", "mid", "big"))
    grown.load_state_dict(saved)
    assert grown.router.settings.n_levels == 3 and len(grown.costs) == len(grown.drift) == 3
    assert grown.costs[0].value == old.costs[0].value and grown.costs[2].value == old.costs[1].value
    assert grown.router.state_dict()["quality"][2] == old.router.state_dict()["quality"][1]
    assert grown.n_requests == 40
    state = grown.begin(CodeRequest(id="x", prompt="def f(x):\n    pass\n", entry_point="f"))
    grown.decide(state, grown.mu, grown.expected_costs())  # every plan has a value
    for names in (("big", "small"), ("small", "big", "bigger"), ("small",)):
        with pytest.raises(SnapshotMismatch, match="levels"):
            RouteLearner(learning, configs(*names)).load_state_dict(saved)


def test_feedback_counts_by_how_often_it_agrees_with_the_routers_own_verdicts() -> None:
    """Lying Feedback is bounded: Feedback that contradicts what the router saw
    (labels, pass bits) earns less weight, and a coin's worth earns none."""
    learning = LearningConfig(enabled=True, router=RouterConfig(explore_floor=0.0))

    def fed(lie_share: float, seed: int) -> RouteLearner:
        learner = RouteLearner(learning, _level_configs(2))
        rng = random.Random(seed)
        for i in range(300):
            state = learner.begin(CodeRequest(id=f"r{i}", prompt="def f(x):\n    pass\n",
                                              entry_point="f"))  # fmt: skip
            passed = rng.random() < 0.7
            state.add(Observation(0, True, float(passed), 1, 50, 1e-5), {})
            learner.finish(f"r{i}", state, {}, 0)
            lies = rng.random() < lie_share
            learner.learn_one(Feedback(id=f"r{i}", passed=passed != lies))
        return learner

    honest, liar, coin = fed(0.0, 1), fed(0.2, 1), fed(0.5, 1)
    assert honest.feedback_weight() == 1.0
    assert 0.5 < liar.feedback_weight() < 0.9
    assert coin.feedback_weight() < 0.15
    probe = RouteState({})
    probe.add(Observation(0, True, 1.0, 1, 50, 1e-5), {})
    # Honest Feedback taught the router that passing answers are right; a coin's
    # worth of it taught it little.
    assert honest.router.quality_of(probe, 0) > coin.router.quality_of(probe, 0)
    assert honest.gauges()["feedback_weight"] == 1.0
    again = RouteLearner(learning, _level_configs(2))
    again.load_state_dict(json.loads(json.dumps(liar.state_dict())))
    assert again.feedback_weight() == liar.feedback_weight()


def test_a_top_share_budget_holds_when_the_top_is_the_cheapest_level() -> None:
    """Prices move: the top becomes cheaper than the level below it. A share
    budget steered on mu would then send more requests up; steered on the
    top's own cost, it holds."""
    learning = LearningConfig(enabled=True, budget_top_share=0.3)
    learner = RouteLearner(learning, _level_configs(2))
    rng = random.Random(5)
    reached = []
    for i in range(800):
        state = learner.begin(CodeRequest(id=f"r{i}", prompt="def f(x):\n    pass\n",
                                          entry_point="f"))  # fmt: skip
        while (m := learner.decide(state, learner.mu, learner.expected_costs())) is not None:
            cost = 1e-3 if m == 0 else 1e-4  # the top is ten times cheaper
            state.add(Observation(m, True, float(rng.random() < 0.6), 1, 50, cost), {})
        learner.finish(f"r{i}", state, {}, learner.answer(state))
        reached.append(1 in state.ran)
    share = sum(reached[-400:]) / 400
    assert abs(share - 0.3) < 0.05, share


def test_a_version_1_snapshot_restores_its_quality_estimates_with_the_gains_at_the_prior() -> None:
    learning = LearningConfig(enabled=True)
    learner = RouteLearner(learning, _level_configs(3))
    for i in range(30):
        state = RouteState({})
        state.add(Observation(0, True, float(i % 2), 1, 50, 1e-5), {})
        state.add(Observation(2, True, 1.0, 1, 50, 1e-3), {0: i % 2 == 1})
        learner.finish(f"r{i}", state, {0: i % 2 == 1}, 2)
    v2 = json.loads(json.dumps(learner.state_dict()))
    # What a version-1 snapshot held: ex-ante "value" estimators, no gains.
    router = {k: v for k, v in v2["router"].items() if k not in ("gain", "spread_in")}
    router["value"] = v2["router"]["gain"]
    v1 = {k: v for k, v in v2.items() if k not in ("levels", "top_surcharge",
                                                    "feedback_agreement")}  # fmt: skip
    v1 |= {"version": 1, "router": router}
    again = RouteLearner(learning, _level_configs(3))
    again.load_state_dict(v1)
    restored = again.state_dict()
    assert restored["router"]["quality"] == v2["router"]["quality"]
    assert restored["costs"] == v2["costs"] and again.n_requests == 30
    assert restored["router"]["gain"] == RouteLearner(learning, _level_configs(3)).state_dict()[
        "router"]["gain"]  # fmt: skip
