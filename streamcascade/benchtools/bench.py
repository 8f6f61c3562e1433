"""Benchmarks: a cascade against each of its levels alone, on one request stream.

Every level is deterministic (greedy or seeded sampling, or a recording), so a
level's attempt at a request is computed once and shared by the configuration
that runs it alone and the cascade that reaches it: the cascade's figures are
composed from exactly the attempts each level made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcascade.cascade import CascadeEngine, Level, LevelOutcome
from streamcascade.cascade.engine import pool_for
from streamcascade.cascade.level import Shape
from streamcascade.config import AppConfig
from streamcascade.metrics import RunSummary, format_table
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck import extract_asserts, extract_program, pool_tests
from streamcascade.selfcheck.execution import run_candidates
from streamcascade.selfcheck.scoring import select_by_dual_agreement, select_by_pass_rate
from streamcascade.tasks import grade_all

log = logging.getLogger(__name__)


class CachingLevel(Level):
    """A level that remembers its outcome per request id."""

    def __init__(self, inner: Level) -> None:
        super().__init__(inner.index, inner.config, inner.backend, inner.sandbox)
        self._cache: dict[
            tuple[str, tuple[tuple[str, str], ...], Shape | None, float | None], LevelOutcome
        ] = {}
        self._steps: dict[str, LevelOutcome] = {}

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        missing = [r for r in requests if r.id not in self._steps]
        if missing:
            self._steps.update(zip((r.id for r in missing), super().step(missing), strict=True))
        return [self._steps[r.id] for r in requests]

    def attempt(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]] = (),
        shape: Shape | None = None,
        threshold: float | None = None,
    ) -> LevelOutcome:
        if not exemplars and shape is None and threshold is None:
            return self.step([request])[0]  # the same attempt: one cache
        key = (request.id, tuple(exemplars), shape, threshold)
        if key not in self._cache:
            self._cache[key] = super().attempt(request, exemplars, shape, threshold)
        return self._cache[key]


def caching_levels(config: AppConfig, sandbox: Sandbox) -> list[CachingLevel]:
    """Every level of `config`, each remembering its attempts, models loaded once."""
    pool = pool_for(config)
    return [
        CachingLevel(Level(i + 1, lc, pool.get(lc.backend), sandbox))
        for i, lc in enumerate(config.levels)
    ]


@dataclass
class BenchReport:
    summaries: list[RunSummary]
    reference_cost_usd: float
    levels: list[int]

    def table(self) -> str:
        return format_table(self.summaries, self.levels, self.reference_cost_usd)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": "top level alone",
            "reference_cost_usd": self.reference_cost_usd,
            "configurations": [s.as_dict(self.reference_cost_usd) for s in self.summaries],
        }


def run_bench(
    config: AppConfig,
    requests: Sequence[CodeRequest],
    sandbox: Sandbox,
    grader: Sandbox,
    extra: Sequence[tuple[str, Sequence[int]]] = (),
    progress: Callable[[Iterable[CodeRequest], str], Iterable[CodeRequest]] | None = None,
) -> BenchReport:
    """Run the full cascade, each level alone, and any `extra` (name, level
    positions) sub-cascades over `requests`; grade every answer."""
    levels = caching_levels(config, sandbox)
    top = len(levels) - 1
    plans: list[tuple[str, list[Level]]] = [
        (f"{lvl.name} alone", [lvl]) for lvl in reversed(levels)
    ]
    plans.append(("cascade " + " > ".join(lvl.name for lvl in levels), list(levels)))
    for name, positions in extra:
        plans.append((name, [levels[p] for p in positions]))
    wrap = progress or (lambda items, _label: items)
    summaries = []
    for name, chosen in plans:
        engine = CascadeEngine(chosen)
        summary = RunSummary(name)
        answers = [engine.process_one(r) for r in wrap(requests, name)]
        graded = grade_all(grader, [(r, a.code) for r, a in zip(requests, answers, strict=True)])
        for answer, passed in zip(answers, graded, strict=True):
            summary.add(answer, passed)
        summaries.append(summary)
        log.info("%s: pass@1 %s, cost %.6f USD", name, summary.pass_at_1, summary.cost_usd)
    reference = summaries[0].cost_usd  # the top level alone runs first
    assert summaries[0].name == f"{levels[top].name} alone"
    return BenchReport(summaries, reference, [lvl.index for lvl in levels])


def plot_cost_quality(report: BenchReport, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in report.summaries:
        if s.pass_at_1 is None:
            continue
        pct = 100 * s.cost_usd / report.reference_cost_usd if report.reference_cost_usd else 0.0
        ax.scatter(pct, 100 * s.pass_at_1)
        ax.annotate(
            s.name, (pct, 100 * s.pass_at_1), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel("cost, % of the top level alone")
    ax.set_ylabel("pass@1 on hidden tests, %")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25, y=0.15)  # room for the labels
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class CodeTReport:
    n_tasks: int
    random_pick: float
    first_sample: float
    max_pass_rate: float
    dual_agreement: float
    mean_tests_per_task: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)

    def table(self) -> str:
        rows = [
            ("random pick (expected)", self.random_pick),
            ("first sample", self.first_sample),
            ("max pass rate", self.max_pass_rate),
            ("dual execution agreement", self.dual_agreement),
        ]
        lines = [
            f"CodeT replay: {self.n_tasks} tasks, "
            f"{self.mean_tests_per_task:.0f} distinct generated tests per task"
        ]
        lines += [f"  {name:<28} pass@1 {100 * value:5.1f}%" for name, value in rows]
        return "\n".join(lines)


def codet_bench(
    directory: Path,
    sandbox: Sandbox,
    grader: Sandbox,
    problems: dict[str, dict[str, Any]],
    max_test_lines: int = 5,
    limit: int | None = None,
    progress: Callable[[Iterable[str], str], Iterable[str]] | None = None,
) -> CodeTReport:
    """CodeT on its own recordings: 100 solutions and 100 test samples per task."""
    from streamcascade.backends.replay import CodeTReplayBackend

    backend = CodeTReplayBackend(directory)
    task_ids = list(backend.prompts)[:limit]
    wrap = progress or (lambda items, _label: items)
    random_total = first_total = rate_total = dual_total = 0.0
    tests_total = 0
    for task_id in wrap(task_ids, "codet"):
        problem = problems[task_id]
        prompt, entry_point = backend.prompts[task_id], problem["entry_point"]
        solutions = backend.solutions[task_id]
        tests = pool_tests(
            [extract_asserts(t, entry_point, max_test_lines) for t in backend.tests[task_id]]
        )
        tests_total += len(tests)
        programs = [extract_program(s, prompt, entry_point) for s in solutions]
        passed, _ = run_candidates(sandbox, programs, tests)
        unique = list(dict.fromkeys(programs))
        request = CodeRequest(
            id=task_id,
            prompt=problem["prompt"],
            entry_point=entry_point,
            reference_tests=problem["test"],
        )
        correct_by_program = dict(
            zip(unique, grade_all(grader, [(request, p) for p in unique]), strict=True)
        )
        correct = [bool(correct_by_program[p]) for p in programs]
        # A uniform random pick's pass@1, in expectation (exactly, not sampled).
        random_total += sum(correct) / len(correct)
        first_total += correct[0]
        if tests:
            rate_total += correct[select_by_pass_rate(passed).index]
            dual_total += correct[select_by_dual_agreement(passed).index]
        else:
            rate_total += correct[0]
            dual_total += correct[0]
    n = len(task_ids)
    return CodeTReport(
        n_tasks=n,
        random_pick=random_total / n,
        first_sample=first_total / n,
        max_pass_rate=rate_total / n,
        dual_agreement=dual_total / n,
        mean_tests_per_task=tests_total / n,
    )
