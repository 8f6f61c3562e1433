"""`streamcascade bench --learn --ladder DIR --models SPEC`: the cascade router
against the fixed cascade, the oracle and the best fixed policy in hindsight.

Every level's attempt at every task is computed once (`LadderWorld`) and
graded once on the hidden tests, so any policy's answers are scored exactly.
The router then streams the tasks in several random orders, learning as it
goes, with imitation labels only (the hidden tests grade, never teach), with
reference labels, and with downstream Feedback for a share of the answers.

The ceiling is the best any policy on the router's own signals (pass bits and
agreement on probes) could do on the whole set with hindsight: what no
estimator can beat, however well it learns.

"Fixed policies" are every deterministic rule that picks the next level (or
stops) from the pass/fail results seen so far and answers with the most
capable passing answer: the fixed cascade is one of them. Regret is the
router's cumulative true loss (wrong, plus mu times cost) less the best such
rule's in hindsight, and less the fixed cascade's.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcascade.benchtools.learnbench import (
    LadderLearnReport,
    LadderWorld,
    StreamResult,
    SwitchLevel,
    format_rows,
    orders,
    plot_regret,
    summarise,
)
from streamcascade.cascade.drivers import RouterDriver
from streamcascade.cascade.level import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import LearningConfig
from streamcascade.learning.policies import Observation, RouteState
from streamcascade.learning.router_learner import RouteLearner
from streamcascade.schemas import CodeRequest, Feedback

# Weights of a wrong answer, in top calls, at which the ceiling is reported.
CEILING_CALLS = (1.0, 2.0, 3.3, 5.0, 10.0, 20.0)

# A rule: (level to run, rule if it passes, rule if it fails), or None to stop.
Rule = tuple[int, Any, Any] | None


def all_rules(
    n_levels: int, ran: tuple[tuple[int, bool], ...] = (), limit: int = 20_000
) -> list[Rule]:
    """Every deterministic pass/fail rule (the top, once run, ends it)."""
    seen = {m for m, _ in ran}
    top = n_levels - 1
    if top in seen:
        return [None]
    rules: list[Rule] = [None] if ran else []
    for m in range(n_levels):
        if m in seen:
            continue
        passes = all_rules(n_levels, (*ran, (m, True)), limit)
        fails = all_rules(n_levels, (*ran, (m, False)), limit)
        for p in passes:
            for f in fails:
                rules.append((m, p, f))
                if len(rules) > limit:
                    return rules
    return rules


@dataclass
class RuleOutcome:
    right: bool
    cost_usd: float
    reached_top: bool = False


def play_rule(rule: Rule, world: LadderWorld, request: CodeRequest) -> RuleOutcome:
    node, cost, passing, ran = rule, 0.0, [], []
    while node is not None:
        m, if_pass, if_fail = node
        cost += world.cost[m][request.id]
        ran.append(m)
        passed = world.passes[m][request.id]
        if passed:
            passing.append(m)
        node = if_pass if passed else if_fail
    answer = max(passing) if passing else max(ran)
    return RuleOutcome(world.correct[answer][request.id], cost, len(world.levels) - 1 in ran)


@dataclass
class RouterRun:
    result: StreamResult
    losses: list[float] = field(default_factory=list)
    """The true loss of each request, in stream order."""
    fixed_losses: list[float] = field(default_factory=list)
    trace: list[tuple[CodeRequest, dict[str, Any], dict[int, bool | None]]] = field(
        default_factory=list
    )
    """Each request's route and labels, to time the router alone afterwards."""


class PriorOnly(RouteLearner):
    """The router that never learns: its priors (the fixed rule's beliefs) and
    plan values alone, with no exploration. What learning adds is the rest."""

    def _learn(self, state: RouteState, labels: dict[int, bool | None]) -> None:
        self.n_requests += 1

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None:
        return self.router.decide(state, mu, cost_usd, explore=False)


