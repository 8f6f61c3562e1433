"""`streamcascade bench --learn`: the learning cascade against fixed baselines.

On the recorded HumanEval ladder every level's attempt at every task is
computed once (each is a deterministic replay) and graded once against the
hidden tests, so any configuration's answers can be scored exactly. The
learned cascade then streams the tasks in several random orders; beside it:
each model alone, the fixed-threshold cascade, and the oracle (the cheapest
model that solves each task).

Regret is measured on the true loss (wrong on the hidden tests, plus mu times
the next level's cost for deferring) of each deferral policy's mixture, against
the best fixed threshold in hindsight on the same rounds.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamcascade.benchtools.bench import caching_levels
from streamcascade.cascade import CascadeEngine, Level, LevelOutcome
from streamcascade.cascade.level import Shape, cost_usd
from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.config import AppConfig, LearningConfig
from streamcascade.learning.learner import CascadeLearner
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.tasks import grade_all

log = logging.getLogger(__name__)

Progress = Callable[[Iterable[CodeRequest], str], Iterable[CodeRequest]]


@dataclass
class StreamResult:
    """One configuration over one ordered stream."""

    name: str
    n: int = 0
    n_passed: int = 0
    cost_usd: float = 0.0
    answered_at: dict[int, int] = field(default_factory=dict)
    n_explored: int = 0
    n_skipped: int = 0
    n_reached_top: int = 0
    # Per deferral policy (by level index): cumulative regret after each round it played.
    regret_curves: dict[int, list[float]] = field(default_factory=dict)
    label_agreement: list[bool] = field(default_factory=list)
    # The drift run: figures of the first phase, and its regret curves.
    phase_results: list[tuple[int, int, float]] = field(default_factory=list)
    phase_curves: dict[int, list[float]] = field(default_factory=dict)

    def snapshot(self) -> tuple[int, int, float]:
        return (self.n, self.n_passed, self.cost_usd)

    def add(self, level: int, passed: bool, cost_usd: float) -> None:
        self.n += 1
        self.n_passed += int(passed)
        self.cost_usd += cost_usd
        self.answered_at[level] = self.answered_at.get(level, 0) + 1

    @property
    def pass_at_1(self) -> float:
        return self.n_passed / self.n if self.n else 0.0


class RegretMeter:
    """Cumulative regret of a Hedge policy's mixture against each fixed threshold."""

    def __init__(self, thresholds: Sequence[float]) -> None:
        self.thresholds = list(thresholds)
        self.learner_loss = 0.0
        self.expert_loss = [0.0] * len(self.thresholds)
        self.curve: list[float] = []

    def add(self, probabilities: Sequence[float], score: float, wrong: bool, defer: float) -> None:
        losses = [float(wrong) if score >= t else min(1.0, defer) for t in self.thresholds]
        self.learner_loss += sum(p * x for p, x in zip(probabilities, losses, strict=True))
        for i, loss in enumerate(losses):
            self.expert_loss[i] += loss
        self.curve.append(self.learner_loss - min(self.expert_loss))

    @property
    def regret(self) -> float:
        return self.curve[-1] if self.curve else 0.0

    def best_threshold(self) -> float:
        return self.thresholds[min(range(len(self.thresholds)), key=self.expert_loss.__getitem__)]


def level_verdicts(
    level: Level, stepped: Iterable[CodeRequest], requests: Sequence[CodeRequest], grader: Sandbox
) -> tuple[dict[str, bool], dict[str, bool], dict[str, float]]:
    """One level's answer to each request (`stepped`: the same requests, perhaps
    wrapped in a progress bar): whether it is right on the hidden tests, whether
    it passes its own tests (what a fixed rule sees), and its cost."""
    outcomes = {r.id: level.step([r])[0] for r in stepped}
    graded = grade_all(grader, [(r, outcomes[r.id].code) for r in requests])
    correct = {r.id: bool(g) for r, g in zip(requests, graded, strict=True)}
    passes = {
        r.id: outcomes[r.id].attempt.best_solution_index is not None
        and outcomes[r.id].attempt.score >= 1.0
        for r in requests
    }
    cost = {r.id: outcomes[r.id].attempt.cost_usd for r in requests}
    return correct, passes, cost


