"""`streamcascade serve`: the cascade as a consumer group on Kafka.

One thread owns the Kafka clients; one worker thread runs the cascade (models
and learner are not thread-safe, and share the CPU anyway). A poll returns at
most `max_in_flight` requests; while the worker answers them the consumer's
partitions are paused and it keeps polling, so a slow LLM level never makes it
miss `max_poll_interval_ms` (no rebalance storms), and no more than that window
is ever taken from Kafka uncommitted.

How a batch's outputs and offsets reach Kafka (at least once, or exactly
once in one transaction) is `delivery`'s; a batch that cannot be written is
not committed: its partitions are rewound to the batch start and it runs again.
Feedback and the other replicas' learning events come through `inbox`.

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
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener

from streamcascade.config import KafkaConfig
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.learning.snapshots import SnapshotMismatch
from streamcascade.schemas import CascadeAnswer, CodeRequest
from streamcascade.service.codec import Rejected, parse_request
from streamcascade.service.delivery import DELIVERIES, BatchFailed, Delivery, Output, dead_letter
from streamcascade.service.inbox import Inbox
from streamcascade.service.kafka_io import (
    client_settings,
    close_at_once,
    ensure_topics,
    read_latest_state,
    release_parked_records,
)
from streamcascade.service.observe import LiveState, ServiceMetrics
from streamcascade.service.stats import ServiceStats

log = logging.getLogger(__name__)

__all__ = [
    "BatchFailed",
    "CascadeService",
    "Engine",
    "Output",
    "ServiceStats",
    "client_settings",
    "close_at_once",
    "ensure_topics",
    "read_latest_state",
    "release_parked_records",
]


class Engine(Protocol):
    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]: ...


def _reason(error: BaseException) -> str:
    """A dead letter's reason: `backend_unavailable: ...` when no model could
    answer, else what processing raised."""
    text = str(error)
    return text if text.startswith("backend_unavailable") else f"processing failed: {text}"


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
        # Set on the worker thread by the learner, drained here after each batch.
        self._events: list[dict[str, Any]] = []
        # Tells this process's own learning events apart from those of an
        # earlier run of the same instance, which a restored snapshot may lack.
        self._session = uuid.uuid4().hex
        self._last_records_s = time.monotonic()
        self._last_check_s = time.monotonic()
        self.delivery: Delivery = DELIVERIES[config.delivery](
            config, self.instance_id, self._stop.is_set
        )
        self.inbox = Inbox(
            config, self.instance_id, self._session, learner, self.stats, self.delivery,
            lambda work: self._worker.submit(work).result(), self._dead_letter,
        )  # fmt: skip

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
        self.inbox.open(restored_offsets)
        if self.learner is not None:
            self.learner.on_event = lambda event: self._events.append(event)
        self.delivery.open()
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
                self._since_snapshot += self.inbox.learn()
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

    def _close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group: its partitions are handed back now
            except Exception:  # closing must not hide the original error
                log.exception("closing a consumer failed")
        self.inbox.close()
        self.delivery.close()

    # -- requests ----------------------------------------------------------------

    def _handle(self, batch: dict[Any, list[Any]]) -> None:
        """Answer one polled batch and commit it, or rewind it on failure."""
        from kafka import OffsetAndMetadata

        started_s = time.monotonic()
        self._lost = set()
        rejected: list[tuple[Any, Output]] = []
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
                    Output(self.config.topics.answers, request.id.encode(),
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
                Output(self.config.topics.learning, self.instance_id.encode(),
                        json.dumps(event).encode(), self._headers())
            )  # fmt: skip
        try:
            self.delivery.commit(self._consumer, outputs, offsets)
        except BatchFailed as error:
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

    def _dead_letter(self, record: Any, reason: str, error_type: str) -> Output:
        return dead_letter(self.config.topics.deadletter, record, reason, error_type,
                           self._headers())  # fmt: skip

    # -- feedback and state --------------------------------------------------------

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
        offsets, changes = self.inbox.drain()
        self._since_snapshot += changes
        state = self._worker.submit(learner.state_dict).result()
        value = json.dumps({"instance": self.instance_id, "saved_unix_s": time.time(),
                            "inbox_offsets": offsets, "state": state}).encode()  # fmt: skip
        output = Output(self.config.topics.state, self.config.group_id.encode(), value,
                        self._headers())  # fmt: skip
        try:
            self.delivery.write([output])
        except BatchFailed as error:
            log.warning("snapshot not written (%s): the next one will be", error)
            return
        self._since_snapshot = 0
        self.stats.n_snapshots += 1