def router_run(
    world: LadderWorld,
    learning: LearningConfig,
    order: Sequence[CodeRequest],
    name: str,
    mu: float,
    feedback_share: float = 0.0,
    feedback_delay: int = 5,
    seed: int = 0,
    drift: tuple[LadderWorld, Sequence[CodeRequest], SwitchLevel] | None = None,
    learner_class: type[RouteLearner] = RouteLearner,
) -> RouterRun:
    """Stream `order` through a fresh router. With `feedback_share`, that share
    of the answers gets a Feedback record from the hidden tests (as a CI system
    would send) `feedback_delay` requests later. With `drift` (a world whose
    level answers with another's recordings, its stream, and the switch), the
    stream goes on with it after `order`."""
    levels: list[Level] = list(world.levels)
    if drift is not None:
        switch = drift[2]
        levels = [switch if level.index == switch.index else level for level in levels]
    learner = learner_class(learning, [level.config for level in levels])
    engine = RoutedCascadeEngine(levels, RouterDriver(learner, world.labeler(learning)))
    run = RouterRun(StreamResult(name))
    rng = random.Random(seed)
    waiting: deque[tuple[int, Feedback]] = deque()
    top = len(levels) - 1
    phases = [(world, order)] + ([(drift[0], drift[1])] if drift is not None else [])
    index = 0
    for phase, (truth, stream) in enumerate(phases):
        if drift is not None:
            drift[2].switched = phase == 1
            if phase == 1:
                run.result.phase_results.append(run.result.snapshot())
        fixed = truth.fixed_rule()
        for request in stream:
            answer = engine.process_one(request)
            right = truth.correct[answer.level - 1][request.id]
            run.result.add(answer.level, right, answer.cost_usd)
            run.result.n_reached_top += any(a.level == top + 1 for a in answer.attempts)
            run.result.n_explored += bool(answer.explored_levels)
            run.result.n_skipped += bool(answer.skipped_levels)
            run.losses.append(float(not right) + mu * answer.cost_usd)
            baseline = play_rule(fixed, truth, request)
            run.fixed_losses.append(float(not baseline.right) + mu * baseline.cost_usd)
            if learner.last is not None:
                run.trace.append((request, *learner.last))
            if feedback_share and rng.random() < feedback_share:
                feedback = Feedback(id=request.id, passed=right, source="ci")
                waiting.append((index + feedback_delay, feedback))
            while waiting and waiting[0][0] <= index:
                engine.learn_one(waiting.popleft()[1])
            index += 1
    return run


def cumulative_regret(losses: Sequence[float], baseline: Sequence[float]) -> list[float]:
    total, curve = 0.0, []
    for mine, theirs in zip(losses, baseline, strict=True):
        total += mine - theirs
        curve.append(total)
    return curve


def best_rule_losses(
    world: LadderWorld, rules: Sequence[Rule], order: Sequence[CodeRequest], mu: float
) -> list[float]:
    """The per-request losses of the rule with the least total loss on `order`."""
    best: list[float] | None = None
    for rule in rules:
        losses = []
        for request in order:
            outcome = play_rule(rule, world, request)
            losses.append(float(not outcome.right) + mu * outcome.cost_usd)
        if best is None or sum(losses) < sum(best):
            best = losses
    assert best is not None
    return best


def recovery_requests(losses: Sequence[float], best: Sequence[float], start: int,
                      tolerance: float = 0.05) -> int | None:  # fmt: skip
    """Requests after `start` until the router's cumulative loss since then is
    back within `tolerance` (relative) of the best rule's, and stays there."""
    mine = theirs = 0.0
    inside: int | None = None
    for t in range(start, len(losses)):
        mine += losses[t]
        theirs += best[t - start]
        if mine <= (1 + tolerance) * theirs:
            inside = t - start + 1 if inside is None else inside
        else:
            inside = None
    return inside


