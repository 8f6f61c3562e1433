"""One level of the cascade: what its model does for a request of each kind.
The request's kind (`streamcascade.tasks`) says what a step is; the level owns
the machinery: generate solutions and tests, run them, score (tested kinds), or
vote (label kinds)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from streamcascade.backends.base import (
    Backend,
    Completion,
    GenerationParams,
    LearnsFromAnswers,
    Prompt,
)
from streamcascade.config import LevelConfig
from streamcascade.sandbox import ExecutionResult, Sandbox
from streamcascade.schemas import Attempt, CodeRequest, TestSummary
from streamcascade.selfcheck import pool_tests, select
from streamcascade.tasks import Answer, LevelOutcome, TestedKind, task_kind

__all__ = ["Level", "LevelOutcome"]

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]
"""(k solutions, t test generations, L asserts kept per generation)."""


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


def cost_usd(config: LevelConfig, tokens_in: int, tokens_out: int) -> float:
    """What a level's tokens cost at its prices (USD per 1M tokens in and out)."""
    return (
        tokens_in * config.price_in_usd_per_1m + tokens_out * config.price_out_usd_per_1m
    ) / 1_000_000


def _summary(result: ExecutionResult, columns: Sequence[int]) -> TestSummary:
    """The result on the tests at `columns` only."""
    status = [result.test_status[j] for j in columns] if result.test_status else []
    failures = [s for s in status if s != "passed"]
    if result.load_status != "ok":
        failures.insert(0, f"load {result.load_status}")
    trusted = result.trusted or [False] * len(result.test_status)
    return TestSummary(
        n_tests=len(status),
        n_passed=sum(s == "passed" for s in status),
        n_timed_out=sum(s == "timed out" for s in status),
        first_failure=failures[0][:300] if failures else None,
        n_passed_untrusted=sum(
            result.test_status[j] == "passed" and not trusted[j] for j in columns
        )
        if result.test_status
        else 0,
    )


