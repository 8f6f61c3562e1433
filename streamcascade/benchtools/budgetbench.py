"""`streamcascade bench --budget`: the budget heuristic on recorded data.

Level 1 is CodeGen-16B from CodeT's recordings (up to all 100 of its solutions
and 100 test generations per task; about half of its test generations are
empty or off-topic, so small t often means no tests); level 2 is GPT-4 from
the ladder.
Every arm (k, t, L, threshold) of level 1 is evaluated exactly on every task
from one sandbox run per task (all solutions against the union of tests;
smaller arms read sub-matrices), so offline choice, online bandit and the best
arm in hindsight are compared on the same outcomes.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcascade.backends.replay import CodeTReplayBackend, TokenCounter
from streamcascade.evaluation import grade_many
from streamcascade.ladder import LadderSpec, ladder_config, ladder_requests, problems_file
from streamcascade.learning.budget import (
    Arm,
    ArmFigures,
    BudgetedBandit,
    choose_for_budget,
    pareto_front,
)
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck import extract_asserts, extract_program, pool_tests
from streamcascade.selfcheck.execution import run_candidates
from streamcascade.selfcheck.extract import normalize_assert
from streamcascade.selfcheck.scoring import select_by_dual_agreement

K_GRID = (1, 5, 20, 100)
T_GRID = (0, 1, 5, 20, 100)
L_GRID = (1, 3, 5)
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)

Progress = Callable[[Iterable[str], str], Iterable[str]]


@dataclass
class TaskTable:
    """Level 1's outcome under every (k, t, L), and level 2's, for one task."""

    # (k, t, L) -> (acceptance score, right, cost_usd) of level 1
    level1: dict[tuple[int, int, int], tuple[float, bool, float]]
    level2_right: bool
    level2_cost_usd: float

    def outcome(self, arm: Arm) -> tuple[bool, float]:
        score, right, cost = self.level1[(arm.k_solutions, arm.t_test_generations,
                                          arm.max_test_lines)]  # fmt: skip
        if score >= arm.threshold:
            return right, cost
        return self.level2_right, cost + self.level2_cost_usd


def all_arms() -> list[Arm]:
    return [
        Arm(k, t, lines, threshold)
        for k in K_GRID
        for t in T_GRID
        for lines in (L_GRID if t else (1,))
        for threshold in THRESHOLDS
    ]


def build_tables(
    codet_dir: Path,
    ladder_dir: Path,
    spec: LadderSpec,
    codet_price: tuple[float, float],
    sandbox: Sandbox,
    grader: Sandbox,
    problems: dict[str, dict[str, Any]],
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, TaskTable]:
    from streamcascade.backends import BackendPool
    from streamcascade.cascade import Level

    backend = CodeTReplayBackend(codet_dir)
    tokens = TokenCounter()
    with (codet_dir / "prompts-for-tests.jsonl").open(encoding="utf-8") as handle:
        test_prompts = {row["task_id"]: row["prompt"] for row in map(json.loads, handle)}
    top = ladder_config(ladder_dir, spec).levels[-1]
    top_level = Level(2, top, BackendPool(None, False).get(top.backend), sandbox)
    requests = {r.id: r for r in ladder_requests(problems_file(ladder_dir, spec))[0]}
    price_in, price_out = codet_price
    wrap = progress or (lambda items, _label: items)
    tables = {}
    for task_id in wrap(list(backend.prompts)[:limit], "tasks"):
        problem, prompt = problems[task_id], backend.prompts[task_id]
        entry = problem["entry_point"]
        texts = backend.solutions[task_id][: max(K_GRID)]
        programs = [extract_program(s, prompt, entry) for s in texts]
        generations = [
            extract_asserts(t, entry, max(L_GRID)) for t in backend.tests[task_id][: max(T_GRID)]
        ]
        union = pool_tests(generations)
        column = {normalize_assert(test): j for j, test in enumerate(union)}
        passed, _ = run_candidates(sandbox, programs, union)
        request = CodeRequest(id=task_id, prompt=problem["prompt"], entry_point=entry,
                              reference_tests=problem["test"])  # fmt: skip
        unique = list(dict.fromkeys(programs))
        verdict = dict(zip(unique, grade_many(grader, [(request, p) for p in unique]), strict=True))
        out_solutions = [tokens.count(s) for s in texts]
        out_tests = [tokens.count(t) for t in backend.tests[task_id][: max(T_GRID)]]
        in_solution, in_tests = tokens.count(prompt), tokens.count(test_prompts[task_id])
        level1 = {}
        for k in K_GRID:
            for t in T_GRID:
                for lines in L_GRID if t else (1,):
                    columns = sorted(
                        {column[normalize_assert(a)] for g in generations[:t] for a in g[:lines]}
                    )
                    if columns:
                        sub = [[row[j] for j in columns] for row in passed[:k]]
                        selection = select_by_dual_agreement(sub)
                        index, score = selection.index, selection.score
                    else:
                        index, score = 0, 0.0
                    tokens_in = in_solution + (in_tests if t else 0)
                    tokens_out = sum(out_solutions[:k]) + sum(out_tests[:t])
                    cost = (tokens_in * price_in + tokens_out * price_out) / 1e6
                    level1[(k, t, lines)] = (score, bool(verdict[programs[index]]), cost)
        top_outcome = top_level.attempt(requests[task_id])
        [top_right] = grade_many(grader, [(requests[task_id], top_outcome.code)])
        tables[task_id] = TaskTable(level1, bool(top_right), top_outcome.attempt.cost_usd)
    return tables


def _figures(tables: Sequence[TaskTable], arms: Sequence[Arm]) -> list[ArmFigures]:
    figures = []
    for arm in arms:
        outcomes = [table.outcome(arm) for table in tables]
        figures.append(
            ArmFigures(
                arm,
                cost_usd=sum(c for _, c in outcomes) / len(outcomes),
                accuracy=sum(r for r, _ in outcomes) / len(outcomes),
            )
        )
    return figures


@dataclass
class BudgetRow:
    budget_pct: float
    offline_arm: str
    offline: tuple[float, float]  # (accuracy, cost % of level 2 alone) on the rest
    bandit: tuple[float, float]
    hindsight_arm: str
    hindsight: tuple[float, float]


def budget_bench(
    tables: dict[str, TaskTable],
    n_orders: int = 5,
    validation_share: float = 0.25,
    budget_shares: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
) -> tuple[str, dict[str, Any], list[ArmFigures], list[ArmFigures]]:
    arms = all_arms()
    task_ids = list(tables)
    n_valid = max(1, int(validation_share * len(task_ids)))
    top_cost = statistics.mean(t.level2_cost_usd for t in tables.values())
    top_accuracy = statistics.mean(t.level2_right for t in tables.values())
    results: dict[float, list[BudgetRow]] = {b: [] for b in budget_shares}
    first_figures: list[ArmFigures] = []
    first_front: list[ArmFigures] = []
    for seed in range(n_orders):
        order = list(task_ids)
        random.Random(seed).shuffle(order)
        valid = [tables[t] for t in order[:n_valid]]
        rest = [tables[t] for t in order[n_valid:]]
        figures = _figures(valid, arms)
        front = pareto_front(figures)
        if seed == 0:
            first_figures, first_front = figures, front
        rest_figures = _figures(rest, arms)
        for share in budget_shares:
            budget = share * top_cost
            chosen = choose_for_budget(front, budget)
            offline = next(f for f in rest_figures if f.arm == chosen.arm)
            bandit = BudgetedBandit(front, budget)
            right = spent = 0.0
            for table in rest:
                index = bandit.pull()
                was_right, cost = table.outcome(bandit.arms[index])
                bandit.update(index, was_right, cost)
                right += was_right
                spent += cost
            hindsight = choose_for_budget(pareto_front(rest_figures), budget)
            results[share].append(
                BudgetRow(
                    100 * share,
                    chosen.arm.label(),
                    (offline.accuracy, 100 * offline.cost_usd / top_cost),
                    (right / len(rest), 100 * spent / len(rest) / top_cost),
                    hindsight.arm.label(),
                    (hindsight.accuracy, 100 * hindsight.cost_usd / top_cost),
                )
            )
    lines = [
        f"Budget heuristic: level 1 CodeGen-16B (CodeT recordings, {len(arms)} arms: "
        f"k in {K_GRID}, t in {T_GRID}, L in {L_GRID}, threshold in {THRESHOLDS}), "
        f"level 2 GPT-4; {len(task_ids)} tasks, validation prefix {n_valid}, "
        f"{n_orders} orders. GPT-4 alone: pass@1 {100 * top_accuracy:.1f}%.",
        f"{'budget, % of GPT-4':>19}  {'offline arm (order 0)':<28}{'offline':>16}"
        f"{'online bandit':>16}{'best in hindsight':>20}",
    ]
    payload_rows = []
    for share, rows in results.items():

        def mean(pairs: list[tuple[float, float]]) -> tuple[float, float]:
            return statistics.mean(a for a, _ in pairs), statistics.mean(c for _, c in pairs)

        off, ban, hin = (
            mean([getattr(r, f) for r in rows]) for f in ("offline", "bandit", "hindsight")
        )
        lines.append(
            f"{100 * share:>18.0f}%  {rows[0].offline_arm:<28}"
            f"{100 * off[0]:>8.1f}% @{off[1]:>5.1f}%"
            f"{100 * ban[0]:>8.1f}% @{ban[1]:>5.1f}%"
            f"{100 * hin[0]:>12.1f}% @{hin[1]:>5.1f}%"
        )
        payload_rows.append(
            {
                "budget_pct_of_top": 100 * share,
                "offline": {"pass_at_1": off[0], "cost_pct": off[1]},
                "bandit": {"pass_at_1": ban[0], "cost_pct": ban[1]},
                "hindsight": {"pass_at_1": hin[0], "cost_pct": hin[1]},
                "offline_arms": [r.offline_arm for r in rows],
                "hindsight_arms": [r.hindsight_arm for r in rows],
            }
        )
    lines.append("pass@1 @ mean cost on the stream after the validation prefix, mean of orders")
    payload = {"n_tasks": len(task_ids), "n_validation": n_valid, "rows": payload_rows,
               "top_pass_at_1": top_accuracy}  # fmt: skip
    return "\n".join(lines), payload, first_figures, first_front


def plot_budget_front(
    figures: Sequence[ArmFigures], front: Sequence[ArmFigures], top_cost: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([100 * f.cost_usd / top_cost for f in figures], [100 * f.accuracy for f in figures],
               s=6, alpha=0.4, label="arms (k, t, L, threshold)")  # fmt: skip
    ax.plot([100 * f.cost_usd / top_cost for f in front], [100 * f.accuracy for f in front],
            marker="o", color="tab:red", label="Pareto front")  # fmt: skip
    ax.set_xlabel("cost, % of GPT-4 alone")
    ax.set_ylabel("pass@1 on the validation prefix, %")
    ax.set_title("CodeGen-16B > GPT-4: arms on the validation prefix (order 0)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else 0.0


SERVICE_K_GRID = (1, 5, 20)
SERVICE_T_GRID = (0, 1, 5, 20)


def service_budget(
    codet_dir: Path,
    ladder_dir: Path,
    spec: LadderSpec,
    codet_price: tuple[float, float],
    sandbox: Sandbox,
    grader: Sandbox,
    budget_shares: Sequence[float] = (0.1, 0.2, 0.4),
    label_share: float = 0.05,
    validation_requests: int = 40,
    limit: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[str, dict[str, Any]]:
    """The budget heuristic inside the service: OnlineCascadeEngine with budget
    arms on a CodeT-replay level 1 below GPT-4, one random order of the stream,
    imitation labels only (hidden tests grade the published answers afterwards).
    The first `validation_requests` requests sweep every arm and go to GPT-4."""
    from streamcascade.backends import BackendPool
    from streamcascade.backends.replay import ReplayBackendConfig
    from streamcascade.benchtools.bench import CachingLevel
    from streamcascade.cascade import Level
    from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
    from streamcascade.config import BudgetArmsConfig, LearningConfig, LevelConfig
    from streamcascade.learning.learner import CascadeLearner

    wrap = progress or (lambda items, _label: items)
    requests = ladder_requests(problems_file(ladder_dir, spec))[0]
    known = set(CodeTReplayBackend(codet_dir).prompts)
    requests = [r for r in requests if r.id in known][:limit]
    random.Random(seed).shuffle(requests)
    pool = BackendPool(None, False)
    top_config = ladder_config(ladder_dir, spec).levels[-1]
    top = CachingLevel(Level(2, top_config, pool.get(top_config.backend), sandbox))
    price_in, price_out = codet_price
    level1_config = LevelConfig(
        name="codegen-16b",
        backend=ReplayBackendConfig(format="codet", path=codet_dir, name="codegen-16b-mono"),
        scoring="dual_agreement",
        max_test_lines=max(L_GRID),
        price_in_usd_per_1m=price_in,
        price_out_usd_per_1m=price_out,
    )
    level1 = CachingLevel(Level(1, level1_config, pool.get(level1_config.backend), sandbox))
    by_id = {r.id: r for r in requests}
    top_outcomes = [top.attempt(by_id[i]) for i in wrap(list(by_id), "GPT-4 alone")]
    top_cost = statistics.mean(o.attempt.cost_usd for o in top_outcomes)
    graded = grade_many(grader, [(r, o.code) for r, o in zip(requests, top_outcomes, strict=True)])
    top_right = [bool(x) for x in graded]
    labeler = Labeler(sandbox, "imitation")
    n_valid = min(validation_requests, len(requests))
    rest = slice(n_valid, None)
    lines = [
        f"Budget arms in service: level 1 CodeGen-16B (CodeT replay; k in {SERVICE_K_GRID}, "
        f"t in {SERVICE_T_GRID}, L in {L_GRID}, threshold in {THRESHOLDS}), level 2 GPT-4; "
        f"{len(requests)} tasks in one order (seed {seed}), validation prefix {n_valid}, "
        f"imitation labels, {100 * label_share:g}% of accepted answers also sent up for one.",
        f"GPT-4 alone: pass@1 {100 * _mean(top_right[rest]):.1f}% after the "
        f"prefix, mean cost {top_cost:.5f} USD.",
        f"{'budget, % of GPT-4':>19}  {'offline choice':<28}{'after the prefix':>18}"
        f"{'whole stream':>18}{'at level 1':>12}",
    ]
    rows = []
    for share in budget_shares:
        arms = BudgetArmsConfig(
            enabled=True,
            budget_usd_per_request=share * top_cost,
            validation_requests=n_valid,
            k_grid=list(SERVICE_K_GRID),
            t_grid=list(SERVICE_T_GRID),
            l_grid=list(L_GRID),
            thresholds=list(THRESHOLDS),
            label_share=label_share,
        )
        config = LearningConfig(
            enabled=True, level0=False, labels="imitation", arms=arms, seed=seed
        )
        learner = CascadeLearner(config, 2)
        engine = OnlineCascadeEngine([level1, top], learner, labeler)
        answers = [
            engine.process_one(by_id[i]) for i in wrap(list(by_id), f"budget {100 * share:.0f}%")
        ]
        right = [
            bool(x)
            for x in grade_many(
                grader, [(r, a.code) for r, a in zip(requests, answers, strict=True)]
            )
        ]
        costs = [a.cost_usd for a in answers]
        assert learner.arms is not None
        chosen = (
            choose_for_budget(learner.arms.front, share * top_cost) if learner.arms.front else None
        )
        after = (
            _mean(right[rest]),
            _mean(costs[rest]) / top_cost,
        )
        whole = (statistics.mean(right), statistics.mean(costs) / top_cost)
        at_level1 = statistics.mean(a.level == 1 for a in answers[rest]) if answers[rest] else 0.0
        label = chosen.arm.label() if chosen else "-"
        lines.append(
            f"{100 * share:>18.0f}%  {label:<28}{100 * after[0]:>9.1f}% @{100 * after[1]:>5.1f}%"
            f"{100 * whole[0]:>9.1f}% @{100 * whole[1]:>5.1f}%{100 * at_level1:>11.1f}%"
        )
        rows.append(
            {
                "budget_pct_of_top": 100 * share,
                "offline_choice": label,
                "after_prefix": {"pass_at_1": after[0], "cost_pct": 100 * after[1]},
                "whole_stream": {"pass_at_1": whole[0], "cost_pct": 100 * whole[1]},
                "answered_at_level1": at_level1,
                "front": [f.arm.label() for f in learner.arms.front],
            }
        )
    lines.append("pass@1 (hidden tests) @ mean cost, % of GPT-4 alone on the same requests")
    payload = {"n_tasks": len(requests), "n_validation": n_valid, "rows": rows,
               "top_pass_at_1_after_prefix": _mean(top_right[rest])}  # fmt: skip
    return "\n".join(lines), payload
