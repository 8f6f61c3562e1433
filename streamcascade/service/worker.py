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

A broker that goes away once the service runs is waited out (see `outage`):
every Kafka call of the loop reports to one `BrokerLink`; a batch already
answered is kept, with its partitions paused, and its commit is tried again
with backoff until the broker is back (or, for partitions handed to another
instance meanwhile, dropped: the new owner answers them). Only
`outage_limit_s` ends the loop.

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
from typing import Any, Protocol, runtime_checkable

from kafka import ConsumerRebalanceListener

from streamcascade.config import KafkaConfig
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.learning.snapshots import SnapshotMismatch
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback
from streamcascade.service.codec import Rejected, parse_request
from streamcascade.service.delivery import DELIVERIES, BatchFailed, Delivery, Output, dead_letter
from streamcascade.service.inbox import Inbox
from streamcascade.service.kafka_io import (
    CALL_TIMEOUT_MS,
    Stuck,
    client_settings,
    close_at_once,
    ensure_topics,
    fetch_state,
    read_latest_state,
    release_parked_records,
    restart_fetching,
)
from streamcascade.service.observe import LiveState, ServiceMetrics
from streamcascade.service.outage import BrokerLink, RepeatFilter
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


@runtime_checkable
class LearnsFeedback(Protocol):
    """An engine that learns from Feedback itself (its policy, and its levels
    that learn online); for one that does not, the learner does."""

    def learn_one(self, feedback: Feedback) -> bool: ...


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
    membership) is reported. Between the revocation and the assignment,
    `in_progress` is True: which partitions stay here is not known yet, and a
    commit then could write answers for partitions another instance already
    reads from the committed offset (a group-kill run answered a batch twice
    under exactly-once that way: the broker accepts offsets from any member
    of the new generation, whoever owns the partition)."""

    def __init__(
        self,
        stats: ServiceStats,
        stopping: Callable[[], bool],
        assignment: Callable[[], set[Any]],
        on_lost: Callable[[set[Any]], None],
        restart_fetching: Callable[[], None] = lambda: None,
    ) -> None:
        self.restart_fetching = restart_fetching
        self.stats = stats
        self.stopping = stopping
        self.assignment = assignment
        self.on_lost = on_lost
        self.owned: set[Any] = set()
        self.in_progress = False

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked and not self.stopping():  # leaving the group on close is no rebalance
            self.in_progress = True
            self.stats.n_revocations += 1
            log.info("partitions revoked: %s", sorted(str(p) for p in revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        log.warning("partitions lost with the group membership: %s", sorted(map(str, lost)))
        self.in_progress = False
        self.stats.n_revocations += 1
        self.owned -= set(lost)
        self.on_lost(set(lost))

    def on_partitions_assigned(self, assigned: Any) -> None:
        # Positions may have moved back (to the committed offsets) while the
        # fetch sessions still hold where the broker thinks they are.
        self.restart_fetching()
        self.in_progress = False
        self.stats.n_assignments += 1
        log.info("partitions assigned: %s", sorted(str(p) for p in assigned))
        current = set(self.assignment())
        lost, self.owned = self.owned - current, current
        if lost:
            self.on_lost(lost)


class RebalancePending(Exception):
    """A rebalance revoked the partitions and has not assigned them yet: the
    batch in hand waits for it before it commits."""


@dataclass
class _Answered:
    """A polled batch, answered and not committed yet: kept until its outputs
    and offsets are written, through any broker outage."""

    n_records: int
    started_s: float
    offsets: dict[Any, Any]
    """Partition -> OffsetAndMetadata after its last record."""
    outputs: list[tuple[Any, Output]]
    """(partition, output); partition None: not tied to one (learning events)."""
    answered: list[tuple[Any, CascadeAnswer]]
    n_jobs: int
    n_events: int
    failed: list[Any] = field(default_factory=list)
    """The partition of each request whose processing raised."""
    n_tries: int = 0
    lost: set[Any] = field(default_factory=set)

    def drop(self, partitions: set[Any]) -> int:
        """Forget what belongs to partitions another instance now owns; how
        many outputs went."""
        new = partitions - self.lost
        if not new:
            return 0
        self.lost |= new
        before = len(self.outputs)
        self.outputs = [(p, o) for p, o in self.outputs if p is None or p not in new]
        self.answered = [(p, a) for p, a in self.answered if p not in new]
        self.failed = [p for p in self.failed if p not in new]
        self.offsets = {p: o for p, o in self.offsets.items() if p not in new}
        return before - len(self.outputs)


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
        self.link = BrokerLink(config.outage_limit_s)
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._on_batch = on_batch
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cascade")
        self._since_snapshot = 0
        self._carried: dict[Any, list[Any]] = {}
        self._pending: _Answered | None = None
        self._rebalances: _Rebalances | None = None
        # Partitions given to another instance since the batch in hand was taken.
        self._lost: set[Any] = set()
        self._paused: set[Any] = set()
        self._consumer: Any = None
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
            lambda work: self._worker.submit(work).result(), self._dead_letter, self.link,
            engine.learn_one if isinstance(engine, LearnsFeedback) else None,
        )  # fmt: skip

    @property
    def exactly_once(self) -> bool:
        return self.config.delivery == "exactly_once"

    def stop(self) -> None:
        """Finish the batch in hand (within shutdown_timeout_s), then leave."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()

    def _grace_left_s(self) -> float:
        if self._stop_at is None:
            return float("inf")
        return self.config.shutdown_timeout_s - (time.monotonic() - self._stop_at)

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> ServiceStats:
        from kafka import KafkaConsumer

        config = self.config
        settings = client_settings(config)
        # The broker was there a moment ago (the startup check); a node of a
        # cluster going down now (a rolling restart) is waited out here too.
        if config.create_topics:
            self._at_start("creating topics", lambda: ensure_topics(config))
        restored_offsets: dict[str, int] = self._at_start("reading the snapshot", self._restore)
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
        self._rebalances = _Rebalances(
            self.stats, self._stop.is_set, self._consumer.assignment, self._on_lost,
            lambda: restart_fetching(self._consumer),
        )  # fmt: skip
        self._consumer.subscribe([config.topics.requests], listener=self._rebalances)
        self.link.on_up.append(lambda: restart_fetching(self._consumer))
        self.inbox.open(restored_offsets)
        self.delivery.open()
        log.info(
            "serving %s -> %s as %s in group %s (%s)",
            config.topics.requests,
            config.topics.answers,
            self.instance_id,
            config.group_id,
            config.delivery,
        )
        # kafka-python logs each failed connection attempt: once a minute is plenty.
        repeats = RepeatFilter("kafka")
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(repeats)
        try:
            self._loop()
            self._last_snapshot()
        finally:
            for handler in handlers:
                handler.removeFilter(repeats)
            self._close()
        log.info("stopped: %s", self.stats.line())
        return self.stats

    def _at_start(self, what: str, call: Callable[[], Any], limit_s: float = 60.0) -> Any:
        """`call`, tried again on a Kafka error for up to `limit_s` (or
        `outage_limit_s`, if shorter)."""
        from kafka.errors import KafkaError

        started = time.monotonic()
        while True:
            try:
                result = call()
                self.link.ok()
                return result
            except KafkaError as error:
                if time.monotonic() - started > limit_s or self._stop.is_set():
                    raise
                self.link.failed(what, error)
                self.link.wait(self._stop)

    def _loop(self) -> None:
        """Turns until a stop (and then until the batch in hand is committed or
        the grace period is over). A failed Kafka call is an outage: wait, retry."""
        from kafka.errors import KafkaError

        while not self._stop.is_set() or (self._pending is not None and self._grace_left_s() > 0):
            self.last_loop_s = time.monotonic()
            try:
                self._turn()
            except RebalancePending:
                continue  # the next turn's poll takes the rebalance further
            except (KafkaError, Stuck, BatchFailed) as error:
                self.link.failed("serve", error)
                if self._stop.is_set():
                    time.sleep(min(0.5, max(0.0, self._grace_left_s())))
                else:
                    self.link.wait(self._stop)  # BrokerOutage past outage_limit_s
        if self._pending is not None:
            pending = self._pending
            log.warning(
                "stopping with %d answered requests not committed (%s): handed back, "
                "answered again from the committed offsets",
                len(pending.answered), "broker unreachable: " + self.link.why
                if not self.link.up else "shutdown timeout",
            )  # fmt: skip

    def _turn(self) -> None:
        if self._pending is not None:
            # Keeps the membership, takes a rebalance further, says what was handed over.
            self._poll_paused(100 if self._rebalancing() else 0)
            self._commit(self._pending)
            return
        if self._stop.is_set():
            return
        if self.metrics is not None:
            self._refresh_lag()
        self._since_snapshot += self.inbox.learn()
        batch = self._carried or self._poll(int(1000 * self.config.poll_timeout_s))
        self._carried = {}
        if batch:
            self._last_records_s = time.monotonic()
            self._handle(batch)
        else:
            self._unstick()
        if not self.link.up:
            self._probe()
        if self.learner is not None and self._since_snapshot >= self.config.snapshot_every:
            self._snapshot()

    def _probe(self) -> None:
        """A cheap call that needs the broker: the outage is over when it returns."""
        from kafka import TopicPartition

        owned = list(self._consumer.assignment()) or [
            TopicPartition(self.config.topics.requests, 0)
        ]
        self._consumer.end_offsets(owned, timeout_ms=CALL_TIMEOUT_MS)
        self.link.ok()

    def _last_snapshot(self) -> None:
        if self.learner is None or not self._since_snapshot:
            return
        if not self.link.up:
            log.warning("no snapshot at shutdown: the broker is unreachable (%s)", self.link.why)
            return
        from kafka.errors import KafkaError

        try:
            self._snapshot()
        except (KafkaError, Stuck, BatchFailed) as error:
            log.warning("no snapshot at shutdown: %r", error)

    def _close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._consumer is not None:
            try:
                # Leaves the group: its partitions are handed back now (bounded:
                # a broker that is away is not waited for).
                self._consumer.close(autocommit=False, timeout_ms=CALL_TIMEOUT_MS)
            except Exception:  # closing must not hide the original error
                log.exception("closing a consumer failed")
        self.inbox.close()
        self.delivery.close(at_once=not self.link.up or self._pending is not None)

    # -- requests ----------------------------------------------------------------

    def _handle(self, batch: dict[Any, list[Any]]) -> None:
        """Answer one polled batch and commit it; when the commit fails the
        batch stays in hand (`_pending`) and the error is raised."""
        self._pending = self._answer(batch)
        if self._pending is not None:
            self._commit(self._pending)

    def _answer(self, batch: dict[Any, list[Any]]) -> _Answered | None:
        """Answer one polled batch (its partitions paused meanwhile); None when a
        stop's grace period ran out first (the batch is handed back uncommitted)."""
        from kafka import OffsetAndMetadata

        started_s = time.monotonic()
        self._lost = set()
        rejected: list[tuple[Any, Output]] = []
        jobs: list[tuple[Any, Any, CodeRequest]] = []
        offsets: dict[Any, Any] = {}
        for partition, records in batch.items():
            for record in records:
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
        self._pause_all()
        if not self._wait_for([answering]):
            log.warning("stopping with %d requests unanswered: handed back uncommitted", len(jobs))
            return None
        outputs = list(rejected)
        answered: list[tuple[Any, CascadeAnswer]] = []
        failed: list[Any] = []
        error = answering.exception()
        results = answering.result() if error is None else [error] * len(jobs)
        for (partition, record, request), result in zip(jobs, results, strict=True):
            if not isinstance(result, BaseException):
                answer = result
                outputs.append((partition, Output(
                    self.config.topics.answers, request.id.encode(),
                    answer.model_dump_json().encode(), self._headers(),
                )))  # fmt: skip
                answered.append((partition, answer))
            else:
                log.warning("request %s failed: %r", request.id, result)
                failed.append(partition)
                outputs.append((partition, self._dead_letter(
                    record, _reason(result), type(result).__name__)))  # fmt: skip
        # What the learner learned from this batch goes out with its answers.
        events = self.learner.take_events() if self.learner is not None else []
        for event in events:
            outputs.append((None, Output(
                self.config.topics.learning, self.instance_id.encode(),
                json.dumps(event).encode(), self._headers(),
            )))  # fmt: skip
        pending = _Answered(
            n_records=sum(len(records) for records in batch.values()),
            started_s=started_s, offsets=offsets, outputs=outputs, answered=answered,
            n_jobs=len(jobs), n_events=len(events), failed=failed,
        )  # fmt: skip
        self._drop_lost(pending)
        return pending

    def _rebalancing(self) -> bool:
        return self._rebalances is not None and self._rebalances.in_progress

    def _drop_lost(self, pending: _Answered) -> None:
        # A partition handed to another instance meanwhile is read there from its
        # committed offset: answering its records here too would answer them twice.
        if self._lost - pending.lost:
            n_left = pending.drop(self._lost)
            if n_left:
                log.info("%d outputs of partitions handed over mid-batch left to their new owner",
                         n_left)  # fmt: skip

    def _commit(self, pending: _Answered) -> None:
        """Write the batch's outputs and offsets; on success the batch is done
        and its partitions resume. Raises (KafkaError, Stuck, BatchFailed) when
        it could not: the batch stays in hand and is tried again."""
        if self._rebalancing():
            raise RebalancePending
        self._drop_lost(pending)
        outputs = [output for _, output in pending.outputs]
        pending.n_tries += 1
        if pending.n_tries == 2:
            self.stats.n_batches_retried += 1
        self.delivery.commit(self._consumer, outputs, pending.offsets)
        self._pending = None
        self._resume_all()
        self.link.ok()
        n_answers = len(pending.answered)
        n_events = sum(1 for partition, _ in pending.outputs if partition is None)
        n_dead = len(outputs) - n_answers - n_events
        self.stats.n_answers += n_answers
        self.stats.n_failed += len(pending.failed)
        self.stats.n_dead_letters += n_dead
        self.stats.n_events_out += n_events
        self.stats.n_batches += 1
        self._since_snapshot += pending.n_jobs
        if self.metrics is not None:
            dead_types = [dict(o.headers).get("error_type", b"?").decode() for o in outputs
                          if o.topic == self.config.topics.deadletter]  # fmt: skip
            self.metrics.observe_batch([a for _, a in pending.answered], dead_types,
                                       time.monotonic() - pending.started_s)  # fmt: skip
        # One line per batch: what a person watching the logs needs to see it work.
        log.info(
            "batch of %d records: %d answered, %d dead letters, %d learning events, %.2f s%s",
            pending.n_records, n_answers, n_dead, n_events, time.monotonic() - pending.started_s,
            f" (committed at try {pending.n_tries})" if pending.n_tries > 1 else "",
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
        owned = list(self._consumer.assignment())
        self._owned = len(owned)
        end = self._consumer.end_offsets(owned, timeout_ms=CALL_TIMEOUT_MS) if owned else {}
        lag = {}
        for partition in owned:
            position = self._consumer.position(partition, timeout_ms=CALL_TIMEOUT_MS)
            if position is not None:
                lag[f"{partition.topic}:{partition.partition}"] = end[partition] - position
        self.lag_by_partition = lag

    def live_state(self) -> LiveState:
        """What the metrics read at scrape time (see `streamcascade.service.observe`)."""
        return LiveState(
            stats=lambda: self.stats,
            partitions_owned=lambda: self._owned,
            lag_by_partition=lambda: dict(self.lag_by_partition),
            breakers=self._breakers,
            learner=lambda: self.learner.gauges() if self.learner is not None else {},
            broker_up=lambda: self.link.up,
            broker_outages=lambda: self.link.n_outages,
        )

    def not_ready(self) -> str | None:
        """Why this instance should get no traffic yet, or None (for /readyz)."""
        if self._stop.is_set():
            return "stopping"
        if not self.link.up:
            return f"broker unreachable for {self.link.down_for_s():.0f} s ({self.link.why})"
        if self._owned == 0:
            return "no request partitions assigned (yet)"
        open_levels = [name for name, state in self._breakers().items() if state == "open"]
        if open_levels:
            return "circuit breaker open: " + ", ".join(open_levels)
        return None

    def _unstick(self, idle_s: float = 3.0) -> None:
        """Between batches nothing is paused; after `idle_s` without records, an
        owned partition that lags is reported (with what the fetcher holds for
        it), its fetching restarted (`restart_fetching`) and re-seeked to its
        position. A watchdog: the stalls seen so far, a partition never read
        again after a rebalance in a batch or after a broker restart, were
        kafka-python's parked records (see `release_parked_records`), its
        incremental fetch sessions and its offset validation, none of which a
        seek alone undoes."""
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
        end = consumer.end_offsets(owned, timeout_ms=CALL_TIMEOUT_MS)
        self.link.ok()
        stalled = False
        for partition in owned:
            position = consumer.position(partition, timeout_ms=CALL_TIMEOUT_MS)
            if position is not None and position < end[partition]:
                idle_for_s = now - self._last_records_s
                log.warning(
                    "%s lags (%d of %d) with nothing fetched for %.0f s (%s): fetching it anew",
                    partition, position, end[partition], idle_for_s,
                    fetch_state(consumer, partition),
                )  # fmt: skip
                consumer.seek(partition, position)
                stalled = True
        if stalled:
            restart_fetching(consumer)

    def _on_lost(self, partitions: set[Any]) -> None:
        """Called in a poll: what was read from these partitions is another
        instance's to answer now."""
        self._lost |= partitions
        self._paused -= partitions
        for partition in partitions:
            self._carried.pop(partition, None)

    def _poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        release_parked_records(self._consumer)
        polled: dict[Any, list[Any]] = self._consumer.poll(timeout_ms=timeout_ms)
        return polled

    def _pause_all(self) -> None:
        """While a batch is in hand (answered or not) its partitions, and any
        assigned meanwhile, are paused: polls only keep the membership alive."""
        fresh = set(self._consumer.assignment()) - self._paused
        if fresh:
            self._consumer.pause(*fresh)
            self._paused |= fresh

    def _resume_all(self) -> None:
        owned = set(self._consumer.assignment())
        self._consumer.resume(*(self._paused & owned))
        self._paused = set()

    def _poll_paused(self, timeout_ms: int) -> None:
        """Poll with every partition paused; what partitions assigned during the
        poll return is carried to the next batch."""
        self._pause_all()
        for partition, records in self._poll(timeout_ms).items():
            self._carried.setdefault(partition, []).extend(records)
        self._pause_all()

    def _wait_for(self, pending: list[Future[Any]]) -> bool:
        """Keep polling (partitions paused) until the worker is done. False when a
        stop's grace period ran out first. A failed poll (the broker away) is an
        outage, not the end of the work in hand."""
        from kafka.errors import KafkaError

        while not all(job.done() for job in pending):
            if self._grace_left_s() <= 0:
                return False
            try:
                self._poll_paused(100)
            except KafkaError as error:
                self.link.failed("poll while answering", error)
                self._stop.wait(0.2)
        return True

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
        self.delivery.write([output])  # BatchFailed: the loop waits, the next turn tries again
        self._since_snapshot = 0
        self.stats.n_snapshots += 1