class Level:
    """A model plus the seed paper's self-check: k solutions, t test generations
    of at most L tests each, pooled with the request's visible tests; every
    solution runs against every test; the best solution's score is what the
    policy sees. What a solution, a test and a run are is the request's kind's."""

    def __init__(self, index: int, config: LevelConfig, backend: Backend, sandbox: Sandbox) -> None:
        self.index = index
        self.config = config
        self.backend = backend
        self.sandbox = sandbox

    @property
    def name(self) -> str:
        return self.config.name

    def step(self, requests: Sequence[CodeRequest]) -> list[LevelOutcome]:
        """This level's attempt at each request: each kind's requests in one batch
        (one backend call per kind and purpose). Raises `BackendError` if the
        backend failed (for all of them)."""
        outcomes: dict[int, LevelOutcome] = {}
        by_kind: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            by_kind.setdefault(request.kind, []).append(i)
        for name, indices in by_kind.items():
            done = task_kind(name).step(self, [requests[i] for i in indices])
            outcomes.update(zip(indices, done, strict=True))
        return [outcomes[i] for i in range(len(requests))]

    @property
    def learns(self) -> bool:
        """Whether its backend learns from the answers of the levels above it."""
        return self.config.backend.learns_online()

    def learn(self, requests: Sequence[CodeRequest], answers: Sequence[Answer]) -> None:
        """Show a backend that learns online what a more capable level answered
        (imitation); what it is shown is each request's kind's (`teaching`)."""
        if not self.learns or not isinstance(self.backend, LearnsFromAnswers):
            return
        shown = [
            taught
            for request, answer in zip(requests, answers, strict=True)
            if (taught := task_kind(request.kind).teaching(request, answer)) is not None
        ]
        if shown:
            self.backend.learn([prompt for prompt, _ in shown], [text for _, text in shown])

    def learn_outcome(self, request: CodeRequest, answer: Answer, right: bool) -> None:
        """Show a backend that learns online whether an answer it gave was right."""
        if not self.learns or not isinstance(self.backend, LearnsFromAnswers):
            return
        taught = task_kind(request.kind).teaching(request, answer)
        if taught is not None:
            self.backend.learn_outcomes([taught[0]], [taught[1]], [right])

    # -- one request, varied: exemplars, another shape or threshold ------------------

    @property
    def shape(self) -> Shape:
        """The configured (k solutions, t test generations, L asserts each)."""
        return (self.config.k_solutions, self.config.t_test_generations,
                self.config.max_test_lines)  # fmt: skip

    def attempt(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]] = (),
        shape: Shape | None = None,
        threshold: float | None = None,
    ) -> LevelOutcome:
        """This level's attempt at one request, with worked (prompt, code)
        `exemplars` shown before its solution prompt, and a `shape` or
        `threshold` other than the configured ones: what a policy may vary per
        request. Through the request's kind, like `step`; a kind that votes
        has no tests, so only the threshold applies to it."""
        if not exemplars and shape is None and threshold is None:
            return self.step([request])[0]
        varied = _Varied(self, exemplars, shape or self.shape,
                         self.config.threshold if threshold is None else threshold)  # fmt: skip
        return task_kind(request.kind).step(varied, [request])[0]

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
        swept = _Swept(self, exemplars, shapes)
        task_kind(request.kind).step(swept, [request])
        return swept.outcomes

    # -- what a kind asks of a level (LevelTools) ------------------------------------

    def tested_step(self, requests: Sequence[CodeRequest], kind: TestedKind) -> list[LevelOutcome]:
        """Generate-and-test for a batch: every request's solution prompt goes to
        the backend in one `generate` call (and every test prompt in another), so
        a batching server sees the whole step; then the requests' sandbox runs go
        on concurrently."""
        return self._tested(requests, kind, (), self.shape, self.config.threshold)

    def _tested(
        self,
        requests: Sequence[CodeRequest],
        kind: TestedKind,
        exemplars: Sequence[tuple[str, str]],
        shape: Shape,
        threshold: float,
    ) -> list[LevelOutcome]:
        if not requests:
            return []
        generated = self._generate(requests, [exemplars] * len(requests), shape, kind)

        def check(i: int) -> _Run:
            solutions, tests, generation_s = generated[i]
            return self._check(requests[i], solutions, tests, generation_s, shape[2], kind)

        if len(requests) == 1:
            runs = [check(0)]
        else:
            with ThreadPoolExecutor(min(len(requests), 8), thread_name_prefix="check") as pool:
                runs = list(pool.map(check, range(len(requests))))
        return [
            self._outcome(request, run, shape, threshold, kind)
            for request, run in zip(requests, runs, strict=True)
        ]

    def vote_step(
        self,
        requests: Sequence[CodeRequest],
        prompt: Callable[[CodeRequest], Prompt],
        parse: Callable[[CodeRequest, str], str | None],
    ) -> list[LevelOutcome]:
        """k votes per request, all requests in one `generate` call; the majority
        label's share of all k votes (unparseable ones included) is the score."""
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
        votes = self.backend.generate([prompt(r) for r in requests], params)
        generation_s = (time.perf_counter() - started) / len(requests)
        return [
            self._vote(request, [parse(request, v.text) for v in request_votes],
                       request_votes, generation_s)
            for request, request_votes in zip(requests, votes, strict=True)
        ]  # fmt: skip

    # -- generate and test -------------------------------------------------------------

    def _run(
        self,
        request: CodeRequest,
        exemplars: Sequence[tuple[str, str]],
        shape: Shape,
        kind: TestedKind,
    ) -> _Run:
        generated = self._generate([request], [exemplars], shape, kind)[0]
        return self._check(request, *generated, shape[2], kind)

    def _generate(
        self,
        requests: Sequence[CodeRequest],
        exemplars: Sequence[Sequence[tuple[str, str]]],
        shape: Shape,
        kind: TestedKind,
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
            stop=kind.stop,
        )
        prompts = [kind.solution_prompt(r, e) for r, e in zip(requests, exemplars, strict=True)]
        solutions = self.backend.generate(prompts, solution_params)
        test_completions: list[list[Completion]] = [[] for _ in requests]
        if t > 0:
            test_params = GenerationParams(
                n=t,
                temperature=config.test_temperature,
                top_p=config.top_p,
                max_tokens=config.test_max_tokens,
                stop=kind.test_stop,
                seed=1_000,
            )
            test_prompts = [kind.tests_prompt(r, lines) for r in requests]
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
        kind: TestedKind,
    ) -> _Run:
        """Extract programs and tests, and run every program against the pool."""
        generated = [kind.extract_tests(request, c.text, lines) for c in test_completions]
        tests = pool_tests([kind.visible_tests(request), *generated], kind.test_key)
        programs = [kind.extract_program(request, c.text) for c in solutions]
        sandbox_started = time.perf_counter()
        passed, results = kind.run(self.sandbox, request, programs, tests)
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
        self,
        request: CodeRequest,
        run: _Run,
        shape: Shape,
        threshold: float,
        kind: TestedKind,
    ) -> LevelOutcome:
        """Score the first k solutions on the visible tests plus the first L
        tests of the first t test generations."""
        config = self.config
        k, t, lines = shape
        generated = [g[:lines] for g in run.generated[:t]]
        tests = pool_tests([kind.visible_tests(request), *generated], kind.test_key)
        n_generated = len(pool_tests(generated, kind.test_key))
        column = {kind.test_key(test): j for j, test in enumerate(run.tests)}
        columns = [column[kind.test_key(test)] for test in tests]
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
            tests=_summary(best_result, columns) if best_result is not None else None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            generation_s=run.generation_s,
            sandbox_s=run.sandbox_s,
            cost_usd=cost_usd(config, tokens_in, tokens_out),
        )
        log.debug("level %d on %s: score %.2f", self.index, request.id, score)
        return LevelOutcome(attempt=attempt, code=code, tests=tests)

    def _vote(
        self,
        request: CodeRequest,
        parsed: list[str | None],
        votes: list[Completion],
        generation_s: float,
    ) -> LevelOutcome:
        config = self.config
        labels = request.label_set or []
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
            # A model that says how often it is right when this sure (a
            # classifier) weighs its votes by it; an LLM's vote is its share.
            sure = [v.confidence for v, p in zip(votes, parsed, strict=True) if p == label]
            if all(c is not None for c in sure):
                score *= sum(c for c in sure if c is not None) / len(sure)
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
            tests=None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            generation_s=generation_s,
            sandbox_s=0.0,
            cost_usd=cost_usd(config, tokens_in, tokens_out),
        )
        return LevelOutcome(attempt=attempt, code="", label=label_or_none)


