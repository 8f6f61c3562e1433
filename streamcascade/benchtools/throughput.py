"""Throughput of the service on requests decided without an LLM: a stream of
review-verdict classification requests that level 0 has learned to answer.

Side by side, from the same learner snapshot and on the same records:
- bench: the records parsed and answered in-process, one after another
  (what `streamcascade run` or `bench` does per request);
- service: the records pre-loaded into the requests topic of a local broker,
  then consumed, answered, published and committed by `CascadeService`, timed
  from its start to the commit of the last one.
The difference per request is the service's overhead: Kafka I/O, batching,
the hand-off to the worker thread, commits (and transactions).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.config import LearningConfig, LevelConfig
from streamcascade.learning.learner import CascadeLearner
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest
from streamcascade.service.observe import Health, ObserveServer, ServiceMetrics
from streamcascade.service.worker import CascadeService

log = logging.getLogger(__name__)

LABELS = ["approve", "request changes"]
_FILLER = ["refactor", "rename", "loop", "cache", "docs", "api", "parser", "retry", "config"]


def review_request(i: int, rng: random.Random, with_label: bool) -> dict[str, Any]:
    """A review verdict: changes with tests are approved, the others are not."""
    good = rng.random() < 0.5
    words = " ".join(rng.sample(_FILLER, 3))
    record: dict[str, Any] = {
        "id": f"r{i}",
        "prompt": f"Review this change: {words}; " + ("tests added" if good else "no tests"),
        "label_set": LABELS,
    }
    if with_label:
        record["reference_label"] = LABELS[0] if good else LABELS[1]
    return record


def _engine(learner: CascadeLearner, sandbox: Sandbox, recordings: Path) -> OnlineCascadeEngine:
    """Two replay levels: they hold no verdicts, so only level 0 can answer well."""
    from streamcascade.backends import BackendPool
    from streamcascade.cascade import Level

    pool = BackendPool(None, False)
    levels = []
    for index, (name, price) in enumerate((("small", 1.0), ("big", 10.0)), start=1):
        config = LevelConfig(
            name=name,
            backend=ReplayBackendConfig(format="ladder", path=recordings, name=name),
            price_in_usd_per_1m=price,
        )
        levels.append(Level(index, config, pool.get(config.backend), sandbox))
    return OnlineCascadeEngine(levels, learner, Labeler(sandbox, "auto"))


METRICS_ON = "metrics on"


@dataclass
class ThroughputReport:
    n_requests: int
    share_at_level0: float
    bench_us_per_request: float
    service_us_per_request: dict[str, float]
    counting_us_per_request: float | None = None
    """Time in `ServiceMetrics.observe_batch` per request, in the metrics run."""
    scrape_us_per_request: float | None = None
    """Wall time of the scrapes, client and server, per request of that run:
    an upper bound (the client shares this process, and waits for its lock)."""
    render_us_per_request: float | None = None
    """CPU time the server spent rendering /metrics, per request of that run."""

    def table(self) -> str:
        bench = self.bench_us_per_request
        lines = [
            f"{self.n_requests} classification requests, {100 * self.share_at_level0:.1f} % "
            "answered by level 0 (the rest: replay levels, no LLM)",
            "| path | requests/s | us per request | overhead vs bench, us |",
            "| --- | --- | --- | --- |",
            f"| bench (in-process) | {1e6 / bench:,.0f} | {bench:.0f} | - |",
        ]
        for path, us in self.service_us_per_request.items():
            lines.append(f"| service, {path} | {1e6 / us:,.0f} | {us:.0f} | {us - bench:.0f} |")
        runs = self.service_us_per_request
        on = [us for name, us in runs.items() if name.startswith(f"at_least_once, {METRICS_ON}")]
        off = [us for name, us in runs.items()
               if name.startswith("at_least_once") and METRICS_ON not in name]  # fmt: skip
        observed = sum(on) / len(on) if on else None
        if observed and len(off) > 1:
            mean = sum(off) / len(off)
            lines.append(
                f"metrics on (scraped every second), {len(on)} runs, against the {len(off)} "
                f"runs without, at least once, alternating: {100 * (observed / mean - 1):+.1f} % "
                f"time per request (the runs without span {100 * (max(off) / min(off) - 1):.1f} %)"
            )
        if observed and self.counting_us_per_request is not None:
            scrapes = self.scrape_us_per_request or 0.0
            render = self.render_us_per_request or 0.0
            counting = self.counting_us_per_request
            lines.append(
                f"measured inside that run: counting {counting:.1f} us and rendering "
                f"/metrics {render:.1f} us (CPU) per request, "
                f"{100 * (counting + render) / observed:.2f} % of its time; with the "
                f"scrapes' wall time instead ({scrapes:.1f} us, client in this process "
                f"included), {100 * (counting + scrapes) / observed:.2f} %"
            )
        return "\n".join(lines)


class _Scraper:
    """The metrics served on a free loopback port and scraped every second,
    as a (keen) Prometheus would, while the service runs."""

    def __init__(self, metrics: ServiceMetrics, service: CascadeService) -> None:
        metrics.registry.register(metrics.live_collector(service.live_state()))
        health = Health(lambda: service.last_loop_s, service.not_ready)
        self.server = ObserveServer(metrics, health, "127.0.0.1", 0)
        self.n_scrapes = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.server.port}/metrics"
        while not self._stop.wait(1.0):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            # Wall time of a scrape, client and server: an upper bound of what
            # it takes from the service (it shares the interpreter's lock).
            self.seconds += time.perf_counter() - started
            self.n_scrapes += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.server.close()


def service_throughput(
    n_requests: int = 20_000,
    n_warmup: int = 1_000,
    deliveries: tuple[str, ...] = ("at_least_once", "exactly_once"),
    max_in_flight: int = 1_000,
    work_dir: Path | None = None,
    with_metrics: bool = True,
) -> ThroughputReport:
    """The bench path, then each delivery through the service; with
    `with_metrics`, at least once again with metrics counted and scraped every
    second (same stream, same broker) to measure what watching costs."""
    from streamcascade.config import KafkaConfig, SandboxConfig
    from streamcascade.service.broker import LocalKafka
    from streamcascade.service.kafka_io import ensure_topics
    from streamcascade.service.tools import feed

    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="streamcascade-throughput-"))
    rng = random.Random(0)
    config = LearningConfig(enabled=True, mu=0.25 / 0.00016, seed=3, level0_learning_rate=0.5,
                            labels="auto")  # fmt: skip
    with Sandbox(SandboxConfig()) as sandbox:
        # Replay recordings (programs only, so no verdicts) for every request id.
        recordings = work_dir / "recordings.jsonl"
        with recordings.open("w") as out:
            for i in range(-n_warmup, n_requests):
                out.write(json.dumps({"task_id": f"r{i}", "solution": ""}) + "\n")
        # Level 0 learns the task from labelled requests first.
        learner = CascadeLearner(config, 2)
        engine = _engine(learner, sandbox, recordings)
        for i in range(n_warmup):
            engine.process_one(CodeRequest.model_validate(review_request(-i - 1, rng, True)))
        snapshot = json.dumps(learner.state_dict())
        values = [json.dumps(review_request(i, rng, False)).encode() for i in range(n_requests)]

        def fresh_engine() -> OnlineCascadeEngine:
            learner = CascadeLearner(config, 2)
            learner.load_state_dict(json.loads(snapshot))
            return _engine(learner, sandbox, recordings)

        bench_engine = fresh_engine()
        started = time.perf_counter()
        at_level0 = 0
        for value in values:
            answer = bench_engine.process_one(CodeRequest.model_validate_json(value))
            answer.model_dump_json()
            at_level0 += answer.level == 0
        bench_us = 1e6 * (time.perf_counter() - started) / n_requests

        service_us: dict[str, float] = {}
        counting_us: float | None = None
        scrape_us: float | None = None
        render_us: float | None = None
        runs = [(delivery, False) for delivery in deliveries]
        if with_metrics and "at_least_once" in deliveries:
            # Off, on, off again: the two runs without metrics bracket the one
            # with them, so a drift of the machine's speed shows as their spread.
            runs += [("at_least_once", True), ("at_least_once", False)] * 2
        with LocalKafka(work_dir / "kafka", partitions=4) as broker:
            for delivery, observed in runs:
                base = f"{delivery}, {METRICS_ON}" if observed else delivery
                name, repeat = base, 1
                while name in service_us:
                    repeat += 1
                    name = f"{base}, run {repeat}"
                prefix = "throughput-" + name.replace(", ", "-").replace(" ", "-")
                kafka = KafkaConfig(
                    bootstrap_servers=[broker.bootstrap_servers],
                    group_id=prefix,
                    instance_id="t0",
                    delivery=delivery,  # type: ignore[arg-type]
                    topics={name: f"{prefix}.{name}" for name in  # type: ignore[arg-type]
                            ("requests", "answers", "feedback", "deadletter", "state")},
                    max_in_flight=max_in_flight,
                    snapshot_every=10**9,
                )  # fmt: skip
                ensure_topics(kafka)
                feed(kafka, values)
                done = threading.Event()
                timing: dict[str, float] = {}

                def on_batch(
                    stats: Any, timing: dict[str, float] = timing, done: threading.Event = done
                ) -> None:
                    if "first" not in timing:
                        timing["first"] = time.perf_counter()
                        timing["n_first"] = stats.n_answers
                    if stats.n_answers >= n_requests:
                        timing["last"] = time.perf_counter()
                        done.set()

                metrics = ServiceMetrics() if observed else None
                service = CascadeService(kafka, fresh_engine(), None, on_batch=on_batch,
                                         metrics=metrics)  # fmt: skip
                scraper = _Scraper(metrics, service) if metrics is not None else None
                thread = threading.Thread(target=service.run)
                thread.start()
                done.wait(600)
                service.stop()
                thread.join(60)
                if scraper is not None:
                    scraper.close()
                    counted = service.stats.n_requests or 1
                    assert metrics is not None
                    counting_us = 1e6 * metrics.seconds_counting / counted
                    scrape_us = 1e6 * scraper.seconds / counted
                    render_us = 1e6 * metrics.seconds_rendering / counted
                if "last" not in timing:
                    raise RuntimeError(f"{name}: not all answered ({service.stats.line()})")
                # From the first committed batch to the last, so joining the group
                # (a one-off at start) is not counted.
                timed = n_requests - timing["n_first"]
                service_us[name] = 1e6 * (timing["last"] - timing["first"]) / max(1, timed)
                log.info("%s: %s", name, service.stats.line())
    return ThroughputReport(
        n_requests, at_level0 / n_requests, bench_us, service_us, counting_us, scrape_us,
        render_us,
    )  # fmt: skip