class LadderWorld:
    """Every level's cached attempt and its hidden-test verdict, per task."""

    def __init__(
        self,
        config: AppConfig,
        requests: Sequence[CodeRequest],
        sandbox: Sandbox,
        grader: Sandbox,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.requests = list(requests)
        self.sandbox = sandbox
        self.grader = grader
        self.levels: list[Level] = list(caching_levels(config, sandbox))
        wrap = progress or (lambda items, _label: items)
        self.correct: list[dict[str, bool]] = []
        self.cost: list[dict[str, float]] = []
        self.passes: list[dict[str, bool]] = []
        """Whether each level's answer passes its own tests (what a fixed rule sees)."""
        for level in self.levels:
            correct, passes, cost = level_verdicts(
                level, wrap(self.requests, level.name), self.requests, grader
            )
            self.correct.append(correct)
            self.passes.append(passes)
            self.cost.append(cost)
        self.top_cost_usd = sum(self.cost[-1].values())
        # One labeler per label source, shared by every run: its cache of
        # imitation verdicts is what makes five orders cheap.
        self._labelers: dict[str, Labeler] = {}
        self.last_learner: CascadeLearner | None = None

    def fixed_rule(self) -> Any:
        """The fixed cascade as a pass/fail rule (see `routebench.Rule`)."""
        rule: Any = None
        for position in reversed(range(len(self.levels))):
            rule = (position, None, rule)
        return rule

    def labeler(self, learning: LearningConfig) -> Labeler:
        if learning.labels not in self._labelers:
            labeler = Labeler(self.sandbox, learning.labels, learning.max_probes)
            # Whatever the label source, the router compares levels on probes:
            # one cache of those verdicts serves every labeler.
            if self._labelers:
                labeler.share_cache(next(iter(self._labelers.values())))
            self._labelers[learning.labels] = labeler
        return self._labelers[learning.labels]

    def mean_cost(self, position: int) -> float:
        return sum(self.cost[position].values()) / len(self.requests)

    def alone(self, position: int) -> StreamResult:
        result = StreamResult(f"{self.levels[position].name} alone")
        for r in self.requests:
            result.add(position + 1, self.correct[position][r.id], self.cost[position][r.id])
        result.n_reached_top = result.n if position == len(self.levels) - 1 else 0
        return result

    def fixed_cascade(self) -> StreamResult:
        engine = CascadeEngine(self.levels)
        result = StreamResult("fixed-threshold cascade")
        for r in self.requests:
            answer = engine.process_one(r)
            result.add(answer.level, self.correct[answer.level - 1][r.id], answer.cost_usd)
            result.n_reached_top += answer.level == len(self.levels)
        return result

    def oracle(self) -> StreamResult:
        result = StreamResult("oracle (cheapest right model)")
        for r in self.requests:
            right = [p for p in range(len(self.levels)) if self.correct[p][r.id]]
            position = min(right, key=lambda p: self.cost[p][r.id]) if right else 0
            result.add(position + 1, bool(right), self.cost[position][r.id])
            result.n_reached_top += position == len(self.levels) - 1
        return result

    def learned(
        self,
        learning: LearningConfig,
        order: Iterable[CodeRequest],
        name: str,
        levels: Sequence[Level] | None = None,
        truth: Callable[[int, CodeRequest], bool] | None = None,
        switch_at: int | None = None,
    ) -> StreamResult:
        """Stream `order` through a fresh learner. The drift run passes its own
        `levels` and `truth` (position, request -> right) and `switch_at`, where
        the regret meters restart so each phase has its own curve."""
        chosen = list(levels or self.levels)
        right = truth or (lambda position, request: self.correct[position][request.id])
        learner = CascadeLearner(learning, len(chosen))
        engine = OnlineCascadeEngine(chosen, learner, self.labeler(learning))
        meters = [RegretMeter(learning.thresholds) for _ in chosen[:-1]]
        result = StreamResult(name)
        for index, request in enumerate(order):
            if index == switch_at:
                result.regret_curves = {p + 1: m.curve for p, m in enumerate(meters)}
                result.phase_results.append(result.snapshot())
                meters = [RegretMeter(learning.thresholds) for _ in chosen[:-1]]
            before = [p.probabilities() for p in learner.policies]
            answer = engine.process_one(request)
            trace = learner.last_trace
            assert trace is not None
            for step in trace.steps:
                if step.decision is None:
                    continue
                position = step.position
                wrong = not right(position, request)
                next_cost = chosen[position + 1].attempt(request).attempt.cost_usd
                meters[position].add(before[position], step.score, wrong, learner.mu * next_cost)
                if step.right is not None:
                    result.label_agreement.append(step.right == right(position, request))
            result.add(answer.level, right(answer.level - 1, request), answer.cost_usd)
            result.n_reached_top += answer.attempts[-1].level == len(chosen)
            result.n_explored += bool(answer.explored_levels)
            result.n_skipped += bool(answer.skipped_levels)
        if switch_at is not None:
            result.phase_curves = result.regret_curves
        result.regret_curves = {p + 1: m.curve for p, m in enumerate(meters)}
        self.last_learner = learner
        return result


def orders(requests: Sequence[CodeRequest], n_orders: int) -> list[list[CodeRequest]]:
    result = []
    for seed in range(n_orders):
        shuffled = list(requests)
        random.Random(seed).shuffle(shuffled)
        result.append(shuffled)
    return result


def summarise(results: Sequence[StreamResult], top_cost_usd: float) -> dict[str, Any]:
    """Mean and spread over orders of one configuration's figures."""
    passes = [r.pass_at_1 for r in results]
    costs = [100 * r.cost_usd / top_cost_usd for r in results]
    regrets = {
        level: [r.regret_curves[level][-1] for r in results if r.regret_curves.get(level)]
        for level in results[0].regret_curves
    }
    agreement = [a for r in results for a in r.label_agreement]
    return {
        "name": results[0].name,
        "pass_at_1_mean": statistics.mean(passes),
        "pass_at_1_min": min(passes),
        "pass_at_1_max": max(passes),
        "cost_pct_mean": statistics.mean(costs),
        "cost_pct_min": min(costs),
        "cost_pct_max": max(costs),
        "explored_share": statistics.mean(r.n_explored / r.n for r in results),
        "skipped_share": statistics.mean(r.n_skipped / r.n for r in results),
        "top_share": statistics.mean(r.n_reached_top / r.n for r in results),
        "regret_final_mean": {str(k): statistics.mean(v) for k, v in regrets.items() if v},
        "label_accuracy": sum(agreement) / len(agreement) if agreement else None,
        "n_labels_per_order": len(agreement) / len(results),
    }


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    header = f"{'configuration':<44} {'pass@1 %':>17} {'cost % of top':>19} {'explore':>8}"
    header += f" {'skip L1':>8} {'reach top':>9}  regret at end, by level"
    lines = [header, "-" * len(header)]
    for row in rows:
        p = f"{100 * row['pass_at_1_mean']:.1f}"
        if row["pass_at_1_min"] != row["pass_at_1_max"]:
            p += f" [{100 * row['pass_at_1_min']:.1f}-{100 * row['pass_at_1_max']:.1f}]"
        c = f"{row['cost_pct_mean']:.1f}"
        if row["cost_pct_min"] != row["cost_pct_max"]:
            c += f" [{row['cost_pct_min']:.1f}-{row['cost_pct_max']:.1f}]"
        regret = ", ".join(f"L{k} {v:.1f}" for k, v in row["regret_final_mean"].items())
        lines.append(
            f"{row['name']:<44} {p:>17} {c:>19} {100 * row['explored_share']:>7.1f}%"
            f" {100 * row['skipped_share']:>7.1f}% {100 * row['top_share']:>8.1f}%  {regret}"
        )
    return "\n".join(lines)


class SwitchLevel(Level):
    """A level whose model is swapped for another's at some point of the stream,
    as a provider might swap the model behind a name: the same name, position
    and prices, the other model's answers (billed at this level's prices for
    the tokens they took). The drift run's change."""

    def __init__(self, before: Level, after: Level, switched: bool = False) -> None:
        super().__init__(before.index, before.config, before.backend, before.sandbox)
        self.before, self.after = before, after
        self.switched = switched

    def _as_own(self, outcome: LevelOutcome) -> LevelOutcome:
        if not self.switched:
            return outcome
        attempt = outcome.attempt
        billed = attempt.model_copy(
            update={
                "level": self.index,
                "model": self.backend.model_name,
                "cost_usd": cost_usd(self.config, attempt.tokens_in, attempt.tokens_out),
            }
        )
        return replace(outcome, attempt=billed)

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        # The loop calls `step`, or `attempt` for exemplars and arms: both switch.
        level = self.after if self.switched else self.before
        return [self._as_own(outcome) for outcome in level.step(requests)]

    def attempt(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]] = (),
        shape: Shape | None = None,
        threshold: float | None = None,
    ) -> LevelOutcome:
        level = self.after if self.switched else self.before
        return self._as_own(level.attempt(request, exemplars, shape, threshold))


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_regret(results: Sequence[StreamResult], path: Path, title: str) -> None:
    plt = _plt()
    levels = sorted(results[0].regret_curves)
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.4), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for order, result in enumerate(results):
            curve = result.regret_curves[level]
            ax.plot(range(1, len(curve) + 1), curve, lw=1, label=f"order {order}")
        ax.set_title(f"level {level} policy", fontsize=9)
        ax.set_xlabel("rounds at this level")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("cumulative regret")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class LadderLearnReport:
    text: str
    payload: dict[str, Any]
    pngs: list[Path]


