"""`streamcascade serve`: the cascade as a consumer group on Kafka.

One thread owns the Kafka clients; one worker thread runs the cascade (models
and learner are not thread-safe, and share the CPU anyway). A poll returns at
most `max_in_flight` requests; while the worker answers them the consumer's
partitions are paused and it keeps polling, so a slow LLM level never makes it
miss `max_poll_interval_ms` (no rebalance storms), and no more than that window
is ever taken from Kafka uncommitted.

Delivery:
- at_least_once: the batch's answers and dead letters are sent and flushed
  (acks=all, idempotent producer); only then are its offsets committed. A crash
  in between re-delivers the batch: duplicates, never losses.
- exactly_once: the batch's outputs and its offsets are one transaction
  (`send_offsets_to_transaction` with the consumer's group metadata, so a
  zombie instance is fenced); `read_committed` readers see each answer once.
A batch whose outputs cannot be written is not committed: its partitions are
rewound to the batch start and it is processed again.

Bad input (not UTF-8, not JSON, wrong schema, oversized, unsupported language)
and requests whose processing raised go to the dead-letter topic with the
original bytes as the value and the reason in the headers; the service goes on.

Replicas converge: every request's learning event (each level's score,
decision, cost and label; see `CascadeLearner.apply_event`) goes to the
learning topic with the batch's answers, and every instance applies the other
instances' events and every feedback record (it reads both with its own group).
Learner snapshots go to the compacted state topic, keyed by the group id, every
`snapshot_every` requests and at shutdown, with the learning-topic position
they include; a starting instance restores the latest one and applies the
events after it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener

from streamcascade.config import KafkaConfig
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.learning.snapshots import SnapshotMismatch
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback
from streamcascade.service.codec import Rejected, parse_feedback, parse_request
from streamcascade.service.kafka_io import (
    MAX_MESSAGE_BYTES,
    Stuck,
    bounded,
    client_settings,
    close_at_once,
    ensure_topics,
    read_latest_state,
    release_parked_records,
)
from streamcascade.service.observe import LiveState, ServiceMetrics

log = logging.getLogger(__name__)

__all__ = [
    "CascadeService",
    "Engine",
    "ServiceStats",
    "client_settings",
    "close_at_once",
    "ensure_topics",
    "read_latest_state",
    "release_parked_records",
]


class Engine(Protocol):
    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]: ...


@dataclass
class ServiceStats:
    n_requests: int = 0
    """Request records taken from Kafka (bad ones included)."""
    n_answers: int = 0
    n_dead_letters: int = 0
    n_failed: int = 0
    """Requests whose processing raised (they are dead letters too)."""
    n_feedback: int = 0
    n_feedback_learned: int = 0
    n_events_out: int = 0
    """Learning events this instance published for the others."""
    n_events_in: int = 0
    """Other instances' learning events applied here."""
    n_batches: int = 0
    n_batches_retried: int = 0
    n_assignments: int = 0
    """Group rebalances this instance took part in (the first one included)."""
    n_revocations: int = 0
    n_snapshots: int = 0
    restored_from: int | None = None
    """The snapshot's request count this instance started from."""
    started_s: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started_s)
        return (
            f"{self.n_requests} requests ({self.n_requests / elapsed:.1f}/s), "
            f"{self.n_answers} answers, {self.n_dead_letters} dead letters "
            f"({self.n_failed} failed), {self.n_feedback} feedback "
            f"({self.n_feedback_learned} learned), {self.n_batches_retried} batches retried"
        )


@dataclass
class _Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _reason(error: BaseException) -> str:
    """A dead letter's reason: `backend_unavailable: ...` when no model could
    answer, else what processing raised."""
    text = str(error)
    return text if text.startswith("backend_unavailable") else f"processing failed: {text}"


