"""Fault runs of the service on a real broker: SIGKILL and restart the service,
restart the broker mid-stream (once, or many times with random down-times), a
second instance joining mid-stream and then the first one killed; and on a
three-node cluster: a rolling restart of every node, the leader of a requests
partition SIGKILLed, the active controller SIGKILLed. Each run feeds N
requests and counts what came out: answers, distinct ids, duplicates, lost
requests, the services' exits, and how long after the broker (or a new leader)
was back the first answer came.

The service runs as real processes (`python -m streamcascade serve`) on the
replay backend, with recordings written here, so the runs need no model and no
shared data. `streamcascade faults` prints the table; the test suite asserts on
the same runs.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Literal

from streamcascade.config import KafkaConfig
from streamcascade.service.broker import KafkaCluster, LocalKafka
from streamcascade.service.kafka_io import client_settings, ensure_topics, restart_fetching
from streamcascade.service.tools import feed

log = logging.getLogger(__name__)

Scenario = Literal[
    "sigkill",
    "broker-restart",
    "group-kill",
    "broker-restarts",
    "rolling-restart",
    "leader-kill",
    "controller-kill",
]
SCENARIOS: tuple[Scenario, ...] = (
    "sigkill", "broker-restart", "group-kill", "broker-restarts",
    "rolling-restart", "leader-kill", "controller-kill",
)  # fmt: skip
CLUSTER_SCENARIOS = ("rolling-restart", "leader-kill", "controller-kill")
"""Run on a three-node cluster; the others on one broker."""
Delivery = Literal["at_least_once", "exactly_once"]

_RIGHT = "def double(x):\n    return 2 * x\n"
_WRONG = "def double(x):\n    return x + 2\n"


def request_value(i: int, with_reference: bool = False) -> bytes:
    """Task t{i}: write `double`; hidden tests that tell x + 2 from 2 * x when asked."""
    request: dict[str, Any] = {
        "id": f"t{i}",
        "prompt": 'def double(x):\n    """Twice x."""\n',
        "entry_point": "double",
        "visible_tests": ["assert double(2) == 4"],
    }
    if with_reference:
        request["reference_tests"] = "def check(candidate):\n    assert candidate(5) == 10\n"
    return json.dumps(request).encode()


def replay_config(
    work_dir: Path, bootstrap_servers: str, n_tasks: int, **kafka: Any
) -> dict[str, Any]:
    """A two-level replay cascade (the small level wrong on every third task,
    while its answer still passes the visible test; the big one always right),
    its recordings written into `work_dir`, and a kafka section with topics
    unique to this run; `kafka` overrides that section's settings."""
    work_dir.mkdir(parents=True, exist_ok=True)
    small, big = work_dir / "small.jsonl", work_dir / "big.jsonl"
    with small.open("w") as small_out, big.open("w") as big_out:
        for i in range(n_tasks):
            solution = _WRONG if i % 3 == 0 else _RIGHT
            small_out.write(json.dumps({"task_id": f"t{i}", "solution": solution}) + "\n")
            big_out.write(json.dumps({"task_id": f"t{i}", "solution": _RIGHT}) + "\n")
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    names = ("requests", "answers", "feedback", "deadletter", "state")
    kafka_section = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "group_id": prefix,
        "topics": {name: f"{prefix}.{name}" for name in names},
        "partitions": 4,
        "max_in_flight": 16,
        "session_timeout_ms": 6000,
        "shutdown_timeout_s": 10,
        "transaction_timeout_s": 15,
        **kafka,
    }
    levels = [
        {"name": "small", "backend": {"kind": "replay", "format": "ladder", "path": str(small)},
         "t_test_generations": 0, "threshold": 1.0, "price_in_usd_per_1m": 1.0},
        {"name": "big", "backend": {"kind": "replay", "format": "ladder", "path": str(big)},
         "t_test_generations": 0, "threshold": 0.0, "price_in_usd_per_1m": 10.0},
    ]  # fmt: skip
    return {"levels": levels, "sandbox": {"per_test_timeout_s": 2.0}, "kafka": kafka_section}


def write_replay_config(
    work_dir: Path, bootstrap_servers: str, n_tasks: int, delivery: Delivery, **kafka: Any
) -> tuple[Path, KafkaConfig]:
    """`replay_config` as a file for `streamcascade serve --config`."""
    config = replay_config(work_dir, bootstrap_servers, n_tasks, delivery=delivery, **kafka)
    path = work_dir / "service.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path, KafkaConfig.model_validate(config["kafka"])


