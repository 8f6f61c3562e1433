"""How a batch's outputs and its offsets reach Kafka: the service's checkpoint.

quix-streams keeps the checkpoint (what is produced, and the offsets committed
with it) apart from the app's loop; so does this. The loop hands a batch's
outputs and offsets to a `Delivery`, which owns the producer:

- `AtLeastOnce`: the outputs are sent and acknowledged (acks=all, idempotent
  producer) before the offsets are committed. A crash in between re-delivers
  the batch: duplicates, never losses.
- `ExactlyOnce`: the outputs and the offsets are one transaction
  (`send_offsets_to_transaction` with the consumer's group metadata); the
  transactional id is stable per instance, so a restarted instance fences its
  zombie, and `read_committed` readers see each answer once.

Either raises `BatchFailed` when the batch could not be written; the loop keeps
the batch and tries again (after a backoff while the broker is away). A retry
never writes twice what the broker already has: at least once re-sends only
records whose send failed; exactly once first asks the group whether the
batch's offsets were committed by the try whose outcome it did not learn.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamcascade.config import KafkaConfig
from streamcascade.service.kafka_io import (
    MAX_MESSAGE_BYTES,
    BrokerWatch,
    Stuck,
    bounded,
    client_settings,
    close_at_once,
    rejoin_after,
)

log = logging.getLogger(__name__)


@dataclass
class Output:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class BatchFailed(Exception):
    """The batch's outputs or offsets could not be written; it runs again."""