class _BatchFailed(Exception):
    """The batch's outputs or offsets could not be written; it runs again."""


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Counts and logs rebalances of the requests consumer, and reports the
    partitions it no longer holds. Under the eager protocol every partition is
    "revoked" first, but kafka-python keeps the position of those it is given
    again, so only what is missing from the new assignment (or lost with the
    membership) is reported."""

    def __init__(
        self,
        stats: ServiceStats,
        stopping: Callable[[], bool],
        assignment: Callable[[], set[Any]],
        on_lost: Callable[[set[Any]], None],
    ) -> None:
        self.stats = stats
        self.stopping = stopping
        self.assignment = assignment
        self.on_lost = on_lost
        self.owned: set[Any] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked and not self.stopping():  # leaving the group on close is no rebalance
            self.stats.n_revocations += 1
            log.info("partitions revoked: %s", sorted(str(p) for p in revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("partitions lost with the group membership: %s", sorted(map(str, lost)))
        self.stats.n_revocations += 1
        self.owned -= set(lost)
        self.on_lost(set(lost))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.stats.n_assignments += 1
        log.info("partitions assigned: %s", sorted(str(p) for p in assigned))
        current = set(self.assignment())
        lost, self.owned = self.owned - current, current
        if lost:
            self.on_lost(lost)


class CascadeService:
    """Consumes requests and feedback, publishes answers and dead letters.

    >>> service = CascadeService(config.kafka, engine, learner)  # doctest: +SKIP
    >>> service.run()  # until service.stop(), e.g. from a SIGTERM handler  # doctest: +SKIP
    """

    def __init__(
        self,
        config: KafkaConfig,
        engine: Engine,
        learner: OnlineLearner | None = None,
        on_batch: Callable[[ServiceStats], None] | None = None,
        metrics: ServiceMetrics | None = None,
        breakers: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """`metrics`: count each committed batch there; `breakers`: each level's
        circuit breaker state, by level name (for /metrics and /readyz)."""
        self._breakers = breakers or dict
        self.config = config
        self.engine = engine
        self.learner = learner
        self.metrics = metrics
        self.last_loop_s = time.monotonic()
        """When the service loop last came round (for /healthz)."""
        self.lag_by_partition: dict[str, int] = {}
        self._lag_checked_s = 0.0
        self._owned = 0
        self.instance_id = config.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = ServiceStats()
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._on_batch = on_batch
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cascade")
        self._since_snapshot = 0
        self._carried: dict[Any, list[Any]] = {}
        # Partitions given to another instance since the batch in hand was taken.
        self._lost: set[Any] = set()
        self._consumer: Any = None
        self._inbox: Any = None
        # Set on the worker thread by the learner, drained here after each batch.
        self._events: list[dict[str, Any]] = []
        # Tells this process's own learning events apart from those of an
        # earlier run of the same instance, which a restored snapshot may lack.
        self._session = uuid.uuid4().hex
        self._last_records_s = time.monotonic()
        self._last_check_s = time.monotonic()
        self._producer: Any = None

    @property
    def exactly_once(self) -> bool:
        return self.config.delivery == "exactly_once"

    def stop(self) -> None:
        """Finish the batch in hand (within shutdown_timeout_s), then leave."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> ServiceStats:
        from kafka import KafkaConsumer

        config = self.config
        settings = client_settings(config)
        if config.create_topics:
            ensure_topics(config)
        restored_offsets = self._restore()
        self._consumer = KafkaConsumer(
            **settings,
            group_id=config.group_id,
            client_id=f"{self.instance_id}-requests",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=config.max_in_flight,
            max_poll_interval_ms=config.max_poll_interval_ms,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(500, config.session_timeout_ms // 4),
        )
        self._consumer.subscribe(
            [config.topics.requests],
            listener=_Rebalances(
                self.stats, self._stop.is_set, self._consumer.assignment, self._on_lost
            ),
        )
        # Its own group per instance (for its committed offsets): every replica
        # sees every feedback record and every other replica's learning events.
        # Assigned, not subscribed: no group rebalances to wait for, and the
        # starting position ("latest" for a new instance) is fixed right now.
        self._inbox = KafkaConsumer(
            **settings,
            group_id=f"{config.group_id}.learn.{self.instance_id}",
            client_id=f"{self.instance_id}-learn",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
            max_poll_records=500,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        )
        from kafka import TopicPartition

        inbox_topics = [config.topics.feedback]
        if self.learner is not None:
            inbox_topics.append(config.topics.learning)
        self._inbox.assign(
            [
                TopicPartition(topic, p)
                for topic in inbox_topics
                for p in sorted(self._inbox.partitions_for_topic(topic) or set())
            ]
        )
        for partition in self._inbox.assignment():
            offset = restored_offsets.get(f"{partition.topic}:{partition.partition}")
            if offset is not None:
                self._inbox.seek(partition, offset)  # the events the snapshot does not hold
            else:
                self._inbox.position(partition)
        if self.learner is not None:
            self.learner.on_event = lambda event: self._events.append(event)
        self._producer = self._new_producer()
        log.info(
            "serving %s -> %s as %s in group %s (%s)",
            config.topics.requests,
            config.topics.answers,
            self.instance_id,
            config.group_id,
            config.delivery,
        )
        try:
            while not self._stop.is_set():
                self.last_loop_s = time.monotonic()
                if self.metrics is not None:
                    self._refresh_lag()
                self._learn_from_inbox()
                batch = self._carried or self._poll(int(1000 * config.poll_timeout_s))
                self._carried = {}
                if batch:
                    self._last_records_s = time.monotonic()
                    self._handle(batch)
                else:
                    self._unstick()
                if self.learner is not None and self._since_snapshot >= config.snapshot_every:
                    self._snapshot()
            if self.learner is not None and self._since_snapshot:
                self._snapshot()
        finally:
            self._close()
        log.info("stopped: %s", self.stats.line())
        return self.stats

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        settings: dict[str, Any] = {
            **client_settings(self.config),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_request_size": MAX_MESSAGE_BYTES,
            "client_id": f"{self.instance_id}-producer",
        }
        if self.exactly_once:
            # Stable per instance: a restarted instance fences its own zombie.
            settings["transactional_id"] = f"{self.config.group_id}.{self.instance_id}"
        producer = KafkaProducer(**settings)
        if self.exactly_once:
            # Bumps the epoch: whatever an older producer left open is aborted.
            producer.init_transactions()
        return producer

    def _replace_producer(self, why: str) -> None:
        """A stuck or failed transactional producer is dropped (closed in the
        background, since closing it may block too) and a new one fences it."""
        log.warning("rebuilding the producer: %s", why)
        old = self._producer

        threading.Thread(target=close_at_once, args=(old,), daemon=True).start()
        from kafka.errors import KafkaError

        while True:
            try:
                self._producer = self._new_producer()
                return
            except KafkaError as error:  # the broker may still be away
                if self._stop.is_set():
                    raise
                log.warning("a new producer failed (%r): retrying", error)
                time.sleep(1.0)

    def _close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        for client in (self._consumer, self._inbox):
            if client is not None:
                try:
                    client.close()  # leaves the group: its partitions are handed back now
                except Exception:  # closing must not hide the original error
                    log.exception("closing a consumer failed")
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception:
                log.exception("closing the producer failed")

    # -- requests ----------------------------------------------------------------

    def _handle(self, batch: dict[Any, list[Any]]) -> None:
        """Answer one polled batch and commit it, or rewind it on failure."""
        from kafka import OffsetAndMetadata

        started_s = time.monotonic()
        self._lost = set()
        rejected: list[tuple[Any, _Output]] = []
        jobs: list[tuple[Any, Any, CodeRequest]] = []
        first: dict[Any, int] = {}
        offsets: dict[Any, Any] = {}
        for partition, records in batch.items():
            for record in records:
                first.setdefault(partition, record.offset)
                offsets[partition] = OffsetAndMetadata(record.offset + 1, "", -1)
                self.stats.n_requests += 1
                parsed = parse_request(record.value, self.config.max_request_bytes)
                if isinstance(parsed, Rejected):
                    rejected.append(
                        (partition, self._dead_letter(record, parsed.reason, parsed.error_type))
                    )
                else:
                    jobs.append((partition, record, parsed))
        # The whole batch goes to the engine at once: each level step is one
        # backend call for every request waiting there.
        answering = self._worker.submit(self.engine.process_many, [job[2] for job in jobs])
        if not self._wait_for([answering]):
            log.warning("stopping with %d requests unanswered: handed back uncommitted", len(jobs))
            return
        # A partition handed to another instance meanwhile is read there from its
        # committed offset: answering its records here too would answer them twice.
        lost = self._lost
        if lost:
            n_left = sum(len(records) for partition, records in batch.items() if partition in lost)
            if n_left:
                log.info("%d requests of partitions handed over mid-batch left to their new owner",
                         n_left)  # fmt: skip
            offsets = {p: offset for p, offset in offsets.items() if p not in lost}
        outputs = [output for partition, output in rejected if partition not in lost]
        n_answers = n_failed = 0
        answered: list[CascadeAnswer] = []
        error = answering.exception()
        results = answering.result() if error is None else [error] * len(jobs)
        for (partition, record, request), result in zip(jobs, results, strict=True):
            if partition in lost:
                continue
            if not isinstance(result, BaseException):
                answer = result
                outputs.append(
                    _Output(self.config.topics.answers, request.id.encode(),
                            answer.model_dump_json().encode(), self._headers())
                )  # fmt: skip
                n_answers += 1
                answered.append(answer)
            else:
                log.warning("request %s failed: %r", request.id, result)
                outputs.append(self._dead_letter(record, _reason(result),
                                                 type(result).__name__))  # fmt: skip
                n_failed += 1
        events, self._events = self._events, []
        for event in events:
            outputs.append(
                _Output(self.config.topics.learning, self.instance_id.encode(),
                        json.dumps(event).encode(), self._headers())
            )  # fmt: skip
        try:
            self._write(outputs, offsets)
        except _BatchFailed as error:
            self.stats.n_batches_retried += 1
            log.warning("batch not committed (%s): it runs again", error)
            self._rewind(first)
            return
        self.stats.n_answers += n_answers
        self.stats.n_failed += n_failed
        self.stats.n_dead_letters += len(outputs) - n_answers - len(events)
        self.stats.n_events_out += len(events)
        self.stats.n_batches += 1
        self._since_snapshot += len(jobs)
        if self.metrics is not None:
            dead_types = [dict(o.headers).get("error_type", b"?").decode() for o in outputs
                          if o.topic == self.config.topics.deadletter]  # fmt: skip
            self.metrics.observe_batch(answered, dead_types, time.monotonic() - started_s)
        # One line per batch: what a person watching the logs needs to see it work.
        log.info(
            "batch of %d records: %d answered, %d dead letters, %d learning events, %.2f s",
            sum(len(records) for records in batch.values()), n_answers,
            len(outputs) - n_answers - len(events), len(events), time.monotonic() - started_s,
        )  # fmt: skip
        if self._on_batch is not None:
            self._on_batch(self.stats)

    def _refresh_lag(self, every_s: float = 15.0) -> None:
        """Records behind the end of each owned partition, every `every_s` (one
        broker call; on the loop's thread, since the consumer is not thread-safe)."""
        now = time.monotonic()
        if now - self._lag_checked_s < every_s or self._consumer is None:
            return
        self._lag_checked_s = now
        from kafka.errors import KafkaError

        owned = list(self._consumer.assignment())
        self._owned = len(owned)
        try:
            end = self._consumer.end_offsets(owned) if owned else {}
            lag = {}
            for partition in owned:
                position = self._consumer.position(partition)
                if position is not None:
                    lag[f"{partition.topic}:{partition.partition}"] = end[partition] - position
            self.lag_by_partition = lag
        except KafkaError as error:
            log.debug("consumer lag not refreshed: %s", error)

    def live_state(self) -> LiveState:
        """What the metrics read at scrape time (see `streamcascade.service.observe`)."""
        return LiveState(
            stats=lambda: self.stats,
            partitions_owned=lambda: self._owned,
            lag_by_partition=lambda: dict(self.lag_by_partition),
            breakers=self._breakers,
            learner=lambda: self.learner.gauges() if self.learner is not None else {},
        )

    def not_ready(self) -> str | None:
        """Why this instance should get no traffic yet, or None (for /readyz)."""
        if self._stop.is_set():
            return "stopping"
        if self._owned == 0:
            return "no request partitions assigned (yet)"
        open_levels = [name for name, state in self._breakers().items() if state == "open"]
        if open_levels:
            return "circuit breaker open: " + ", ".join(open_levels)
        return None

    def _unstick(self, idle_s: float = 10.0) -> None:
        """Between batches nothing is paused; after `idle_s` without records, an
        owned partition that lags is reported (with what the fetcher holds
        parked) and re-seeked to its position. A watchdog: the one stall seen
        so far, a partition never read again after a rebalance in a batch, was
        kafka-python's parked records (see `release_parked_records`), which a
        seek does not release."""
        consumer = self._consumer
        paused = consumer.paused()
        if paused:
            log.warning("partitions paused between batches: resuming %s", sorted(map(str, paused)))
            consumer.resume(*paused)
        now = time.monotonic()
        if now - self._last_records_s < idle_s or now - self._last_check_s < idle_s:
            return
        self._last_check_s = now
        owned = list(consumer.assignment())
        if not owned:
            return
        from kafka.errors import KafkaError

        try:
            end = consumer.end_offsets(owned)
            for partition in owned:
                position = consumer.position(partition)
                if position is not None and position < end[partition]:
                    idle_for_s = now - self._last_records_s
                    parked = getattr(getattr(consumer, "_fetcher", None),
                                     "_paused_partition_records", {})  # fmt: skip
                    log.warning(
                        "%s lags (%d of %d) with nothing fetched for %.0f s (parked: %s): "
                        "re-seeking",
                        partition, position, end[partition], idle_for_s,
                        sorted(map(str, parked)),
                    )  # fmt: skip
                    consumer.seek(partition, position)
        except KafkaError as error:
            log.warning("lag check failed: %r", error)

    def _on_lost(self, partitions: set[Any]) -> None:
        """Called in a poll: what was read from these partitions is another
        instance's to answer now."""
        self._lost |= partitions
        for partition in partitions:
            self._carried.pop(partition, None)

    def _poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        release_parked_records(self._consumer)
        polled: dict[Any, list[Any]] = self._consumer.poll(timeout_ms=timeout_ms)
        return polled

    def _wait_for(self, pending: list[Future[Any]]) -> bool:
        """Keep polling (partitions paused) until the worker is done. False when a
        stop's grace period ran out first."""
        consumer = self._consumer
        paused = set(consumer.assignment())
        consumer.pause(*paused)
        try:
            while not all(job.done() for job in pending):
                if self._stop_at is not None and (
                    time.monotonic() - self._stop_at > self.config.shutdown_timeout_s
                ):
                    return False
                # Keeps the group membership alive; partitions assigned meanwhile
                # are not paused yet, so what they return is carried to the next batch.
                for partition, records in self._poll(100).items():
                    self._carried.setdefault(partition, []).extend(records)
                fresh = set(consumer.assignment()) - paused
                if fresh:
                    consumer.pause(*fresh)
                    paused |= fresh
        finally:
            owned = set(consumer.assignment())
            consumer.resume(*(paused & owned))
        return True

    def _write(self, outputs: list[_Output], offsets: dict[Any, Any]) -> None:
        from kafka.errors import KafkaError

        producer, consumer = self._producer, self._consumer
        owned = set(consumer.assignment())
        commit = {tp: offset for tp, offset in offsets.items() if tp in owned}
        limit_s = self.config.transaction_timeout_s
        if self.exactly_once:
            try:
                producer.begin_transaction()
                for output in outputs:
                    producer.send(output.topic, key=output.key, value=output.value,
                                  headers=output.headers)  # fmt: skip
                if commit:
                    metadata = consumer.group_metadata()
                    bounded(lambda: producer.send_offsets_to_transaction(commit, metadata),
                             limit_s, "send-offsets")  # fmt: skip
                bounded(producer.commit_transaction, limit_s, "commit")
            except Stuck as error:
                self._replace_producer(str(error))
                raise _BatchFailed(str(error)) from error
            except KafkaError as error:
                # Not just aborted: kafka-python 3.0.12 keeps offsets whose commit
                # failed (a rebalance: IllegalGeneration) and commits them with the
                # next transaction, whose answers do not hold them: requests lost.
                # A new producer (same transactional id) aborts this one and
                # starts clean.
                self._replace_producer(f"transaction failed: {error!r}")
                raise _BatchFailed(repr(error)) from error
            return
        try:
            futures = [
                producer.send(o.topic, key=o.key, value=o.value, headers=o.headers) for o in outputs
            ]
            producer.flush(timeout=limit_s)
            for future in futures:
                future.get(timeout=limit_s)  # raises what the broker said
        except KafkaError as error:
            raise _BatchFailed(repr(error)) from error
        if commit:
            try:
                consumer.commit(commit, timeout_ms=int(1000 * limit_s))
            except KafkaError as error:
                # Answers are out; whoever consumes these next answers them again
                # (at least once).
                log.warning("offset commit failed: %r", error)

    def _abort(self) -> None:
        from kafka.errors import KafkaError

        try:
            bounded(self._producer.abort_transaction, self.config.transaction_timeout_s, "abort")
        except (KafkaError, Stuck) as error:
            self._replace_producer(f"aborting the transaction failed: {error!r}")

    def _rewind(self, first: dict[Any, int]) -> None:
        """Seek back to the batch's first offsets, and to what was carried."""
        for partition, records in self._carried.items():
            first.setdefault(partition, records[0].offset)
        self._carried = {}
        owned = set(self._consumer.assignment())
        for partition, offset in first.items():
            if partition in owned:
                self._consumer.seek(partition, offset)

    def _headers(self) -> list[tuple[str, bytes]]:
        return [("instance", self.instance_id.encode()), ("session", self._session.encode())]

    def _dead_letter(self, record: Any, reason: str, error_type: str) -> _Output:
        """The original bytes as the value; where it came from and why, in headers."""
        headers = [
            ("reason", reason[:4000].encode()),
            ("error_type", error_type.encode()),
            ("source_topic", str(record.topic).encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
            *self._headers(),
        ]
        return _Output(self.config.topics.deadletter, record.key, record.value or b"", headers)

    # -- feedback and state --------------------------------------------------------

    def _learn_from_inbox(self) -> None:
        """Feedback records, and other instances' learning events."""
        from kafka.errors import KafkaError

        polled = self._inbox.poll(timeout_ms=0)
        if not polled:
            return
        dead: list[_Output] = []
        feedback: list[Feedback] = []
        events: list[dict[str, Any]] = []
        for records in polled.values():
            for record in records:
                if record.topic == self.config.topics.learning:
                    if dict(record.headers or []).get("session") == self._session.encode():
                        continue  # learned already, when it was made
                    try:
                        events.append(json.loads(record.value))
                    except (TypeError, ValueError) as error:
                        dead.append(self._dead_letter(record, f"bad learning event: {error}",
                                                      "BadEvent"))  # fmt: skip
                    continue
                self.stats.n_feedback += 1
                parsed = parse_feedback(record.value, self.config.max_request_bytes)
                if isinstance(parsed, Rejected):
                    dead.append(self._dead_letter(record, parsed.reason, parsed.error_type))
                else:
                    feedback.append(parsed)
        if self.learner is not None and (feedback or events):
            learner = self.learner

            def learn() -> tuple[int, int]:
                applied = 0
                for event in events:
                    try:
                        learner.apply_event(event)
                        applied += 1
                    except (KeyError, TypeError, ValueError) as error:
                        log.warning("a learning event could not be applied: %r", error)
                return sum(learner.learn_one(f) for f in feedback), applied

            learned, applied = self._worker.submit(learn).result()
            self.stats.n_feedback_learned += learned
            self.stats.n_events_in += applied
            # The state changed: the next snapshot keeps it.
            self._since_snapshot += len(feedback) + applied
        if dead:
            try:
                self._write_plain(dead)
            except _BatchFailed as error:
                log.warning("dead letters from the inbox not written (%s): read again", error)
                for partition, records in polled.items():
                    self._inbox.seek(partition, records[0].offset)
                return
            self.stats.n_dead_letters += len(dead)
        try:
            self._inbox.commit()
        except KafkaError as error:
            log.warning("inbox offsets not committed: %r", error)

    def _drain_inbox(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Learn from everything in the inbox up to its current end; the
        positions reached (a snapshot holds everything before them)."""
        partitions = list(self._inbox.assignment())
        end = self._inbox.end_offsets(partitions) if partitions else {}
        deadline = time.monotonic() + timeout_s
        while any(self._inbox.position(p) < end[p] for p in partitions):
            if time.monotonic() > deadline:
                break
            self._learn_from_inbox()
        return {f"{p.topic}:{p.partition}": int(self._inbox.position(p)) for p in partitions}

    def _write_plain(self, outputs: list[_Output]) -> None:
        """Outputs with no offsets to commit alongside."""
        from kafka.errors import KafkaError

        producer = self._producer
        limit_s = self.config.transaction_timeout_s
        try:
            if self.exactly_once:
                producer.begin_transaction()
            futures = [
                producer.send(o.topic, key=o.key, value=o.value, headers=o.headers) for o in outputs
            ]
            if self.exactly_once:
                bounded(producer.commit_transaction, limit_s, "commit")
            else:
                producer.flush(timeout=limit_s)
                for future in futures:
                    future.get(timeout=limit_s)
        except Stuck as error:
            self._replace_producer(str(error))
            raise _BatchFailed(str(error)) from error
        except KafkaError as error:
            if self.exactly_once:
                self._abort()
            raise _BatchFailed(repr(error)) from error

    def _restore(self) -> dict[str, int]:
        """Load the latest snapshot; the inbox positions it was taken at."""
        if self.learner is None:
            return {}
        snapshot = read_latest_state(self.config)
        if snapshot is None:
            log.info("no learner snapshot in %s: starting fresh", self.config.topics.state)
            return {}
        try:
            self.learner.load_state_dict(snapshot["state"])
        except (ValueError, KeyError) as error:
            # Fail at start, and say why: serving on with the learned state
            # silently dropped would be worse than not serving.
            raise SnapshotMismatch(
                f"the latest learner snapshot in {self.config.topics.state} cannot be "
                f"restored: {error}"
            ) from None
        self.stats.restored_from = self.learner.n_requests
        log.info(
            "learner restored from %s (written by %s, %d requests seen)",
            self.config.topics.state,
            snapshot.get("instance"),
            self.learner.n_requests,
        )
        return {str(k): int(v) for k, v in snapshot.get("inbox_offsets", {}).items()}

    def _snapshot(self) -> None:
        learner = self.learner
        assert learner is not None
        offsets = self._drain_inbox()
        state = self._worker.submit(learner.state_dict).result()
        value = json.dumps({"instance": self.instance_id, "saved_unix_s": time.time(),
                            "inbox_offsets": offsets, "state": state}).encode()  # fmt: skip
        output = _Output(self.config.topics.state, self.config.group_id.encode(), value,
                         self._headers())  # fmt: skip
        try:
            self._write_plain([output])
        except _BatchFailed as error:
            log.warning("snapshot not written (%s): the next one will be", error)
            return
        self._since_snapshot = 0
        self.stats.n_snapshots += 1