def rule_figures(rule: Rule, world: LadderWorld) -> tuple[float, float]:
    """A rule's pass@1 and mean cost (USD per request) on the whole task set."""
    outcomes = [play_rule(rule, world, request) for request in world.requests]
    n = len(outcomes)
    return sum(o.right for o in outcomes) / n, sum(o.cost_usd for o in outcomes) / n


def pareto(
    figures: Sequence[tuple[float, float]], top_cost_usd: float
) -> list[tuple[float, float]]:
    """The rules no other rule beats on both pass@1 and cost, as (pass@1 %, cost %
    of the top level alone), cheapest first."""
    front: list[tuple[float, float]] = []
    best = -1.0
    for right, cost in sorted(figures, key=lambda f: (f[1], -f[0])):
        if right > best:  # compared as fractions: a percentage back to a fraction rounds
            best = right
            front.append((100 * right, 100 * cost / top_cost_usd))
    return front


def router_overhead_us(
    learning: LearningConfig, world: LadderWorld, run: RouterRun
) -> dict[str, float]:
    """Median and p99 microseconds per request of the router alone (featurize,
    every decision, learning), replaying a finished run's routes: the levels,
    the sandbox and the labels are already known, so none of them is timed."""
    learner = RouteLearner(learning, [level.config for level in world.levels])
    timings = []
    for request, route, labels in run.trace:
        observations = route["observations"]
        agree = {(i, j): same for i, j, same in route["agree"]}
        started = time.perf_counter()
        state = learner.begin(request)
        for observation in observations:
            if learner.decide(state, learner.mu, learner.expected_costs()) is None:
                break
            position = observation["position"]
            state.add(
                Observation(**observation),
                {i: agree.get((min(i, position), max(i, position))) for i in state.ran},
            )
        learner.finish(request.id, state, labels, learner.answer(state))
        timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "median_us": 1e6 * statistics.median(timings),
        "p99_us": 1e6 * timings[int(0.99 * (len(timings) - 1))],
        "n": float(len(timings)),
    }


def swapped_world(world: LadderWorld, swapped: int, replacement: int) -> LadderWorld:
    """The same world, but the level at `swapped` answers with the recordings of
    the level at `replacement`, at its own prices (`SwitchLevel`, switched):
    its levels, answers, pass bits and costs all say so."""
    other = object.__new__(LadderWorld)
    other.__dict__.update(world.__dict__)
    switch = SwitchLevel(world.levels[swapped], world.levels[replacement], switched=True)
    other.levels = [switch if i == swapped else level for i, level in enumerate(world.levels)]
    other.correct = [dict(c) for c in world.correct]
    other.passes = [dict(p) for p in world.passes]
    other.cost = [dict(c) for c in world.cost]
    other.correct[swapped] = dict(world.correct[replacement])
    other.passes[swapped] = dict(world.passes[replacement])
    other.cost[swapped] = {r.id: switch.step([r])[0].attempt.cost_usd for r in world.requests}
    other.top_cost_usd = sum(other.cost[-1].values())
    return other


@dataclass(frozen=True)
class Signals:
    """What the router can see of one task, for every level: whether its answer
    passes its tests, whether each pair of answers behaves alike on probe
    inputs, and (for grading only) whether each answer is right and its cost."""

    passes: tuple[bool, ...]
    agree: dict[tuple[int, int], bool | None]
    right: tuple[bool, ...]
    cost_usd: tuple[float, ...]


def task_signals(world: LadderWorld, learning: LearningConfig) -> list[Signals]:
    """Every level's pass bit and every pair's agreement, for every task (the
    pairs the router never ran together too: the ceiling needs them all)."""
    labeler = world.labeler(learning)
    n = len(world.levels)
    signals = []
    for request in world.requests:
        outcomes = [level.step([request])[0] for level in world.levels]
        agree = {
            (i, j): labeler.agree(request, outcomes[i], outcomes[j])
            for i in range(n)
            for j in range(i + 1, n)
        }
        signals.append(
            Signals(
                passes=tuple(world.passes[m][request.id] for m in range(n)),
                agree=agree,
                right=tuple(world.correct[m][request.id] for m in range(n)),
                cost_usd=tuple(world.cost[m][request.id] for m in range(n)),
            )
        )
    return signals