class _Varied:
    """The level's tools for one request with its exemplars, shape and
    threshold (what `Level.attempt` hands the request's kind)."""

    def __init__(self, level: Level, exemplars: Sequence[tuple[str, str]], shape: Shape,
                 threshold: float) -> None:  # fmt: skip
        self.level, self.exemplars, self.shape, self.threshold = level, exemplars, shape, threshold

    def tested_step(self, requests: Sequence[CodeRequest], kind: TestedKind) -> list[LevelOutcome]:
        return self.level._tested(requests, kind, self.exemplars, self.shape, self.threshold)

    def vote_step(
        self,
        requests: Sequence[CodeRequest],
        prompt: Callable[[CodeRequest], Prompt],
        parse: Callable[[CodeRequest, str], str | None],
    ) -> list[LevelOutcome]:
        outcomes = self.level.vote_step(requests, prompt, parse)
        for outcome in outcomes:
            outcome.attempt = outcome.attempt.model_copy(update={"threshold": self.threshold})
        return outcomes


class _Swept:
    """The level's tools for `Level.sweep`: one run at the widest shape, kept
    as the outcome of every shape (a kind that votes has one outcome)."""

    def __init__(self, level: Level, exemplars: Sequence[tuple[str, str]],
                 shapes: Sequence[Shape]) -> None:  # fmt: skip
        self.level, self.exemplars, self.shapes = level, exemplars, shapes
        self.outcomes: dict[Shape, LevelOutcome] = {}

    def tested_step(self, requests: Sequence[CodeRequest], kind: TestedKind) -> list[LevelOutcome]:
        level, shapes = self.level, self.shapes
        widest = (max(k for k, _, _ in shapes), max(t for _, t, _ in shapes),
                  max(lines for _, _, lines in shapes))  # fmt: skip
        [request] = requests
        run = level._run(request, self.exemplars, widest, kind)
        self.outcomes = {shape: level._outcome(request, run, shape, level.config.threshold, kind)
                         for shape in shapes}  # fmt: skip
        return [self.outcomes[widest] if widest in self.outcomes else self.outcomes[shapes[0]]]

    def vote_step(
        self,
        requests: Sequence[CodeRequest],
        prompt: Callable[[CodeRequest], Prompt],
        parse: Callable[[CodeRequest, str], str | None],
    ) -> list[LevelOutcome]:
        outcomes = self.level.vote_step(requests, prompt, parse)
        self.outcomes = dict.fromkeys(self.shapes, outcomes[0])
        return outcomes