def real_learn(
    config: AppConfig,
    requests: Sequence[CodeRequest],
    sandbox: Sandbox,
    grader: Sandbox,
    out_dir: Path,
    weight: float,
    progress: Progress | None = None,
) -> LadderLearnReport:
    """The cascade router on live models beside each level alone and the fixed
    cascade, one pass in order, every level's attempt shared (deterministic
    models). `weight`: one call of the top level weighs this many wrong answers."""
    from streamcascade.cascade.drivers import RouterDriver
    from streamcascade.cascade.routed import RoutedCascadeEngine
    from streamcascade.learning.router_learner import RouteLearner

    out_dir.mkdir(parents=True, exist_ok=True)
    levels = caching_levels(config, sandbox)
    wrap = progress or (lambda items, _label: items)
    verdicts: dict[tuple[str, str], bool] = {}

    def right(request: CodeRequest, code: str) -> bool:
        if (request.id, code) not in verdicts:
            verdicts[(request.id, code)] = bool(grade_all(grader, [(request, code)])[0])
        return verdicts[(request.id, code)]

    rows: list[dict[str, Any]] = []
    results: list[StreamResult] = []
    for position in reversed(range(len(levels))):
        result = StreamResult(f"{levels[position].name} alone")
        for request in wrap(requests, result.name):
            outcome = levels[position].attempt(request)
            result.add(position + 1, right(request, outcome.code), outcome.attempt.cost_usd)
        result.n_reached_top = result.n if position == len(levels) - 1 else 0
        results.append(result)
    top_cost = results[0].cost_usd
    learning = config.learning.model_copy(
        update={
            "enabled": True,
            "policy": "router",
            "router": config.learning.router.model_copy(
                update={"top_calls_per_wrong_answer": 1.0 / weight}
            ),
        }
    )
    fixed = RoutedCascadeEngine(levels)
    learner = RouteLearner(learning, [level.config for level in levels])
    router = RoutedCascadeEngine(levels, RouterDriver(learner, Labeler(sandbox, learning.labels)))
    for name, engine in (("fixed-threshold cascade", fixed), ("router, imitation labels", router)):
        result = StreamResult(name)
        for request in wrap(requests, name):
            answer = engine.process_one(request)
            result.add(answer.level, right(request, answer.code), answer.cost_usd)
            result.n_reached_top += any(a.level == len(levels) for a in answer.attempts)
            result.n_explored += bool(answer.explored_levels)
            result.n_skipped += bool(answer.skipped_levels)
        results.append(result)
    rows = [summarise([result], top_cost) for result in results]
    lines = [
        f"Cascade router on live models, first {len(requests)} requests in order; one wrong "
        f"answer = {1 / weight:g} calls of {levels[-1].name}",
        format_rows(rows),
    ]
    payload = {"n_requests": len(requests), "top_calls_per_wrong_answer": 1 / weight, "rows": rows}
    return LadderLearnReport("\n".join(lines), payload, [])
