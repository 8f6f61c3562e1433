"""One level of the cascade: generate solutions and tests, run them, score, decide."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streamcascade.backends.base import Backend, Completion, GenerationParams
from streamcascade.cascade.prompts import (
    STOP,
    classification_prompt,
    parse_label,
    solution_prompt,
    tests_prompt,
)
from streamcascade.config import LevelConfig
from streamcascade.learning.budget import Arm, Shape
from streamcascade.sandbox import ExecutionResult, Sandbox
from streamcascade.schemas import Attempt, CodeRequest, TestSummary
from streamcascade.selfcheck import extract_asserts, extract_program, pool_tests, select
from streamcascade.selfcheck.execution import run_candidates
from streamcascade.selfcheck.extract import normalize_assert

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """One generation and sandbox pass: solutions, tests, and the pass matrix
    of every solution on the pooled tests."""

    solutions: list[Completion]
    test_completions: list[Completion]
    generated: list[list[str]]
    """The asserts of each test generation, in order."""
    programs: list[str]
    tests: list[str]
    passed: list[list[bool]]
    results: dict[str, ExecutionResult]
    generation_s: float
    sandbox_s: float


@dataclass
class LevelOutcome:
    """An attempt record plus the code it would answer with."""

    attempt: Attempt
    code: str
    tests: list[str] = field(default_factory=list)
    """The pooled asserts the attempt ran (visible and generated)."""
    label: str | None = None
    """A classification attempt's majority label (None: no vote parsed)."""


def _cost_usd(config: LevelConfig, tokens_in: int, tokens_out: int) -> float:
    return (
        tokens_in * config.price_in_usd_per_1m + tokens_out * config.price_out_usd_per_1m
    ) / 1_000_000


def _summary(result: ExecutionResult, columns: Sequence[int]) -> TestSummary:
    """The result on the tests at `columns` only."""
    status = [result.test_status[j] for j in columns] if result.test_status else []
    failures = [s for s in status if s != "passed"]
    if result.load_status != "ok":
        failures.insert(0, f"load {result.load_status}")
    return TestSummary(
        n_tests=len(status),
        n_passed=sum(s == "passed" for s in status),
        n_timed_out=sum(s == "timed out" for s in status),
        first_failure=failures[0][:300] if failures else None,
    )