def hindsight_best(
    tasks: Sequence[Signals], mu: float, ran: frozenset[int] = frozenset()
) -> tuple[float, int, float]:
    """The least total loss (wrong + mu x cost) any policy can reach on `tasks`
    that decides from what the router sees (pass bits of the levels run so
    far, and whether their answers agree), choosing its steps and its answer
    with hindsight: (loss, wrong answers, cost). Policies see information
    cells, not tasks, so this is a ceiling for every router on these signals,
    not the oracle. Exact, by recursion over the cells."""
    n = len(tasks[0].passes)
    best: tuple[float, int, float] | None = None
    for j in ran:
        wrong = sum(not t.right[j] for t in tasks)
        if best is None or wrong < best[0]:
            best = (float(wrong), wrong, 0.0)
    if n - 1 in ran:
        assert best is not None
        return best
    for m in range(n):
        if m in ran:
            continue
        cells: dict[tuple[bool | None, ...], list[Signals]] = {}
        for t in tasks:
            seen = (t.passes[m], *(t.agree[(min(i, m), max(i, m))] for i in sorted(ran)))
            cells.setdefault(seen, []).append(t)
        cost = sum(t.cost_usd[m] for t in tasks)
        loss, wrong_total, cost_total = mu * cost, 0, cost
        for cell in cells.values():
            cell_loss, cell_wrong, cell_cost = hindsight_best(cell, mu, ran | {m})
            loss, wrong_total, cost_total = (
                loss + cell_loss,
                wrong_total + cell_wrong,
                cost_total + cell_cost,
            )
        if best is None or loss < best[0]:
            best = (loss, wrong_total, cost_total)
    assert best is not None
    return best


def hindsight_front(
    tasks: Sequence[Signals], top_cost_usd: float, top_calls: Sequence[float]
) -> list[tuple[float, float, float]]:
    """`hindsight_best` for each weight of a wrong answer (in top calls): the
    (top calls, pass@1 %, cost % of the top alone) the ceiling reaches."""
    n = len(tasks)
    front = []
    for calls in top_calls:
        mu = n / (calls * top_cost_usd)
        _, wrong, cost = hindsight_best(tasks, mu)
        front.append((calls, 100 * (n - wrong) / n, 100 * cost / top_cost_usd))
    return front


def _rule_row(name: str, world: LadderWorld, rule: Rule) -> dict[str, Any]:
    result = StreamResult(name)
    for request in world.requests:
        outcome = play_rule(rule, world, request)
        result.add(0, outcome.right, outcome.cost_usd)
    return summarise([result], world.top_cost_usd)


