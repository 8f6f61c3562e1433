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

import gc
import logging
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcascade.bench import caching_levels
from streamcascade.cascade import CascadeEngine, Level, LevelOutcome
from streamcascade.cascade.online import Labeler, LabelSource, OnlineCascadeEngine
from streamcascade.config import AppConfig, LearningConfig
from streamcascade.evaluation import grade_many
from streamcascade.learning.budget import Arm
from streamcascade.learning.learner import CascadeLearner
from streamcascade.learning.router import Level0Router
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest

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
        self.levels = caching_levels(config, sandbox)
        wrap = progress or (lambda items, _label: items)
        self.correct: list[dict[str, bool]] = []
        self.cost: list[dict[str, float]] = []
        for level in self.levels:
            outcomes = {r.id: level.attempt(r) for r in wrap(self.requests, level.name)}
            graded = grade_many(grader, [(r, outcomes[r.id].code) for r in self.requests])
            self.correct.append({r.id: bool(g) for r, g in zip(self.requests, graded, strict=True)})
            self.cost.append({r.id: outcomes[r.id].attempt.cost_usd for r in self.requests})
        self.top_cost_usd = sum(self.cost[-1].values())
        # One labeler per label source, shared by every run: its cache of
        # imitation verdicts is what makes five orders cheap.
        self._labelers: dict[str, Labeler] = {}
        self.last_learner: CascadeLearner | None = None

    def labeler(self, learning: LearningConfig) -> Labeler:
        if learning.labels not in self._labelers:
            self._labelers[learning.labels] = Labeler(
                self.sandbox, learning.labels, learning.max_probes
            )
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


def mu_for(world: LadderWorld, weight_of_top_call: float) -> float:
    """mu such that one top-level call weighs `weight_of_top_call` wrong answers."""
    return weight_of_top_call / world.mean_cost(len(world.levels) - 1)


def level0_overhead_us(requests: Sequence[CodeRequest], passes: int = 5) -> dict[str, float]:
    """Median and p99 microseconds of featurize + predict + learn, per request."""
    router = Level0Router()
    timings = []
    rng = random.Random(0)
    gc.collect()  # garbage left by earlier work should not be billed to level 0
    for _ in range(passes):
        for request in requests:
            started = time.perf_counter()
            features = router.featurizer.transform_one(request)
            router.predict_features(features)
            router.learn_features(features, rng.random() < 0.5)
            timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "median_us": 1e6 * statistics.median(timings),
        "p99_us": 1e6 * timings[int(0.99 * (len(timings) - 1))],
        "n": float(len(timings)),
    }


def orders(requests: Sequence[CodeRequest], n_orders: int) -> list[list[CodeRequest]]:
    result = []
    for seed in range(n_orders):
        shuffled = list(requests)
        random.Random(seed).shuffle(shuffled)
        result.append(shuffled)
    return result


def settle_index(curve: Sequence[float], start: int, slope: float = 0.02) -> int | None:
    """Rounds after `start` until the regret curve's average slope from then to
    the end stays at most `slope` per round; None if it never does."""
    end = len(curve) - 1
    for t in range(start, end):
        if all((curve[u] - curve[t]) / (u - t) <= slope for u in range(t + 1, end + 1)):
            return t - start
    return None


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
    """A level whose model is swapped for another's at some point of the stream
    (same name, position and prices): the drift run's change."""

    def __init__(self, before: Level, after: Level) -> None:
        super().__init__(before.index, before.config, before.backend, before.sandbox)
        self.before, self.after = before, after
        self.switched = False

    def attempt(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]] = (),
        arm: Arm | None = None,
    ) -> LevelOutcome:
        return (self.after if self.switched else self.before).attempt(request, exemplars, arm)


def _switching(
    stream: Sequence[CodeRequest], switch: SwitchLevel, at: int
) -> Iterable[CodeRequest]:
    """Yields the stream, swapping the level's model just before request `at`."""
    for index, request in enumerate(stream):
        switch.switched = index >= at
        yield request


@dataclass
class DriftReport:
    name: str
    pass_before: float
    pass_after: float
    cost_pct_before: float
    cost_pct_after: float
    regret_before: float
    regret_after: float
    settle_rounds: int | None
    n_restarts: int
    curve_after: list[float]