def dead_letter(
    topic: str, record: Any, reason: str, error_type: str, headers: list[tuple[str, bytes]]
) -> Output:
    """The original bytes as the value; where it came from and why, in headers."""
    return Output(
        topic,
        record.key,
        record.value or b"",
        [
            ("reason", reason[:4000].encode()),
            ("error_type", error_type.encode()),
            ("source_topic", str(record.topic).encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
            *headers,
        ],
    )


class Delivery(ABC):
    """Owns the producer; `commit` writes a batch with its offsets, `write`
    writes outputs that have no offsets (dead letters from the inbox, snapshots).

    `stopping` says whether the service is shutting down. A producer that
    failed is dropped, and the next call builds a new one (a failure then is
    `BatchFailed` too), so no call waits for a broker that is away for longer
    than `transaction_timeout_s`.
    """

    transactional = False

    def __init__(self, config: KafkaConfig, instance_id: str, stopping: Callable[[], bool]) -> None:
        self.config = config
        self.instance_id = instance_id
        self._stopping = stopping
        self.producer: Any = None
        self._watch = BrokerWatch(list(config.bootstrap_servers))

    def _bounded(self, call: Callable[[], Any], what: str) -> Any:
        """A transactional call, given up on its timeout or once a broker went
        away under it."""
        self._watch.start()
        return bounded(call, self.config.transaction_timeout_s, what, self._watch)

    def open(self) -> None:
        self.producer = self._new_producer()

    def _settings(self) -> dict[str, Any]:
        return {
            **client_settings(self.config),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_request_size": MAX_MESSAGE_BYTES,
            "client_id": f"{self.instance_id}-producer",
            # send() and init_transactions() wait for metadata at most this long
            # (kafka-python's default, 60 s, would stall the loop in an outage).
            "max_block_ms": int(1000 * self.config.transaction_timeout_s),
        }

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(**self._settings())

    def _drop_producer(self, why: str) -> None:
        """A stuck or failed producer is closed in the background (closing it
        may block too); the next call builds a new one."""
        log.warning("dropping the producer: %s", why)
        old, self.producer = self.producer, None
        if old is not None:
            threading.Thread(target=close_at_once, args=(old,), daemon=True).start()

    def _ready_producer(self) -> Any:
        """The producer, built anew when the last one was dropped."""
        from kafka.errors import KafkaError

        if self.producer is None and self._stopping():
            # A broker that is away is not waited for at shutdown: starting a
            # producer then can take longer than the grace period.
            raise BatchFailed("no producer: the service is stopping")
        if self.producer is None:
            # Built on this thread, never in a thread left behind on a timeout:
            # a transactional producer that finished starting after its
            # replacement would bump the epoch under it (a broker-restarts run
            # saw its next transaction fenced, and lost a batch). Its waits are
            # bounded by max_block_ms (transaction_timeout_s); an init given up
            # sooner has its producer closed before this returns.
            try:
                self.producer = self._new_producer()
            except (Stuck, KafkaError) as error:  # the broker may still be away
                raise BatchFailed(f"no producer: {error!r}") from error
        return self.producer

    @abstractmethod
    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        """Write the batch's outputs and commit its offsets (those of partitions
        the consumer still owns); `BatchFailed` when it could not."""

    @abstractmethod
    def write(self, outputs: list[Output]) -> None:
        """Outputs with no offsets to commit alongside; `BatchFailed` when it
        could not (each delivery retries in its own way)."""

    def _send(self, producer: Any, output: Output) -> Any:
        return producer.send(output.topic, key=output.key, value=output.value,
                             headers=output.headers)  # fmt: skip

    def close(self, at_once: bool = False) -> None:
        """`at_once`: do not wait for unsent records (the broker is away, or what
        is unsent belongs to a batch that will be answered again)."""
        if self.producer is None:
            return
        if at_once:
            close_at_once(self.producer)
            return
        try:
            self.producer.close(timeout=10)
        except Exception:  # closing must not hide the original error
            log.exception("closing the producer failed")


class AtLeastOnce(Delivery):
    """Outputs acknowledged, then offsets committed. A record whose send is
    still in flight from a failed try is waited for on the next try, not sent
    again (the idempotent producer keeps retrying it while the broker is away)."""

    def __init__(self, config: KafkaConfig, instance_id: str, stopping: Callable[[], bool]) -> None:
        super().__init__(config, instance_id, stopping)
        # id(output) -> (output, its future), for outputs of tries that failed.
        self._in_flight: dict[int, tuple[Output, Any]] = {}

    def write(self, outputs: list[Output]) -> None:
        from kafka.errors import KafkaError

        limit_s = self.config.transaction_timeout_s
        producer = self._ready_producer()
        futures = []
        try:
            for output in outputs:
                kept = self._in_flight.get(id(output))
                if kept is None or kept[0] is not output or kept[1].failed():
                    kept = (output, self._send(producer, output))
                    self._in_flight[id(output)] = kept
                futures.append(kept[1])
            producer.flush(timeout=limit_s)
            for future in futures:
                future.get(timeout=limit_s)
        except KafkaError as error:
            raise BatchFailed(repr(error)) from error
        self._in_flight.clear()

    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        from kafka.errors import KafkaError

        owned = set(consumer.assignment())
        commit = {tp: offset for tp, offset in offsets.items() if tp in owned}
        self.write(outputs)
        if commit:
            try:
                consumer.commit(commit, timeout_ms=int(1000 * self.config.transaction_timeout_s))
            except KafkaError as error:
                # Answers are out; whoever consumes these next answers them again
                # (at least once).
                log.warning("offset commit failed: %r", error)


class ExactlyOnce(Delivery):
    """Outputs and offsets in one transaction."""

    transactional = True

    def __init__(self, config: KafkaConfig, instance_id: str, stopping: Callable[[], bool]) -> None:
        super().__init__(config, instance_id, stopping)
        self._unsure = False
        """The last transaction failed at or after its commit: it may have
        committed all the same."""
        self._n_failed_inits = 0

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        # Stable per instance: a restarted instance fences its own zombie.
        settings = {
            **self._settings(),
            "transactional_id": f"{self.config.group_id}.{self.instance_id}",
        }
        producer = KafkaProducer(**settings)
        # kafka-python 3.0.12 can sit on a coordinator that a killed broker
        # still was when it asked (the sender retries nothing for the whole
        # max_block_ms: 15 s after each leader kill), and the cluster may name
        # the dead broker for seconds more. With a broker away, an init is given
        # up after 1 s four times, then 2 s four times, and so on (a slow cluster
        # with a node down still gets its full timeout in the end); each try asks
        # for the coordinator afresh.
        after_s = 1.0 + self._n_failed_inits // 4
        watch = BrokerWatch(list(self.config.bootstrap_servers), after_s=after_s)
        watch.start()
        try:
            # Bumps the epoch: whatever an older producer left open is aborted,
            # and one that had begun to commit is completed first.
            bounded(producer.init_transactions, self.config.transaction_timeout_s,
                    "init-transactions", watch)  # fmt: skip
        except BaseException:
            self._n_failed_inits += 1
            # Its sender is stopped before a replacement starts, so its init
            # cannot land after the replacement's and fence it.
            close_at_once(producer, join_s=1.0)
            raise
        self._n_failed_inits = 0
        return producer

    def _already_committed(self, consumer: Any, commit: dict[Any, Any]) -> bool:
        """Whether the group's committed offsets already hold this batch's (a
        try whose commit was cut off by an outage may have gone through)."""
        limit_ms = int(1000 * self.config.transaction_timeout_s)
        for partition, offset in commit.items():
            committed = consumer.committed(partition, timeout_ms=limit_ms)
            if committed is None or committed < offset.offset:
                return False
        return True

    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        from kafka.errors import KafkaError

        owned = set(consumer.assignment())
        commit = {tp: offset for tp, offset in offsets.items() if tp in owned}
        producer = self._ready_producer()  # a new one completes or aborts the last transaction
        if self._unsure and commit:
            try:
                done = self._already_committed(consumer, commit)
            except KafkaError as error:
                raise BatchFailed(f"committed offsets unknown: {error!r}") from error
            if done:
                log.info("the batch's transaction had committed before the outage cut it off")
                self._unsure = False
                return
        self._unsure = False
        try:
            producer.begin_transaction()
            for output in outputs:
                self._send(producer, output)
            if commit:
                metadata = consumer.group_metadata()
                self._bounded(
                    lambda: producer.send_offsets_to_transaction(commit, metadata), "send-offsets"
                )
            self._unsure = True
            self._bounded(producer.commit_transaction, "commit")
            self._unsure = False
        except (Stuck, KafkaError) as error:
            rejoin_after(consumer, error)
            # Not just aborted: kafka-python 3.0.12 keeps offsets whose commit
            # failed (a rebalance: IllegalGeneration) and commits them with the
            # next transaction, whose answers do not hold them: requests lost.
            # A new producer (same transactional id) aborts this one and
            # starts clean.
            if self.producer is producer:
                self._drop_producer(f"transaction failed: {error!r}")
            raise BatchFailed(repr(error)) from error

    def write(self, outputs: list[Output]) -> None:
        from kafka.errors import KafkaError

        producer = self._ready_producer()
        try:
            producer.begin_transaction()
            for output in outputs:
                self._send(producer, output)
            self._bounded(producer.commit_transaction, "commit")
        except (Stuck, KafkaError) as error:
            self._drop_producer(f"transaction failed: {error!r}")
            raise BatchFailed(repr(error)) from error


DELIVERIES: dict[str, type[Delivery]] = {
    "at_least_once": AtLeastOnce,
    "exactly_once": ExactlyOnce,
}
