"""Watching `serve`: Prometheus metrics, and health and readiness endpoints.

What changes per answer (answers and latency by level, tokens, cost, dead
letters by reason) is counted as each batch is committed; what is state
(requests read, batches, rebalances, partitions owned, consumer lag, breaker
states, the learner's counters) is read when Prometheus scrapes, from the
objects that own it, so the hot path pays for nothing it does not change.
Each service has its own registry: two in one process do not mix.

One small HTTP server serves three paths: `/metrics` (Prometheus text
format), `/healthz` (200 while the service loop turns: it came round within
`stall_after_s`) and `/readyz` (200 when it owns partitions and no level's
backend has its circuit breaker open; 503 otherwise, with the reason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streamcascade.schemas import CascadeAnswer

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class LiveState:
    """Read at scrape time: each callable returns the current value."""

    stats: Callable[[], Any]
    """The service's `ServiceStats`."""
    partitions_owned: Callable[[], int]
    lag_by_partition: Callable[[], dict[str, int]]
    breakers: Callable[[], dict[str, str]]
    """Backend name -> breaker state ("closed", "open", "half_open")."""
    learner: Callable[[], dict[str, float]]
    """The learner's counters and knobs (empty without one)."""
    broker_up: Callable[[], bool] = lambda: True
    """False while the service's Kafka calls fail (an outage it waits out)."""
    broker_outages: Callable[[], int] = lambda: 0


class _LiveCollector(Collector):
    def __init__(self, live: LiveState) -> None:
        self.live = live

    def collect(self) -> Iterable[Any]:
        stats = self.live.stats()
        for name, value, help_text in (
            ("requests", stats.n_requests, "Request records read (bad ones included)."),
            ("batches", stats.n_batches, "Batches answered and committed."),
            (
                "batches_retried",
                stats.n_batches_retried,
                "Batches whose first commit failed (kept and committed later).",
            ),
            ("feedback", stats.n_feedback, "Feedback records read."),
            ("learning_events_out", stats.n_events_out, "Learning events published."),
            ("learning_events_in", stats.n_events_in, "Other replicas' events applied."),
            ("rebalances", stats.n_assignments, "Partition assignments (the first included)."),
            ("snapshots", stats.n_snapshots, "Learner snapshots written."),
        ):
            yield CounterMetricFamily(f"streamcascade_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "streamcascade_broker_up",
            "1 while the service's Kafka calls succeed, 0 during an outage it waits out.",
            value=float(self.live.broker_up()),
        )
        yield CounterMetricFamily(
            "streamcascade_broker_outages",
            "Broker outages waited out (or in progress).",
            value=self.live.broker_outages(),
        )
        yield GaugeMetricFamily(
            "streamcascade_partitions_owned",
            "Request partitions this instance owns.",
            value=self.live.partitions_owned(),
        )
        lag = GaugeMetricFamily(
            "streamcascade_consumer_lag",
            "Records behind the end of each owned request partition (refreshed every 15 s).",
            labels=["partition"],
        )
        for partition, value in sorted(self.live.lag_by_partition().items()):
            lag.add_metric([partition], value)
        yield lag
        breaker = GaugeMetricFamily(
            "streamcascade_backend_breaker_open",
            "1 while a backend's circuit breaker is open (not called), else 0.",
            labels=["backend"],
        )
        for backend, state in sorted(self.live.breakers().items()):
            breaker.add_metric([backend], float(state == "open"))
        yield breaker
        for name, value in sorted(self.live.learner().items()):
            yield GaugeMetricFamily(f"streamcascade_learner_{name}", f"Learner: {name}.", value)