def drift_run(
    world: LadderWorld,
    learning: LearningConfig,
    swapped: int,
    replacement: int,
    n_orders: int,
) -> list[DriftReport]:
    """Two passes over the tasks in fresh random orders; from the second on, the
    level at position `swapped` answers with the model at `replacement`."""
    reports = []
    half = len(world.requests)
    for seed in range(n_orders):
        first, second = orders(world.requests, 2 * seed + 2)[-2:]
        stream = first + second
        switch = SwitchLevel(world.levels[swapped], world.levels[replacement])
        levels = [switch if p == swapped else lvl for p, lvl in enumerate(world.levels)]

        def truth(position: int, request: CodeRequest, _switch: SwitchLevel = switch) -> bool:
            source = replacement if position == swapped and _switch.switched else position
            return world.correct[source][request.id]

        result = world.learned(
            learning, _switching(stream, switch, half), "drift", levels, truth, switch_at=half
        )
        n1, p1, c1 = result.phase_results[0]
        top_half = world.top_cost_usd
        learner = world.last_learner
        assert learner is not None
        curve = result.regret_curves.get(swapped + 1, [])
        reports.append(
            DriftReport(
                name="drift detection on" if learning.drift else "drift detection off",
                pass_before=p1 / n1,
                pass_after=(result.n_passed - p1) / (result.n - n1),
                cost_pct_before=100 * c1 / top_half,
                cost_pct_after=100 * (result.cost_usd - c1) / top_half,
                regret_before=result.phase_curves.get(swapped + 1, [0.0])[-1],
                regret_after=curve[-1] if curve else 0.0,
                settle_rounds=settle_index(curve, 0) if curve else None,
                n_restarts=sum(p.n_restarts for p in learner.policies),
                curve_after=curve,
            )
        )
    return reports


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt: Any, fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def plot_front(
    fronts: dict[str, list[tuple[float, float, float]]],
    baselines: Sequence[dict[str, Any]],
    path: Path,
    title: str,
) -> None:
    """`fronts[name]` = [(weight of a top call, cost %, pass@1)] as mu varies."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in fronts.items():
        ax.plot([c for _, c, _ in points], [100 * q for _, _, q in points], marker="o", label=name)
        for w, c, q in points:
            ax.annotate(
                f"{w:g}", (c, 100 * q), fontsize=6, xytext=(3, -8), textcoords="offset points"
            )
    for row in baselines:
        ax.scatter(row["cost_pct_mean"], 100 * row["pass_at_1_mean"], marker="x", color="black")
        ax.annotate(row["name"], (row["cost_pct_mean"], 100 * row["pass_at_1_mean"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    _finish(plt, fig, ax, path, title, "cost, % of the top level alone (log)",
            "pass@1 on hidden tests, %")  # fmt: skip


def plot_drift(reports: dict[str, list[DriftReport]], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, (name, runs) in zip(("tab:blue", "tab:orange"), reports.items(), strict=False):
        for i, run in enumerate(runs):
            ax.plot(run.curve_after, color=color, lw=1, alpha=0.8, label=name if i == 0 else None)
    _finish(plt, fig, ax, path, title, "rounds at the swapped level after the swap",
            "cumulative regret since the swap")  # fmt: skip


@dataclass
class LadderLearnReport:
    text: str
    payload: dict[str, Any]
    pngs: list[Path]


def ladder_learn(
    world: LadderWorld,
    out_dir: Path,
    n_orders: int = 5,
    weight: float = 0.3,
    weights: Sequence[float] = (0.03, 0.1, 0.3, 1.0, 3.0),
) -> LadderLearnReport:
    """Every table and plot of `bench --learn` on the recorded ladder. `weight`
    sets mu: one top-level call costs as much loss as `weight` wrong answers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    top = world.top_cost_usd
    n_levels = len(world.levels)
    baselines = [summarise([world.alone(p)], top) for p in reversed(range(n_levels))]
    baselines.append(summarise([world.fixed_cascade()], top))
    baselines.append(summarise([world.oracle()], top))
    streams = orders(world.requests, n_orders)
    rows = list(baselines)
    headline: dict[str, list[StreamResult]] = {}
    sources: tuple[LabelSource, ...] = ("imitation", "reference")
    for labels in sources:
        learning = LearningConfig(enabled=True, mu=mu_for(world, weight), labels=labels)
        name = f"learned, {labels} labels"
        headline[labels] = [world.learned(learning, order, name) for order in streams]
        rows.append(summarise(headline[labels], top))
    no_gate = LearningConfig(enabled=True, mu=mu_for(world, weight), level0=False)
    rows.append(summarise([world.learned(no_gate, o, "learned, no level 0") for o in streams], top))
    for share in (0.1, 0.3):
        # The budget knob instead of mu: mu starts at the same value and is steered.
        budgeted = LearningConfig(enabled=True, mu=mu_for(world, weight), budget_top_share=share)
        name = f"learned, budget: {100 * share:.0f}% reach top"
        rows.append(summarise([world.learned(budgeted, o, name) for o in streams], top))
    fronts: dict[str, list[tuple[float, float, float]]] = {}
    front_rows = []
    for labels in sources:
        fronts[f"learned, {labels} labels"] = []
        for w in weights:
            learning = LearningConfig(enabled=True, mu=mu_for(world, w), labels=labels)
            row = summarise([world.learned(learning, o, f"{labels} w={w:g}") for o in streams], top)
            front_rows.append(row)
            fronts[f"learned, {labels} labels"].append(
                (w, row["cost_pct_mean"], row["pass_at_1_mean"])
            )
    drift_reports: dict[str, list[DriftReport]] = {}
    for detect in (True, False):
        learning = LearningConfig(
            enabled=True, mu=mu_for(world, weight), labels="imitation", drift=detect
        )
        # gpt-3.5 (position 2) swapped for starcoder's answers, at gpt-3.5's price.
        reports = drift_run(world, learning, n_levels - 2, 0, n_orders)
        drift_reports[reports[0].name] = reports
    overhead = level0_overhead_us(world.requests)

    regret_png = out_dir / "learn-regret.png"
    regret_title = "cumulative regret vs best fixed threshold ({} labels, w={:g})"
    plot_regret(headline["imitation"], regret_png, regret_title.format("imitation", weight))
    regret_ref_png = out_dir / "learn-regret-reference.png"
    plot_regret(headline["reference"], regret_ref_png, regret_title.format("reference", weight))
    front_png = out_dir / "learn-front.png"
    plot_front(
        fronts, baselines, front_png, "cost/quality as mu varies (label: weight of a top call)"
    )
    drift_png = out_dir / "learn-drift.png"
    plot_drift(drift_reports, drift_png, "gpt-3.5 swapped for starcoder halfway")

    lines = [
        f"Learned cascade on the HumanEval ladder: {len(world.requests)} tasks, "
        f"{n_orders} random orders; mu = {weight:g} / mean top-level cost "
        f"= {mu_for(world, weight):.1f} per USD",
        format_rows(rows),
        "",
        "imitation-label accuracy (vs hidden tests): "
        + ", ".join(
            f"{r['name']}: {100 * r['label_accuracy']:.1f}% of {r['n_labels_per_order']:.0f}/order"
            for r in rows
            if r["label_accuracy"] is not None
        ),
        "",
        "Front as mu varies (w = weight of one top-level call in wrong answers)",
        format_rows(front_rows),
        "",
        f"Drift: {len(world.requests)} requests, then gpt-3.5 answers with starcoder's "
        f"recordings for {len(world.requests)} more ({n_orders} runs each)",
    ]
    header = (
        f"{'':<22}{'pass@1 before':>14}{'after':>8}{'cost % before':>15}{'after':>8}"
        f"{'regret before':>15}{'after':>8}{'settle':>8}{'restarts':>10}"
    )
    lines.append(header)
    for name, reports in drift_reports.items():
        settles = [r.settle_rounds for r in reports]
        settled = [x for x in settles if x is not None]
        settle_text = f"{statistics.median(settled):.0f}" if settled else "never"
        lines.append(
            f"{name:<22}"
            f"{100 * statistics.mean(r.pass_before for r in reports):>13.1f}%"
            f"{100 * statistics.mean(r.pass_after for r in reports):>7.1f}%"
            f"{statistics.mean(r.cost_pct_before for r in reports):>14.1f}%"
            f"{statistics.mean(r.cost_pct_after for r in reports):>7.1f}%"
            f"{statistics.mean(r.regret_before for r in reports):>15.1f}"
            f"{statistics.mean(r.regret_after for r in reports):>8.1f}"
            f"{settle_text:>8}"
            f"{statistics.mean(r.n_restarts for r in reports):>10.1f}"
        )
    lines.append(
        "settle: median rounds at the swapped level after the swap until its regret grows "
        "by at most 0.02 per round from then on"
    )
    lines += [
        "",
        f"Level-0 overhead (featurize + predict + learn), {overhead['n']:.0f} requests: "
        f"median {overhead['median_us']:.1f} us, p99 {overhead['p99_us']:.1f} us",
    ]
    payload = {
        "n_tasks": len(world.requests),
        "n_orders": n_orders,
        "weight_of_top_call": weight,
        "mu_per_usd": mu_for(world, weight),
        "rows": rows,
        "front": front_rows,
        "drift": {
            name: [{k: v for k, v in r.__dict__.items() if k != "curve_after"} for r in reports]
            for name, reports in drift_reports.items()
        },
        "level0_overhead": overhead,
    }
    return LadderLearnReport(
        "\n".join(lines), payload, [regret_png, regret_ref_png, front_png, drift_png]
    )