def route_learn(
    world: LadderWorld,
    out_dir: Path,
    n_orders: int = 5,
    top_calls: float = 3.3,
    feedback_share: float = 0.2,
    learning: LearningConfig | None = None,
) -> LadderLearnReport:
    """Every table and curve of `bench --learn --ladder`: the router with
    imitation labels, reference labels and downstream Feedback, beside each
    model alone, the fixed cascade, the best pass/fail rule in hindsight, the
    oracle and the Hedge threshold policy; regret curves; a drift run; the
    router's overhead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    top_usd = world.top_cost_usd
    n_levels = len(world.levels)
    mu = 1.0 / (top_calls * world.mean_cost(n_levels - 1))
    base = learning or LearningConfig()
    base = base.model_copy(
        update={
            "enabled": True,
            "policy": "router",
            "router": base.router.model_copy(update={"top_calls_per_wrong_answer": top_calls}),
        }
    )
    rules = all_rules(n_levels)
    figures = [rule_figures(rule, world) for rule in rules]
    hindsight = rules[
        min(range(len(rules)), key=lambda i: (1 - figures[i][0]) + mu * figures[i][1])
    ]
    front = pareto(figures, world.top_cost_usd / len(world.requests))
    rows = [summarise([world.alone(p)], top_usd) for p in reversed(range(n_levels))]
    rows.append(summarise([world.fixed_cascade()], top_usd))
    rows.append(_rule_row("best pass/fail rule in hindsight", world, hindsight))
    signals = task_signals(world, base)
    ceiling = StreamResult("ceiling: best policy on the router's signals")
    _, wrong, ceiling.cost_usd = hindsight_best(signals, mu)
    ceiling.n, ceiling.n_passed = len(signals), len(signals) - wrong
    rows.append(summarise([ceiling], top_usd))
    ceiling_front = hindsight_front(signals, top_usd, CEILING_CALLS)
    rows.append(summarise([world.oracle()], top_usd))
    streams = orders(world.requests, n_orders)
    runs: dict[str, list[RouterRun]] = {}
    variants: list[tuple[str, LearningConfig, float]] = [
        ("router, imitation labels", base.model_copy(update={"labels": "imitation"}), 0.0),
        ("router, reference labels", base.model_copy(update={"labels": "reference"}), 0.0),
        (f"router, imitation + {100 * feedback_share:.0f}% feedback",
         base.model_copy(update={"labels": "imitation"}), feedback_share),
    ]  # fmt: skip
    for name, learning_config, share in variants:
        runs[name] = [
            router_run(world, learning_config, order, name, mu, share, seed=seed)
            for seed, order in enumerate(streams)
        ]
        rows.append(summarise([r.result for r in runs[name]], top_usd))
    prior_name = "router, its prior alone (no learning)"
    prior_runs = [
        router_run(world, base, order, prior_name, mu, learner_class=PriorOnly) for order in streams
    ]
    rows.append(summarise([r.result for r in prior_runs], top_usd))
    hedge = LearningConfig(enabled=True, policy="hedge", mu=mu, labels="imitation")
    hedge_name = "Hedge thresholds (previous policy), imitation"
    rows.append(summarise([world.learned(hedge, o, hedge_name) for o in streams], top_usd))

    headline = runs["router, imitation labels"]
    regret_fixed = [cumulative_regret(r.losses, r.fixed_losses) for r in headline]
    regret_best = [
        cumulative_regret(r.losses, best_rule_losses(world, rules, order, mu))
        for r, order in zip(headline, streams, strict=True)
    ]
    pngs = []
    for label, regrets in (("fixed cascade", regret_fixed), ("best rule", regret_best)):
        results = []
        for curve in regrets:
            result = StreamResult(label)
            result.regret_curves = {1: curve}
            results.append(result)
        png = out_dir / f"route-regret-{label.replace(' ', '-')}.png"
        plot_regret(results, png, f"router's cumulative regret against the {label} (true loss)")
        pngs.append(png)

    # Drift: a second pass in which level n-2 answers with level 0's recordings.
    swapped, replacement = max(n_levels - 2, 0), 0
    after = swapped_world(world, swapped, replacement)
    drift_rows = []
    recoveries: list[int | None] = []
    fresh_recoveries: list[int | None] = []
    for seed in range(n_orders):
        first, second = orders(world.requests, 2 * seed + 2)[-2:]
        switch = SwitchLevel(world.levels[swapped], world.levels[replacement])
        run = router_run(world, base, first, "drift", mu, seed=seed,
                         drift=(after, second, switch))  # fmt: skip
        half = len(first)
        best_after = best_rule_losses(after, rules, second, mu)
        recoveries.append(recovery_requests(run.losses[half:], best_after, 0))
        # What adapting costs, apart from what the new world allows: a router
        # that never saw the old world, on the same stream.
        fresh = router_run(after, base, second, "fresh", mu, seed=seed)
        fresh_recoveries.append(recovery_requests(run.losses[half:], fresh.losses, 0))
        n1, p1, c1 = run.result.phase_results[0]
        drift_rows.append(
            {
                "pass_before": p1 / n1,
                "pass_after": (run.result.n_passed - p1) / (run.result.n - n1),
                "cost_pct_before": 100 * c1 / top_usd,
                "cost_pct_after": 100 * (run.result.cost_usd - c1) / top_usd,
                "loss_after": sum(run.losses[half:]),
                "loss_fresh_router": sum(fresh.losses),
                "loss_best_rule": sum(best_after),
            }
        )
    overhead = router_overhead_us(base, world, headline[0])

    lines = [
        f"Cascade router on {len(world.requests)} tasks, {n_orders} random orders; "
        f"one wrong answer = {top_calls:g} calls of {world.levels[-1].name} "
        f"(mu = {mu:.1f} per USD)",
        format_rows(rows),
        "",
        "Regret of the router (imitation labels) at the end, true loss, mean over orders: "
        f"against the fixed cascade {statistics.mean(c[-1] for c in regret_fixed):.1f}, "
        f"against the best pass/fail rule in hindsight "
        f"{statistics.mean(c[-1] for c in regret_best):.1f} "
        f"(of {len(rules)} rules)",
        "Pareto front of the pass/fail rules on the whole set (pass@1 % at cost %): "
        + ", ".join(f"{p:.1f} at {c:.1f}" for p, c in front),
        "Ceiling on the router's signals (pass/fail and agreement, hindsight; by the "
        "weight of a wrong answer in top calls): "
        + ", ".join(f"{k:g}: {p:.1f} at {c:.1f}" for k, p, c in ceiling_front),
        f"Drift: {world.levels[swapped].name} answers with {world.levels[replacement].name}'s "
        f"recordings for a second pass: pass@1 "
        f"{100 * statistics.mean(d['pass_before'] for d in drift_rows):.1f}% before, "
        f"{100 * statistics.mean(d['pass_after'] for d in drift_rows):.1f}% after; cost "
        f"{statistics.mean(d['cost_pct_before'] for d in drift_rows):.1f}% before, "
        f"{statistics.mean(d['cost_pct_after'] for d in drift_rows):.1f}% after; requests "
        f"until its loss since the swap is within 5% of the new best rule's, for good: "
        + ", ".join("never" if r is None else str(r) for r in recoveries)
        + "; its loss since the swap "
        + f"{statistics.mean(d['loss_after'] for d in drift_rows):.1f}, a fresh router's on "
        f"the new world {statistics.mean(d['loss_fresh_router'] for d in drift_rows):.1f}, "
        f"the new best rule's {statistics.mean(d['loss_best_rule'] for d in drift_rows):.1f}; "
        "requests until within 5% of the fresh router's, for good: "
        + ", ".join("never" if r is None else str(r) for r in fresh_recoveries),
        f"Router overhead (featurize, decide, learn), {overhead['n']:.0f} requests: "
        f"median {overhead['median_us']:.1f} us, p99 {overhead['p99_us']:.1f} us",
    ]
    payload = {
        "n_tasks": len(world.requests),
        "n_orders": n_orders,
        "top_calls_per_wrong_answer": top_calls,
        "mu_per_usd": mu,
        "rows": rows,
        "regret_vs_fixed_final": [c[-1] for c in regret_fixed],
        "regret_vs_best_rule_final": [c[-1] for c in regret_best],
        "n_rules": len(rules),
        "rule_front": front,
        "ceiling_front": ceiling_front,
        "drift": drift_rows,
        "drift_recovery_requests": recoveries,
        "drift_recovery_vs_fresh_router": fresh_recoveries,
        "router_overhead": overhead,
    }
    return LadderLearnReport("\n".join(lines), payload, pngs)