class ServiceMetrics:
    """The service's metrics; `observe_batch` is called once per committed batch.

    Examples
    --------
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_batch([], ["NotJson", "NotJson"], batch_seconds=0.1)
    >>> b'streamcascade_dead_letters_total{error_type="NotJson"} 2.0' in metrics.exposition()
    True
    """

    def __init__(self) -> None:
        self.seconds_counting = 0.0
        self.seconds_rendering = 0.0
        """Time spent in `observe_batch`: what counting costs the service."""
        self._level_children: dict[str, Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.answers = Counter("streamcascade_answers", "Answers published, by the level that "
                               "answered.", ["level"], registry=registry)  # fmt: skip
        self.dead_letters = Counter(
            "streamcascade_dead_letters", "Dead letters, by reason.", ["error_type"],
            registry=registry,
        )  # fmt: skip
        self.answer_seconds = Histogram(
            "streamcascade_answer_seconds", "Seconds from a request's start in the engine to "
            "its answer.", buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.level_seconds = Histogram(
            "streamcascade_level_seconds", "Seconds of one level's attempt (generation and "
            "sandbox).", ["level"], buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "streamcascade_batch_seconds", "Seconds to answer and commit one batch.",
            buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter("streamcascade_tokens", "Tokens, by level and direction.",
                              ["level", "direction"], registry=registry)  # fmt: skip
        self.cost_usd = Counter("streamcascade_cost_usd", "Cost in USD, by level.", ["level"],
                                registry=registry)  # fmt: skip
        self.sandbox_timeouts = Counter(
            "streamcascade_sandbox_test_timeouts", "Tests of best solutions that timed out.",
            ["level"], registry=registry,
        )  # fmt: skip
        self.level_failures = Counter(
            "streamcascade_level_failures", "Levels whose backend failed on a request.",
            ["level"], registry=registry,
        )  # fmt: skip

    @staticmethod
    def live_collector(live: LiveState) -> Collector:
        """The metrics read at scrape time; register it once the service exists."""
        return _LiveCollector(live)

    def observe_batch(
        self,
        answers: Sequence[CascadeAnswer],
        dead_letter_types: Sequence[str],
        batch_seconds: float,
    ) -> None:
        started = time.perf_counter()
        self._count(answers, dead_letter_types, batch_seconds)
        self.seconds_counting += time.perf_counter() - started

    def _count(
        self,
        answers: Sequence[CascadeAnswer],
        dead_letter_types: Sequence[str],
        batch_seconds: float,
    ) -> None:
        # Summed per batch first: a labelled counter's update costs a lookup and
        # a lock, so each label set is touched once per batch, not per answer.
        answered: dict[str, int] = {}
        tokens_in: dict[str, int] = {}
        tokens_out: dict[str, int] = {}
        cost_usd: dict[str, float] = {}
        timeouts: dict[str, int] = {}
        failures: dict[str, int] = {}
        for answer in answers:
            level = str(answer.level)
            answered[level] = answered.get(level, 0) + 1
            self.answer_seconds.observe(answer.seconds)
            for attempt in answer.attempts:
                level = str(attempt.level)
                self._level_seconds(level).observe(attempt.generation_s + attempt.sandbox_s)
                tokens_in[level] = tokens_in.get(level, 0) + attempt.tokens_in
                tokens_out[level] = tokens_out.get(level, 0) + attempt.tokens_out
                cost_usd[level] = cost_usd.get(level, 0.0) + attempt.cost_usd
                if attempt.tests is not None and attempt.tests.n_timed_out:
                    timeouts[level] = timeouts.get(level, 0) + attempt.tests.n_timed_out
            for failure in answer.failed_levels:
                failures[str(failure.level)] = failures.get(str(failure.level), 0) + 1
        for level, n in answered.items():
            self.answers.labels(level).inc(n)
        for level, n in tokens_in.items():
            self.tokens.labels(level, "in").inc(n)
        for level, n in tokens_out.items():
            self.tokens.labels(level, "out").inc(n)
        for level, usd in cost_usd.items():
            self.cost_usd.labels(level).inc(usd)
        for level, n in timeouts.items():
            self.sandbox_timeouts.labels(level).inc(n)
        for level, n in failures.items():
            self.level_failures.labels(level).inc(n)
        dead: dict[str, int] = {}
        for error_type in dead_letter_types:
            dead[error_type] = dead.get(error_type, 0) + 1
        for error_type, n in dead.items():
            self.dead_letters.labels(error_type).inc(n)
        self.batch_seconds.observe(batch_seconds)

    def _level_seconds(self, level: str) -> Any:
        child = self._level_children.get(level)
        if child is None:
            child = self._level_children[level] = self.level_seconds.labels(level)
        return child

    def exposition(self) -> bytes:
        # CPU time on the serving thread: what a scrape takes from the service
        # (it holds the interpreter's lock), without the wait for that lock.
        started = time.thread_time()
        text = generate_latest(self.registry)
        self.seconds_rendering += time.thread_time() - started
        return text


@dataclass
class Health:
    """What `/healthz` and `/readyz` answer."""

    last_loop_s: Callable[[], float]
    """time.monotonic() of the service loop's last turn."""
    ready: Callable[[], str | None]
    """None when ready, else why not."""
    stall_after_s: float = 120.0


class _Handler(BaseHTTPRequestHandler):
    metrics: ServiceMetrics
    health: Health

    def do_GET(self) -> None:  # the http.server API's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.metrics.exposition(), "text/plain; version=0.0.4")
        elif path == "/healthz":
            idle_s = time.monotonic() - self.health.last_loop_s()
            if idle_s <= self.health.stall_after_s:
                self._send(200, b"ok\n")
            else:
                self._send(503, f"service loop stalled for {idle_s:.0f} s\n".encode())
        elif path == "/readyz":
            why = self.health.ready()
            self._send(200, b"ready\n") if why is None else self._send(503, f"{why}\n".encode())
        else:
            self._send(404, b"try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class ObserveServer:
    """`/metrics`, `/healthz` and `/readyz` on `host:port` (port 0: any free
    one; see `port`), served from a daemon thread until `close`."""

    def __init__(self, metrics: ServiceMetrics, health: Health, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observe-http", daemon=True
        )
        self._thread.start()
        log.info("metrics at http://%s:%d/metrics (and /healthz, /readyz)", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