def real_learn(
    config: AppConfig,
    requests: Sequence[CodeRequest],
    sandbox: Sandbox,
    grader: Sandbox,
    out_dir: Path,
    weight: float,
    progress: Progress | None = None,
) -> LadderLearnReport:
    """The learned cascade on live models, with and without the exemplar memory,
    beside each level alone and the fixed-threshold cascade (one pass, in order)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = caching_levels(config, sandbox)
    wrap = progress or (lambda items, _label: items)
    verdicts: dict[tuple[str, str], bool] = {}

    def right(request: CodeRequest, code: str) -> bool:
        if (request.id, code) not in verdicts:
            verdicts[(request.id, code)] = bool(grade_many(grader, [(request, code)])[0])
        return verdicts[(request.id, code)]

    rows: list[dict[str, Any]] = []
    top_results = StreamResult(f"{levels[-1].name} alone")
    for request in wrap(requests, f"{levels[-1].name} alone"):
        outcome = levels[-1].attempt(request)
        top_results.add(len(levels), right(request, outcome.code), outcome.attempt.cost_usd)
        top_results.n_reached_top += 1
    top_cost = top_results.cost_usd
    mu = weight * len(requests) / top_cost if top_cost else config.learning.mu
    for position in reversed(range(len(levels) - 1)):
        result = StreamResult(f"{levels[position].name} alone")
        for request in wrap(requests, result.name):
            outcome = levels[position].attempt(request)
            result.add(position + 1, right(request, outcome.code), outcome.attempt.cost_usd)
        rows.append(summarise([result], top_cost))
    rows.insert(0, summarise([top_results], top_cost))
    fixed = StreamResult("fixed-threshold cascade")
    engine = CascadeEngine(levels)
    for request in wrap(requests, fixed.name):
        answer = engine.process_one(request)
        fixed.add(answer.level, right(request, answer.code), answer.cost_usd)
        fixed.n_reached_top += answer.level == len(levels)
    rows.append(summarise([fixed], top_cost))
    extra: dict[str, dict[str, float]] = {}
    for memory_on in (False, True):
        name = "learned, exemplar memory " + ("on" if memory_on else "off")
        learning = config.learning.model_copy(
            update={
                "enabled": True,
                "mu": mu,
                "memory": config.learning.memory.model_copy(update={"enabled": memory_on}),
            }
        )
        learner = CascadeLearner(learning, len(levels))
        online = OnlineCascadeEngine(levels, learner, Labeler(sandbox, learning.labels))
        result = StreamResult(name)
        level1_right = level1_with_examples = 0
        for request in wrap(requests, name):
            shown = [(e.prompt, e.code) for _, e in learner.memory.similar(request)]
            level1_with_examples += bool(shown)
            # Level 1 alone, with exactly the exemplars the cascade shows it now.
            level1_right += right(request, levels[0].attempt(request, shown).code)
            answer = online.process_one(request)
            result.add(answer.level, right(request, answer.code), answer.cost_usd)
            result.n_reached_top += answer.attempts[-1].level == len(levels)
            result.n_explored += bool(answer.explored_levels)
            result.n_skipped += bool(answer.skipped_levels)
        rows.append(summarise([result], top_cost))
        extra[name] = {
            "level1_alone_pass_at_1": level1_right / len(requests),
            "share_answered_at_level1": result.answered_at.get(1, 0) / len(requests),
            "prompts_with_exemplars": level1_with_examples / len(requests),
            "memory_size": float(len(learner.memory)),
        }
    lines = [
        f"Learned cascade on live models, first {len(requests)} requests in order; "
        f"mu = {weight:g} / mean top-level cost = {mu:.1f} per USD",
        format_rows(rows),
        "",
        f"{'':<36}{'level 1 alone pass@1':>22}{'answered at L1':>16}{'prompts w/ examples':>21}",
    ]
    for name, figures in extra.items():
        lines.append(
            f"{name:<36}{100 * figures['level1_alone_pass_at_1']:>21.1f}%"
            f"{100 * figures['share_answered_at_level1']:>15.1f}%"
            f"{100 * figures['prompts_with_exemplars']:>20.1f}%"
        )
    payload = {"n_requests": len(requests), "mu_per_usd": mu, "rows": rows, "memory": extra}
    return LadderLearnReport("\n".join(lines), payload, [])
