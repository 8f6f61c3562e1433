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

Either raises `BatchFailed` when the batch could not be written; the loop then
rewinds and runs it again.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamcascade.config import KafkaConfig
from streamcascade.service.kafka_io import (
    MAX_MESSAGE_BYTES,
    Stuck,
    bounded,
    client_settings,
    close_at_once,
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

    `stopping` says whether the service is shutting down (then a broker that is
    away is not waited for).
    """

    transactional = False

    def __init__(self, config: KafkaConfig, instance_id: str, stopping: Callable[[], bool]) -> None:
        self.config = config
        self.instance_id = instance_id
        self._stopping = stopping
        self.producer: Any = None

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
        }

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(**self._settings())

    def _replace_producer(self, why: str) -> None:
        """A stuck or failed producer is dropped (closed in the background, since
        closing it may block too) and a new one takes its place."""
        log.warning("rebuilding the producer: %s", why)
        old = self.producer
        threading.Thread(target=close_at_once, args=(old,), daemon=True).start()
        from kafka.errors import KafkaError

        while True:
            try:
                self.producer = self._new_producer()
                return
            except KafkaError as error:  # the broker may still be away
                if self._stopping():
                    raise
                log.warning("a new producer failed (%r): retrying", error)
                time.sleep(1.0)

    @abstractmethod
    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        """Write the batch's outputs and commit its offsets (those of partitions
        the consumer still owns); `BatchFailed` when it could not."""

    def write(self, outputs: list[Output]) -> None:
        """Outputs with no offsets to commit alongside."""
        from kafka.errors import KafkaError

        limit_s = self.config.transaction_timeout_s
        try:
            futures = [self._send(o) for o in outputs]
            self.producer.flush(timeout=limit_s)
            for future in futures:
                future.get(timeout=limit_s)
        except KafkaError as error:
            raise BatchFailed(repr(error)) from error

    def _send(self, output: Output) -> Any:
        return self.producer.send(
            output.topic, key=output.key, value=output.value, headers=output.headers
        )

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=10)
            except Exception:  # closing must not hide the original error
                log.exception("closing the producer failed")


class AtLeastOnce(Delivery):
    """Outputs acknowledged, then offsets committed."""

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

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        # Stable per instance: a restarted instance fences its own zombie.
        settings = {
            **self._settings(),
            "transactional_id": f"{self.config.group_id}.{self.instance_id}",
        }
        producer = KafkaProducer(**settings)
        # Bumps the epoch: whatever an older producer left open is aborted.
        producer.init_transactions()
        return producer

    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        from kafka.errors import KafkaError

        owned = set(consumer.assignment())
        commit = {tp: offset for tp, offset in offsets.items() if tp in owned}
        limit_s = self.config.transaction_timeout_s
        producer = self.producer
        try:
            producer.begin_transaction()
            for output in outputs:
                self._send(output)
            if commit:
                metadata = consumer.group_metadata()
                bounded(lambda: producer.send_offsets_to_transaction(commit, metadata),
                         limit_s, "send-offsets")  # fmt: skip
            bounded(producer.commit_transaction, limit_s, "commit")
        except Stuck as error:
            self._replace_producer(str(error))
            raise BatchFailed(str(error)) from error
        except KafkaError as error:
            # Not just aborted: kafka-python 3.0.12 keeps offsets whose commit
            # failed (a rebalance: IllegalGeneration) and commits them with the
            # next transaction, whose answers do not hold them: requests lost.
            # A new producer (same transactional id) aborts this one and
            # starts clean.
            self._replace_producer(f"transaction failed: {error!r}")
            raise BatchFailed(repr(error)) from error

    def write(self, outputs: list[Output]) -> None:
        from kafka.errors import KafkaError

        limit_s = self.config.transaction_timeout_s
        producer = self.producer
        try:
            producer.begin_transaction()
            for output in outputs:
                self._send(output)
            bounded(producer.commit_transaction, limit_s, "commit")
        except Stuck as error:
            self._replace_producer(str(error))
            raise BatchFailed(str(error)) from error
        except KafkaError as error:
            self._abort()
            raise BatchFailed(repr(error)) from error

    def _abort(self) -> None:
        from kafka.errors import KafkaError

        try:
            bounded(self.producer.abort_transaction, self.config.transaction_timeout_s, "abort")
        except (KafkaError, Stuck) as error:
            self._replace_producer(f"aborting the transaction failed: {error!r}")


DELIVERIES: dict[str, type[Delivery]] = {
    "at_least_once": AtLeastOnce,
    "exactly_once": ExactlyOnce,
}
