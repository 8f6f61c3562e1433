"""`streamcascade bench --adapt --ladder DIR --models SPEC`: does learning earn
its place when the world changes?

Each scenario streams a recorded ladder in phases; in each phase the world
may differ from the one before (a model swapped behind a level's name, the
top degraded, prices moved, a level down, lying Feedback). Over the same
random orders it runs, phase by phase:

- the learned router, learning across every phase;
- the same router frozen: its prior alone, no learning (`PriorOnly`);
- a router started fresh at the phase's start, that never saw the old world;
- the fixed cascade, and the best pass/fail rule of that phase in hindsight.

For each it reports pass@1, cost (% of always asking the phase's top) and
the mean loss the router optimises (wrong + mu x cost, mu from the phase's top
cost and the weight of a wrong answer in top calls), plus the learned
router's loss over the last 100 requests of the phase against the best rule's
and the frozen prior's, and the requests it took to come within 5 % of the
best rule for good. Every level's answers and verdicts come from one
`LadderWorld`, computed once; a phase's world is a view of it.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streamcascade.backends import BackendError
from streamcascade.benchtools.learnbench import LadderWorld, level_verdicts, orders
from streamcascade.benchtools.routebench import (
    PriorOnly,
    Rule,
    all_rules,
    play_rule,
    recovery_requests,
    swapped_world,
)
from streamcascade.cascade.drivers import RouterDriver
from streamcascade.cascade.level import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import LearningConfig
from streamcascade.learning.router_learner import RouteLearner
from streamcascade.schemas import CodeRequest, Feedback
from streamcascade.tasks import LevelOutcome

SCENARIOS = ("swap", "degrade", "join", "outage", "price", "mix", "self-tests", "poison")
TAIL = 100
"""The targets are judged on the last this-many requests of a changed phase."""


class PhasedLevel(Level):
    """One level of the engine across phases: in each phase it is that phase's
    level (the same name, position and config to the router; another model's
    answers, another price or an outage behind them)."""

    def __init__(self, phases: Sequence[Level]) -> None:
        first = phases[0]
        super().__init__(first.index, first.config, first.backend, first.sandbox)
        self.phases = list(phases)
        self.phase = 0

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return self.phases[self.phase].step(requests)


class PricedLevel(Level):
    """A level whose price moved: the same answers, billed `factor` times."""

    def __init__(self, level: Level, factor: float) -> None:
        super().__init__(level.index, level.config, level.backend, level.sandbox)
        self.inner, self.factor = level, factor

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return [
            replace(o, attempt=o.attempt.model_copy(update={"cost_usd": o.attempt.cost_usd
                                                            * self.factor}))
            for o in self.inner.step(requests)
        ]  # fmt: skip


class DownLevel(Level):
    """A level whose backend is down: every call fails, as a breaker-open one does."""

    def __init__(self, level: Level) -> None:
        super().__init__(level.index, level.config, level.backend, level.sandbox)

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        raise BackendError(f"{self.name}: outage (scenario)")


class MovedLevel(Level):
    """A level at another place of a shorter ladder: its attempts say which."""

    def __init__(self, level: Level, index: int) -> None:
        super().__init__(index, level.config, level.backend, level.sandbox)
        self.inner = level

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return [replace(o, attempt=o.attempt.model_copy(update={"level": self.index}))
                for o in self.inner.step(requests)]  # fmt: skip


class SelfTestedLevel(Level):
    """A level that never sees a request's visible tests: it judges its
    solutions by the tests it writes itself (CodeT's setting)."""

    def __init__(self, level: Level) -> None:
        super().__init__(level.index, level.config, level.backend, level.sandbox)
        self.inner = level

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        return self.inner.step([r.model_copy(update={"visible_tests": []}) for r in requests])


def without(world: LadderWorld, position: int) -> LadderWorld:
    """The same world with the level at `position` gone (the ones above move down)."""
    keep = [i for i in range(len(world.levels)) if i != position]
    other = object.__new__(LadderWorld)
    other.__dict__.update(world.__dict__)
    other.levels = [world.levels[i] if i < position else MovedLevel(world.levels[i], i)
                    for i in keep]  # fmt: skip
    other.correct = [world.correct[i] for i in keep]
    other.passes = [world.passes[i] for i in keep]
    other.cost = [world.cost[i] for i in keep]
    other.top_cost_usd = sum(other.cost[-1].values())
    return other


def only(world: LadderWorld, names: Sequence[str]) -> LadderWorld:
    """The same world with only the levels named (in the world's order)."""
    for position in reversed(range(len(world.levels))):
        if world.levels[position].name not in names:
            world = without(world, position)
    return world


def replaced(world: LadderWorld, position: int, level: Level) -> LadderWorld:
    """The same world with `level` answering at `position` (graded here, once)."""
    correct, passes, cost = level_verdicts(level, world.requests, world.requests, world.grader)
    return _view(world, position, level, correct, passes, cost)


def _view(world: LadderWorld, position: int, level: Level, correct: dict[str, bool],
          passes: dict[str, bool], cost: dict[str, float]) -> LadderWorld:  # fmt: skip
    """The same world with the level at `position` replaced, and its verdicts."""
    other = object.__new__(LadderWorld)
    other.__dict__.update(world.__dict__)
    other.levels = [level if i == position else lv for i, lv in enumerate(world.levels)]
    other.correct = [correct if i == position else c for i, c in enumerate(world.correct)]
    other.passes = [passes if i == position else p for i, p in enumerate(world.passes)]
    other.cost = [cost if i == position else c for i, c in enumerate(world.cost)]
    other.top_cost_usd = sum(other.cost[-1].values())
    return other


def priced(world: LadderWorld, factors: dict[int, float]) -> LadderWorld:
    for position, factor in factors.items():
        level = PricedLevel(world.levels[position], factor)
        cost = {k: v * factor for k, v in world.cost[position].items()}
        world = _view(world, position, level, world.correct[position],
                      world.passes[position], cost)  # fmt: skip
    return world


def down(world: LadderWorld, position: int) -> LadderWorld:
    """A failed call answers nothing and costs nothing: a rule passes it by."""
    nothing = dict.fromkeys(world.correct[position], False)
    free = dict.fromkeys(world.cost[position], 0.0)
    return _view(world, position, DownLevel(world.levels[position]), nothing, dict(nothing), free)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    phases: list[LadderWorld]
    feedback_share: float = 0.0
    lying_share: float = 0.0
    budgets: bool = False
    """Also run the router under each kind of budget, set from the first phase."""


@dataclass
class Skipped:
    name: str
    why: str


@dataclass(frozen=True)
class Extras:
    """What some scenarios need beyond the ladder itself."""

    second: LadderWorld | None = None
    """`mix`: a second request population recorded on some of the same models."""
    self_tested: Level | None = None
    """`self-tests`: a level judged by its own generated tests (CodeT's CodeGen-16B)."""


def scenario(name: str, world: LadderWorld, extras: Extras | None = None) -> Scenario | Skipped:
    """The phases of scenario `name` on `world`, or why it does not apply."""
    extras = extras or Extras()
    n = len(world.levels)
    names = [level.name for level in world.levels]
    if name == "swap":
        if n < 3:
            return Skipped(name, "needs three levels: one below the top to swap for the cheapest")
        position = n - 2
        return Scenario(name, f"{names[position]} serves {names[0]}'s answers at its own price",
                        [world, swapped_world(world, position, 0)])  # fmt: skip
    if name == "degrade":
        return Scenario(name, f"{names[-1]} serves {names[-2]}'s answers at its own price",
                        [world, swapped_world(world, n - 1, n - 2)])  # fmt: skip
    if name == "price":
        return Scenario(name, f"{names[-1]} 4x cheaper, {names[0]} 4x dearer",
                        [world, priced(world, {n - 1: 0.25, 0: 4.0})], budgets=True)  # fmt: skip
    if name == "outage":
        position = max(n - 2, 0)
        return Scenario(name, f"{names[position]} down for a phase, then back",
                        [world, down(world, position), world])  # fmt: skip
    if name == "poison":
        return Scenario(name, "half the answers get Feedback, a fifth of it lies",
                        [world], feedback_share=0.5, lying_share=0.2)  # fmt: skip
    if name == "join":
        if n < 3:
            return Skipped(name, "needs three levels: one below the top to join mid-stream")
        position = n - 2
        return Scenario(name, f"{names[position]} joins below the top, unknown to the router",
                        [without(world, position), world])  # fmt: skip
    if name == "mix":
        if extras.second is None:
            return Skipped(name, "needs a second request population (--mix-ladder, --mix-models)")
        shared = [m for m in names if m in {level.name for level in extras.second.levels}]
        if len(shared) < 2:
            return Skipped(name, f"the two ladders share {len(shared)} model(s); it needs two")
        first, second = only(world, shared), only(extras.second, shared)
        return Scenario(name, f"the traffic moves to another population on {', '.join(shared)}",
                        [first, second, first])  # fmt: skip
    if name == "self-tests":
        if extras.self_tested is None:
            return Skipped(name, "needs the CodeT recordings (--codet DIR)")
        if n < 2:
            return Skipped(name, "needs a level below the top")
        position = n - 2
        level = MovedLevel(extras.self_tested, position + 1)
        return Scenario(name, f"{names[position]} replaced by {level.name}, judged by its own "
                        "generated tests, not the visible ones",
                        [world, replaced(world, position, level)])  # fmt: skip
    raise ValueError(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")


@dataclass
class PhaseRun:
    """One configuration's per-request outcomes in one phase of one order."""

    right: list[bool] = field(default_factory=list)
    cost_usd: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    top: list[bool] = field(default_factory=list)
    """Whether the top level ran (what `budget_top_share` counts)."""


def _mu(world: LadderWorld, top_calls: float) -> float:
    return 1.0 / (top_calls * world.mean_cost(len(world.levels) - 1))


def router_phases(
    scenario: Scenario,
    learning: LearningConfig,
    streams: Sequence[Sequence[CodeRequest]],
    top_calls: float,
    learner_class: type[RouteLearner] = RouteLearner,
    honest: bool = False,
    seed: int = 0,
) -> list[PhaseRun]:
    """One router across every phase. Its levels change under it; where the
    ladder grows (`join`), the router is restarted on the grown ladder from a
    snapshot of itself, as a service restarted with one more level is."""
    first = scenario.phases[0]
    rng = random.Random(seed)
    waiting: deque[tuple[int, Feedback]] = deque()
    runs, index = [], 0
    engine: RoutedCascadeEngine | None = None
    learner: RouteLearner | None = None
    levels: list[PhasedLevel] = []
    start = 0
    for phase, (world, stream) in enumerate(zip(scenario.phases, streams, strict=True)):
        if engine is None or len(world.levels) != len(levels):
            # Phases on the same number of levels share one engine: its levels
            # switch worlds under it (`PhasedLevel`).
            span = [world]
            for later in scenario.phases[phase + 1 :]:
                if len(later.levels) != len(world.levels):
                    break
                span.append(later)
            levels = [PhasedLevel([w.levels[p] for w in span]) for p in range(len(world.levels))]
            grown = learner_class(learning, [level.config for level in levels])
            if learner is not None:
                grown.load_state_dict(learner.state_dict())
            learner, start = grown, phase
            engine = RoutedCascadeEngine(levels, RouterDriver(learner, first.labeler(learning)))
        for level in levels:
            level.phase = phase - start
        mu = _mu(world, top_calls)
        run = PhaseRun()
        for request in stream:
            answer = engine.process_one(request)
            right = world.correct[answer.level - 1][request.id]
            run.right.append(right)
            run.cost_usd.append(answer.cost_usd)
            run.loss.append(float(not right) + mu * answer.cost_usd)
            run.top.append(any(a.level == levels[-1].index for a in answer.attempts))
            if scenario.feedback_share and rng.random() < scenario.feedback_share:
                lies = not honest and rng.random() < scenario.lying_share
                waiting.append((index + 5, Feedback(id=request.id, passed=right != lies)))
            while waiting and waiting[0][0] <= index:
                engine.learn_one(waiting.popleft()[1])
            index += 1
        runs.append(run)
    return runs


def rule_run(rule: Rule, world: LadderWorld, stream: Sequence[CodeRequest], mu: float) -> PhaseRun:
    run = PhaseRun()
    for request in stream:
        outcome = play_rule(rule, world, request)
        run.right.append(outcome.right)
        run.cost_usd.append(outcome.cost_usd)
        run.loss.append(float(not outcome.right) + mu * outcome.cost_usd)
        run.top.append(outcome.reached_top)
    return run


def best_rule_run(
    rules: Sequence[Rule], world: LadderWorld, stream: Sequence[CodeRequest], mu: float
) -> PhaseRun:
    runs = (rule_run(rule, world, stream, mu) for rule in rules)
    return min(runs, key=lambda run: sum(run.loss))


def _row(name: str, runs: Sequence[PhaseRun], top_usd: float) -> dict[str, Any]:
    return {
        "name": name,
        "pass_at_1": statistics.mean(sum(r.right) / len(r.right) for r in runs),
        "cost_pct": statistics.mean(100 * sum(r.cost_usd) / top_usd for r in runs),
        "loss": statistics.mean(sum(r.loss) / len(r.loss) for r in runs),
        "loss_tail": statistics.mean(sum(r.loss[-TAIL:]) / len(r.loss[-TAIL:]) for r in runs),
        "top_share": statistics.mean(sum(r.top) / len(r.top) for r in runs),
        "usd_per_request": statistics.mean(sum(r.cost_usd) / len(r.cost_usd) for r in runs),
    }


def run_scenario(
    scenario: Scenario, learning: LearningConfig, n_orders: int, top_calls: float
) -> dict[str, Any]:
    """Every configuration on every phase, `n_orders` random orders each."""
    n_phases = len(scenario.phases)
    # Order o, phase p: a shuffle of that phase's population of its own.
    shuffles = [orders(world.requests, n_orders * n_phases) for world in scenario.phases]
    phase_streams = [[shuffles[p][o * n_phases + p] for p in range(n_phases)]
                     for o in range(n_orders)]  # fmt: skip
    learned = [router_phases(scenario, learning, s, top_calls, seed=o)
               for o, s in enumerate(phase_streams)]  # fmt: skip
    frozen = [router_phases(scenario, learning, s, top_calls, PriorOnly, seed=o)
              for o, s in enumerate(phase_streams)]  # fmt: skip
    honest = (
        [
            router_phases(scenario, learning, s, top_calls, honest=True, seed=o)
            for o, s in enumerate(phase_streams)
        ]
        if scenario.lying_share
        else None
    )
    budgeted: list[tuple[str, list[list[PhaseRun]]]] = []
    if scenario.budgets:
        # Budgets a user would set from what the router did before the change:
        # its share reaching the top, and its spend per request, in phase 1.
        share = statistics.mean(sum(r[0].top) / len(r[0].top) for r in learned)
        spend = statistics.mean(sum(r[0].cost_usd) / len(r[0].cost_usd) for r in learned)
        for name, update in ((f"learned, budget_top_share {100 * share:.1f} %",
                              {"budget_top_share": share}),
                             (f"learned, budget_usd_per_request {spend:.2e}",
                              {"budget_usd_per_request": spend})):  # fmt: skip
            config = learning.model_copy(update=update)
            budgeted.append((name, [router_phases(scenario, config, s, top_calls, seed=o)
                                    for o, s in enumerate(phase_streams)]))  # fmt: skip
    phases = []
    for p, world in enumerate(scenario.phases):
        mu = _mu(world, top_calls)
        top_usd = world.mean_cost(len(world.levels) - 1) * len(world.requests)
        streams = [s[p] for s in phase_streams]
        rules = all_rules(len(world.levels))
        best = [best_rule_run(rules, world, s, mu) for s in streams]
        fixed = [rule_run(world.fixed_rule(), world, s, mu) for s in streams]
        rows = [_row("learned router", [r[p] for r in learned], top_usd),
                _row("frozen prior (no learning)", [r[p] for r in frozen], top_usd)]  # fmt: skip
        if honest is not None:
            rows.append(_row("learned, honest Feedback", [r[p] for r in honest], top_usd))
        rows.extend(_row(name, [r[p] for r in runs], top_usd) for name, runs in budgeted)
        if p > 0:
            fresh_scenario = Scenario(scenario.name, scenario.what, [world])
            fresh = [router_phases(fresh_scenario, learning, [s], top_calls, seed=o)[0]
                     for o, s in enumerate(streams)]  # fmt: skip
            rows.append(_row("router started fresh here", fresh, top_usd))
        rows.append(_row("fixed cascade", fixed, top_usd))
        rows.append(_row("best pass/fail rule of the phase", best, top_usd))
        recovery = [
            recovery_requests(r[p].loss, b.loss, 0) for r, b in zip(learned, best, strict=True)
        ]
        tail = rows[0]["loss_tail"]
        best_tail = statistics.mean(sum(b.loss[-TAIL:]) / len(b.loss[-TAIL:]) for b in best)
        phases.append({
            "phase": p + 1,
            "mu_per_usd": mu,
            "rows": rows,
            "recovery_requests": recovery,
            "tail_within_5pct_of_best": tail <= 1.05 * best_tail,
            "tail_below_frozen": tail < rows[1]["loss_tail"],
        })  # fmt: skip
    return {"scenario": scenario.name, "what": scenario.what, "phases": phases}


def adapt_bench(
    world: LadderWorld,
    names: Sequence[str] = SCENARIOS,
    n_orders: int = 5,
    top_calls: float = 3.3,
    learning: LearningConfig | None = None,
    extras: Extras | None = None,
) -> tuple[str, dict[str, Any]]:
    """The scenario table as text, and its payload."""
    base = learning or LearningConfig()
    base = base.model_copy(update={
        "enabled": True, "policy": "router", "labels": "imitation",
        "router": base.router.model_copy(update={"top_calls_per_wrong_answer": top_calls}),
    })  # fmt: skip
    results: list[dict[str, Any]] = []
    lines = [
        f"Scenarios on {len(world.requests)} tasks, {n_orders} random orders per phase; one "
        f"wrong answer = {top_calls:g} calls of the phase's top; loss = wrong + mu x cost, mean "
        f"per request (tail: the phase's last {TAIL})",
    ]
    for name in names:
        built = scenario(name, world, extras)
        if isinstance(built, Skipped):
            lines.append(f"\n{name}: skipped: {built.why}")
            results.append({"scenario": name, "skipped": built.why})
            continue
        # An outage fails a level on every request it is tried on: a warning
        # each in the service, thousands of lines in a bench.
        # A level joining is logged once per restart: once per order and run here.
        names = ("streamcascade.cascade.routed", "streamcascade.learning.router_learner")
        quiet = [logging.getLogger(name) for name in names]
        levels_before = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            result = run_scenario(built, base, n_orders, top_calls)
        finally:
            for logger, level in zip(quiet, levels_before, strict=True):
                logger.setLevel(level)
        results.append(result)
        lines.append(f"\n{name}: {built.what}")
        lines.append(f"  {'phase / configuration':<40} {'pass@1 %':>9} {'cost %':>8} "
                     f"{'loss':>7} {'tail loss':>10} {'top %':>6} {'USD/request':>11}")  # fmt: skip
        for phase in result["phases"]:
            lines.append(f"  phase {phase['phase']}")
            for row in phase["rows"]:
                lines.append(
                    f"    {row['name']:<38} {100 * row['pass_at_1']:>9.1f} {row['cost_pct']:>8.1f}"
                    f" {row['loss']:>7.3f} {row['loss_tail']:>10.3f}"
                    f" {100 * row['top_share']:>6.1f} {row['usd_per_request']:>11.2e}"
                )
            recovery = ", ".join("never" if r is None else str(r)
                                 for r in phase["recovery_requests"])  # fmt: skip
            lines.append(
                f"    requests until within 5 % of the best rule, for good: {recovery}; tail "
                f"within 5 % of it: {'yes' if phase['tail_within_5pct_of_best'] else 'NO'}; "
                f"below the frozen prior's: {'yes' if phase['tail_below_frozen'] else 'NO'}"
            )
    return "\n".join(lines), {
        "n_tasks": len(world.requests),
        "n_orders": n_orders,
        "top_calls_per_wrong_answer": top_calls,
        "scenarios": results,
    }