REBUILD_IDLE_S = 10.0


class AnswerCounter:
    """Follows the answers topic (read_committed) in a thread, counting ids."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.ids: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self.n_clients = 0
        """Clients started so far (a new one replaces one that read nothing)."""

    def __enter__(self) -> AnswerCounter:
        self._thread.start()
        if not self._ready.wait(60):
            self._stop.set()
            raise RuntimeError("the answer counter could not start reading in 60 s")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        """Reads until stopped; a lost answer must be the service's, never the
        counter's. A client that fails (a leader-kill test's counter died at
        its start: a topic just created had no partitions in its metadata yet,
        and the run waited 10 minutes for answers the service had committed)
        or reads nothing for `REBUILD_IDLE_S` (kafka-python's fetcher stalls
        as the service's does) is replaced by a new one that resumes where it
        got to."""
        next_offsets: dict[Any, int] = {}
        while not self._stop.is_set():
            try:
                self._read(next_offsets)
            except Exception as error:  # a broker away, metadata not there yet
                log.warning("answer counter: %r; starting a new client", error)
                self._stop.wait(1.0)

    def _read(self, next_offsets: dict[Any, int]) -> None:
        """One client's life: until stopped or idle for `REBUILD_IDLE_S`."""
        from kafka import KafkaConsumer, TopicPartition

        topic = self.config.topics.answers
        consumer = KafkaConsumer(
            **client_settings(self.config), group_id=None, isolation_level="read_committed"
        )
        self.n_clients += 1
        try:
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
            if len(partitions) < self.config.partitions:
                self._stop.wait(1.0)  # metadata of a topic just created: not all there yet
                return
            consumer.assign(partitions)
            for partition in partitions:
                if partition in next_offsets:
                    consumer.seek(partition, next_offsets[partition])
                else:
                    consumer.seek_to_beginning(partition)
            self._ready.set()
            idle_since = stalled_since = time.monotonic()
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=200)
                for partition, records in polled.items():
                    with self._lock:
                        for record in records:
                            self.ids[(record.key or b"").decode()] += 1
                            next_offsets[partition] = record.offset + 1
                now = time.monotonic()
                if polled:
                    idle_since = stalled_since = now
                elif now - idle_since > REBUILD_IDLE_S:
                    return  # a new client, from where this one got to
                elif now - stalled_since > 3.0:
                    restart_fetching(consumer)
                    stalled_since = now
        finally:
            consumer.close()

    def distinct(self) -> int:
        with self._lock:
            return len(self.ids)

    def total(self) -> int:
        with self._lock:
            return sum(self.ids.values())

    def seconds_to_next(self, timeout_s: float = 120.0) -> float | None:
        """Seconds until a new id is answered (None: none within `timeout_s`)."""
        started, before = time.monotonic(), self.distinct()
        while self.distinct() == before:
            if time.monotonic() - started > timeout_s:
                return None
            time.sleep(0.05)
        return time.monotonic() - started

    def wait_distinct(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.distinct() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


class ServiceProcess:
    """`python -m streamcascade serve` as a child process."""

    def __init__(self, config_path: Path, instance_id: str, log_dir: Path) -> None:
        self.config_path = config_path
        self.instance_id = instance_id
        self.log_path = log_dir / f"service-{instance_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.n_starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamcascade", "serve", "--config",
                 str(self.config_path), "--instance-id", self.instance_id],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.n_starts += 1

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, as a deployment stops it; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class FaultReport:
    scenario: str
    delivery: str
    n_in: int
    n_answers_out: int
    n_distinct: int
    n_faults: int
    seconds: float
    exit_codes: list[int | None]
    """Of the services still running at the end, on SIGTERM."""
    n_exits: int = 0
    """Services that ended by themselves (none should)."""
    recovery_s: list[float] = field(default_factory=list)
    """Per fault with requests outstanding: seconds from the broker (or a new
    leader) being back to the next answer."""

    @property
    def n_duplicates(self) -> int:
        return self.n_answers_out - self.n_distinct

    @property
    def n_lost(self) -> int:
        return self.n_in - self.n_distinct

    def recovery(self) -> str:
        if not self.recovery_s:
            return "-"
        return f"{median(self.recovery_s):.1f}, {max(self.recovery_s):.1f}"

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.delivery} | {self.n_faults} | {self.n_in} | "
            f"{self.n_answers_out} | {self.n_duplicates} | {self.n_lost} | {self.n_exits} | "
            f"{self.recovery()} | {self.seconds:.0f} |"
        )


