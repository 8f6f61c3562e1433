"""Feeding records into the requests topic and following a topic: for users,
tests and benchmarks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from streamcascade.config import KafkaConfig
from streamcascade.errors import Unavailable
from streamcascade.service.kafka_io import client_settings


def record_key(value: bytes) -> bytes | None:
    """A request's id as its key (so one request always lands on one partition);
    None when the value is not a JSON object with a string id."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    identifier = data.get("id") if isinstance(data, dict) else None
    return identifier.encode() if isinstance(identifier, str) else None


def feed(config: KafkaConfig, values: Iterable[bytes], topic: str | None = None) -> int:
    """Send each value as it is (bad ones too) and wait for the broker's acks."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        **client_settings(config), acks="all", linger_ms=20, max_request_size=16 * 1024 * 1024
    )
    n_sent = 0
    try:
        futures = []
        for value in values:
            futures.append(producer.send(topic or config.topics.requests, key=record_key(value),
                                         value=value))  # fmt: skip
            n_sent += 1
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close()
    return n_sent


@dataclass(frozen=True)
class Followed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def follow(
    config: KafkaConfig,
    topic: str,
    from_beginning: bool = True,
    idle_timeout_s: float | None = 10.0,
    max_records: int | None = None,
    read_committed: bool = True,
) -> Iterator[Followed]:
    """Records of `topic` as they arrive, with no consumer group (nothing is
    committed). Ends after `idle_timeout_s` without a record (None: never) or
    after `max_records`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **client_settings(config),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            raise Unavailable(
                f"topic {topic!r} does not exist on the broker (yet)",
                hint="`streamcascade serve` creates its topics when it starts; "
                "or check the topic's name (--topic)",
            )
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.seek_to_end(*partitions)
        n_seen = 0
        last = time.monotonic()
        while max_records is None or n_seen < max_records:
            polled: dict[Any, list[Any]] = consumer.poll(timeout_ms=200)
            if not polled:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            for records in polled.values():
                for record in records:
                    yield Followed(record.topic, record.partition, record.offset, record.key,
                                   record.value, dict(record.headers or []))  # fmt: skip
                    n_seen += 1
    finally:
        consumer.close()