class Level:
    """A model plus the seed paper's self-check: k solutions, t test generations
    of at most L asserts each, pooled with the request's visible tests; every
    solution runs against every test; the best solution's score is compared
    with the threshold."""

    def __init__(self, index: int, config: LevelConfig, backend: Backend, sandbox: Sandbox) -> None:
        self.index = index
        self.config = config
        self.backend = backend
        self.sandbox = sandbox

    @property
    def name(self) -> str:
        return self.config.name

    def attempt(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]] = (),
        arm: Arm | None = None,
    ) -> LevelOutcome:
        """`exemplars`: worked (prompt, code) examples for the solution prompt.
        `arm`: this request's (k, t, L, threshold), instead of the configured ones."""
        config = self.config
        shape = (
            (arm.k_solutions, arm.t_test_generations, arm.max_test_lines)
            if arm is not None
            else (config.k_solutions, config.t_test_generations, config.max_test_lines)
        )
        threshold = arm.threshold if arm is not None else config.threshold
        run = self._run(request, exemplars, shape)
        return self._outcome(request, run, shape, threshold)

    def sweep(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]],
        shapes: Sequence[Shape],
    ) -> dict[Shape, LevelOutcome]:
        """One generation and sandbox pass at the widest of `shapes`, read as
        every smaller one: the first k solutions, the first t test generations,
        the first L asserts of each. Backends sample solution i and test
        generation j the same way whatever n is asked for, so this is what each
        shape would have produced on its own. Outcomes carry the config's
        threshold; the cost of each is its own share of the tokens."""
        widest = (
            max(k for k, _, _ in shapes),
            max(t for _, t, _ in shapes),
            max(lines for _, _, lines in shapes),
        )
        run = self._run(request, exemplars, widest)
        return {
            shape: self._outcome(request, run, shape, self.config.threshold) for shape in shapes
        }

    def attempt_many(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        """`attempt` for a batch: every request's solution prompt goes to the
        backend in one `generate` call (and every test prompt in another), so a
        batching server sees the whole step; then the requests' sandbox runs
        go on concurrently. Raises `BackendError` if the backend call failed
        (for all of them: it was one call)."""
        if not requests:
            return []
        config = self.config
        shape = (config.k_solutions, config.t_test_generations, config.max_test_lines)
        generated = self._generate(requests, [()] * len(requests), shape)

        def check(i: int) -> _Run:
            solutions, tests, generation_s = generated[i]
            return self._check(requests[i], solutions, tests, generation_s, shape[2])

        if len(requests) == 1:
            runs = [check(0)]
        else:
            with ThreadPoolExecutor(min(len(requests), 8), thread_name_prefix="check") as pool:
                runs = list(pool.map(check, range(len(requests))))
        return [
            self._outcome(request, run, shape, config.threshold)
            for request, run in zip(requests, runs, strict=True)
        ]

    def classify_many(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        """`classify` for a batch, in one `generate` call."""
        if not requests:
            return []
        config = self.config
        params = GenerationParams(
            n=config.k_solutions,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=min(config.max_tokens, 16),
        )
        started = time.perf_counter()
        votes = self.backend.generate([classification_prompt(r) for r in requests], params)
        generation_s = (time.perf_counter() - started) / len(requests)
        return [
            self._vote(request, request_votes, generation_s)
            for request, request_votes in zip(requests, votes, strict=True)
        ]

    def _run(
        self, request: CodeRequest, exemplars: Sequence[tuple[str, str]], shape: Shape
    ) -> _Run:
        """Generate k solutions and t test generations of at most L asserts, and
        run every solution against the pooled tests."""
        generated = self._generate([request], [exemplars], shape)[0]
        return self._check(request, *generated, shape[2])

    def _generate(
        self,
        requests: Sequence[CodeRequest],
        exemplars: Sequence[Sequence[tuple[str, str]]],
        shape: Shape,
    ) -> list[tuple[list[Completion], list[Completion], float]]:
        """Per request: its k solutions, its t test generations, and its share
        of the generation time (the calls are shared by the batch)."""
        config = self.config
        k, t, lines = shape
        started = time.perf_counter()
        solution_params = GenerationParams(
            n=k,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            stop=STOP,
        )
        prompts = [solution_prompt(r, e) for r, e in zip(requests, exemplars, strict=True)]
        solutions = self.backend.generate(prompts, solution_params)
        test_completions: list[list[Completion]] = [[] for _ in requests]
        if t > 0:
            test_params = GenerationParams(
                n=t,
                temperature=config.test_temperature,
                top_p=config.top_p,
                max_tokens=config.test_max_tokens,
                stop=STOP,
                seed=1_000,
            )
            test_prompts = [tests_prompt(r, lines) for r in requests]
            test_completions = self.backend.generate(test_prompts, test_params)
        generation_s = (time.perf_counter() - started) / len(requests)
        return [(solutions[i], test_completions[i], generation_s) for i in range(len(requests))]

    def _check(
        self,
        request: CodeRequest,
        solutions: list[Completion],
        test_completions: list[Completion],
        generation_s: float,
        lines: int,
    ) -> _Run:
        """Extract programs and asserts, and run every program against the pool."""
        generated = [extract_asserts(c.text, request.entry_point, lines) for c in test_completions]
        tests = pool_tests([list(request.visible_tests), *generated])
        programs = [extract_program(c.text, request.prompt, request.entry_point) for c in solutions]
        sandbox_started = time.perf_counter()
        passed, results = run_candidates(self.sandbox, programs, tests)
        return _Run(
            solutions=solutions,
            test_completions=test_completions,
            generated=generated,
            programs=programs,
            tests=tests,
            passed=passed,
            results=results,
            generation_s=generation_s,
            sandbox_s=time.perf_counter() - sandbox_started,
        )

    def _outcome(
        self, request: CodeRequest, run: _Run, shape: Shape, threshold: float
    ) -> LevelOutcome:
        """Score the first k solutions on the visible tests plus the first L
        asserts of the first t test generations."""
        config = self.config
        k, t, lines = shape
        generated = [g[:lines] for g in run.generated[:t]]
        tests = pool_tests([list(request.visible_tests), *generated])
        n_generated = len(pool_tests(generated))
        column = {normalize_assert(test): j for j, test in enumerate(run.tests)}
        columns = [column[normalize_assert(test)] for test in tests]
        programs = run.programs[:k]
        passed = [[row[j] for j in columns] for row in run.passed[:k]]

        best_index: int | None = None
        score = 0.0
        if programs and any(p.strip() for p in programs):
            if tests:
                selection = select(passed, config.scoring)
                best_index, score = selection.index, selection.score
                if not programs[best_index].strip():
                    best_index = next(i for i, p in enumerate(programs) if p.strip())
            else:
                # Nothing to test against: the first program that defines something.
                best_index = next(i for i, p in enumerate(programs) if p.strip())
                score = 1.0 if config.accept_without_tests else 0.0
        code = programs[best_index] if best_index is not None else ""
        used = (*run.solutions[:k], *run.test_completions[:t])
        tokens_in = sum(c.tokens_in for c in used)
        tokens_out = sum(c.tokens_out for c in used)
        best_result = run.results.get(code)
        attempt = Attempt(
            level=self.index,
            model=self.backend.model_name,
            n_solutions=len(programs),
            n_tests=len(tests),
            n_generated_tests=n_generated,
            best_solution_index=best_index,
            score=score,
            threshold=threshold,
            accepted=best_index is not None and score >= threshold,
            tests=_summary(best_result, columns) if best_result is not None else None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            generation_s=run.generation_s,
            sandbox_s=run.sandbox_s,
            cost_usd=_cost_usd(config, tokens_in, tokens_out),
        )
        log.debug(
            "level %d on %s: score %.2f accepted=%s",
            self.index,
            request.id,
            score,
            attempt.accepted,
        )
        return LevelOutcome(attempt=attempt, code=code, tests=tests)

    def classify(self, request: CodeRequest) -> LevelOutcome:
        """A classification request: k votes; the majority label's share of all
        k votes (unparseable ones included) is the acceptance score."""
        return self.classify_many([request])[0]

    def _vote(
        self, request: CodeRequest, votes: list[Completion], generation_s: float
    ) -> LevelOutcome:
        config = self.config
        labels = request.label_set or []
        parsed = [parse_label(v.text, labels) for v in votes]
        counts = {label: parsed.count(label) for label in labels}
        label = max(labels, key=lambda name: (counts[name], -labels.index(name)))
        if counts[label] == 0:
            label_or_none: str | None = None
            score = 0.0
            best_index = None
        else:
            label_or_none = label
            score = counts[label] / len(votes)
            best_index = parsed.index(label)
        tokens_in = sum(v.tokens_in for v in votes)
        tokens_out = sum(v.tokens_out for v in votes)
        attempt = Attempt(
            level=self.index,
            model=self.backend.model_name,
            n_solutions=len(votes),
            n_tests=0,
            n_generated_tests=0,
            best_solution_index=best_index,
            score=score,
            threshold=config.threshold,
            accepted=label_or_none is not None and score >= config.threshold,
            tests=None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            generation_s=generation_s,
            sandbox_s=0.0,
            cost_usd=_cost_usd(config, tokens_in, tokens_out),
        )
        return LevelOutcome(attempt=attempt, code="", label=label_or_none)