HEADER = (
    "| fault | delivery | faults | requests in | answers out | duplicates | lost | service "
    "exits | s to the first answer after the broker is back (median, max) | s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


class _Run:
    """One fault run's moving parts: the broker (or cluster), the services, the
    answers followed, and the requests fed so far."""

    def __init__(
        self, broker: LocalKafka | KafkaCluster, kafka: KafkaConfig, answers: AnswerCounter,
        services: list[ServiceProcess], n_requests: int, rng: random.Random, timeout_s: float,
    ) -> None:  # fmt: skip
        self.broker = broker
        self.kafka = kafka
        self.answers = answers
        self.services = services
        self.n_requests = n_requests
        self.rng = rng
        self.timeout_s = timeout_s
        self.n_fed = 0
        self.n_faults = 0
        self.recovery_s: list[float] = []

    def feed_to(self, n: int) -> None:
        n = min(n, self.n_requests)
        if n > self.n_fed:
            feed(self.kafka, [request_value(i) for i in range(self.n_fed, n)])
            self.n_fed = n

    def progressed(self, to: int) -> None:
        self.answers.wait_distinct(min(self.n_requests, to), self.timeout_s)

    def back(self) -> None:
        """The broker (or a new leader) is back: time the next answer, if any is due."""
        if self.answers.distinct() < self.n_fed:
            waited = self.answers.seconds_to_next()
            if waited is not None:
                self.recovery_s.append(waited)

    def in_the_middle(self, chunk: int) -> None:
        """Feed `chunk` more requests and let a random part of them be under way
        (batches in the engine, commits, transactions) when the fault lands.
        The first fault waits for the first answer: a broker missing while the
        service starts is its startup check's to report (exit 4), not an outage."""
        self.feed_to(self.n_fed + chunk)
        if self.answers.distinct() == 0:
            self.progressed(1)
        time.sleep(self.rng.uniform(0.0, 2.0))


def _restart_broker(run: _Run, broker: LocalKafka, down_s: float) -> None:
    """Stop (cleanly or by SIGKILL, at random), stay down `down_s`, start."""
    how = "stopped" if run.rng.random() < 0.5 else "killed"
    broker.stop() if how == "stopped" else broker.kill()
    run.n_faults += 1
    log.info("broker %s (%d fed, %d answered): down for %.1f s", how, run.n_fed,
             run.answers.distinct(), down_s)  # fmt: skip
    time.sleep(down_s)
    broker.start()
    log.info("broker back (%d answered)", run.answers.distinct())
    run.back()


def _cluster_fault(run: _Run, cluster: KafkaCluster, scenario: str, n_faults: int) -> None:
    topic = run.kafka.topics.requests
    chunk = max(1, run.n_requests // (n_faults + 1))
    for index in range(n_faults):
        run.in_the_middle(chunk)
        if scenario == "rolling-restart":
            node = cluster.nodes[index % len(cluster.nodes)]
            node.stop()  # a clean shutdown: leadership moves first
        elif scenario == "leader-kill":
            node = cluster.node(cluster.partition_leader(topic, 0))
            node.kill()
        else:
            node = cluster.node(cluster.active_controller())
            node.kill()
        run.n_faults += 1
        if scenario == "rolling-restart":
            node.start()
            run.back()
        else:
            # A new leader serves while the killed node is down.
            run.back()
            time.sleep(run.rng.uniform(0.0, 5.0))
            node.start()
        cluster.wait_in_sync([topic], run.timeout_s)


@contextmanager
def _killed_at_exit(services: list[ServiceProcess]) -> Iterator[None]:
    """A run cut short (an error, Ctrl-C, SIGTERM) leaves no service behind."""
    try:
        yield
    finally:
        for service in services:
            service.kill()  # those already ended are left as they are


def run_fault(
    broker: LocalKafka | KafkaCluster,
    work_dir: Path,
    scenario: Scenario,
    delivery: Delivery,
    n_requests: int = 1000,
    n_kills: int = 5,
    seed: int = 0,
    timeout_s: float = 600.0,
    n_restarts: int = 20,
    max_down_s: float = 30.0,
) -> FaultReport:
    """One fault run; the broker must be running. `n_kills`: service kills
    (sigkill) or cluster faults; `n_restarts` and `max_down_s`: the
    broker-restarts scenario's restarts and longest down-time."""
    rng = random.Random(seed)
    extra: dict[str, Any] = {}
    if isinstance(broker, KafkaCluster):
        extra["replication_factor"] = len(broker.nodes)
    config_path, kafka = write_replay_config(work_dir, broker.bootstrap_servers, n_requests,
                                             delivery, **extra)  # fmt: skip
    ensure_topics(kafka)
    started = time.monotonic()
    first = ServiceProcess(config_path, "i1", work_dir)
    services = [first]
    n_exits = 0
    with AnswerCounter(kafka) as answers, _killed_at_exit(services):
        first.start()
        run = _Run(broker, kafka, answers, services, n_requests, rng, timeout_s)
        if scenario == "sigkill":
            run.feed_to(n_requests)
            # Kill points spread over the stream, at random within it.
            for kill in range(n_kills):
                run.progressed(int(n_requests * (kill + rng.random()) / (n_kills + 1)))
                first.kill()
                run.n_faults += 1
                time.sleep(rng.uniform(0.0, 1.0))
                first.start()
        elif scenario == "broker-restart":
            assert isinstance(broker, LocalKafka)
            run.feed_to(n_requests)
            run.progressed(n_requests // 3)
            broker.stop()
            run.n_faults += 1
            time.sleep(3.0)
            broker.start()
            run.back()
        elif scenario == "broker-restarts":
            assert isinstance(broker, LocalKafka)
            chunk = max(1, n_requests // (n_restarts + 1))
            for _ in range(n_restarts):
                run.in_the_middle(chunk)
                _restart_broker(run, broker, rng.uniform(0.0, max_down_s))
        elif scenario == "group-kill":
            run.feed_to(n_requests)
            # The second instance joins while the first is in a batch (a
            # rebalance mid-batch), then the first dies and the second takes
            # over its partitions after the session timeout.
            run.progressed(int(n_requests * rng.uniform(0.05, 0.15)))
            second = ServiceProcess(config_path, "i2", work_dir)
            second.start()
            services.append(second)
            run.progressed(n_requests // 3)
            first.kill()
            run.n_faults += 1
        else:
            assert isinstance(broker, KafkaCluster), f"{scenario} needs a KafkaCluster"
            _cluster_fault(run, broker, scenario, n_kills)
        run.feed_to(n_requests)
        answers.wait_distinct(n_requests, timeout_s)
        # Let late duplicates (if any) arrive before counting.
        time.sleep(2.0)
        alive = []
        for service in services:
            if service.process is not None and service.process.poll() is None:
                alive.append(service)
            elif service is not first or scenario != "group-kill":
                n_exits += 1  # ended by itself: no fault here kills a service for good
        exit_codes = [s.terminate() for s in alive]
        time.sleep(1.0)
        report = FaultReport(
            scenario, delivery, n_requests, answers.total(), answers.distinct(), run.n_faults,
            time.monotonic() - started, exit_codes, n_exits, run.recovery_s,
        )  # fmt: skip
    log.info("fault run: %s", report)
    return report


def fault_table(
    work_dir: Path,
    runs: Sequence[tuple[Scenario, Delivery]],
    n_requests: int = 1000,
    n_kills: int = 5,
    progress: Callable[[FaultReport], None] | None = None,
    n_restarts: int = 20,
    max_down_s: float = 30.0,
    seed: int = 0,
) -> list[FaultReport]:
    """Each run on its own fresh broker, or three-node cluster for the cluster
    scenarios (a broker restart must not leak into the next run)."""
    reports = []
    for index, (scenario, delivery) in enumerate(runs):
        run_dir = work_dir / f"{index}-{scenario}-{delivery}"
        broker: LocalKafka | KafkaCluster = (
            KafkaCluster(run_dir / "kafka", partitions=4)
            if scenario in CLUSTER_SCENARIOS
            else LocalKafka(run_dir / "kafka", partitions=4)
        )
        # A rolling restart takes each node down once; a leader or controller
        # kill happens three times; service kills are n_kills.
        n_faults = 3 if scenario in CLUSTER_SCENARIOS else n_kills
        with broker:
            report = run_fault(
                broker, run_dir, scenario, delivery, n_requests, n_faults, seed + index,
                n_restarts=n_restarts, max_down_s=max_down_s,
            )  # fmt: skip
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports
