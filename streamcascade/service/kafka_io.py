"""Kafka clients for the service: their settings, the service's topics, the
latest learner snapshot, and workarounds for kafka-python 3.0.12 (bounded
transactional calls, producers that close at once, records parked by the
fetcher). Kept apart from the service loop (`worker`) so that what works
around one client library's bugs is in one place, with the reason for each."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from streamcascade.config import KafkaConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a learner snapshot can be large


class Stuck(Exception):
    """A Kafka call did not return in time."""


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking client call with a time limit. kafka-python waits without
    one on transactional calls, and one can hang for good after the broker
    restarts (its cached coordinator is never refreshed); a daemon thread is
    left behind then, never the service."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as error:
            box["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise Stuck(f"{what} took over {timeout_s} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """What every kafka-python client gets: the servers and the pass-through
    settings (security and the like)."""
    return {"bootstrap_servers": list(config.bootstrap_servers), **config.client}


def ensure_topics(config: KafkaConfig) -> None:
    """Create the service's topics when missing; the state topic is compacted."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    topics = config.topics
    admin = KafkaAdminClient(**client_settings(config))
    try:
        existing = set(admin.list_topics())
        wanted = []
        for name in (topics.requests, topics.answers, topics.feedback, topics.deadletter):
            if name not in existing:
                wanted.append(NewTopic(name, config.partitions, config.replication_factor))
        if topics.learning not in existing:
            # One partition: every instance applies the events in the same order.
            wanted.append(NewTopic(topics.learning, 1, config.replication_factor))
        if topics.state not in existing:
            wanted.append(
                NewTopic(
                    topics.state, 1, config.replication_factor,
                    topic_configs={"cleanup.policy": "compact",
                                   "max.message.bytes": str(MAX_MESSAGE_BYTES)},
                )
            )  # fmt: skip
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance was first
                admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


def read_latest_state(config: KafkaConfig) -> dict[str, Any] | None:
    """The newest snapshot for this group in the state topic, or None."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **client_settings(config),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
    )
    try:
        partitions = consumer.partitions_for_topic(config.topics.state) or set()
        assigned = [TopicPartition(config.topics.state, p) for p in partitions]
        if not assigned:
            return None
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        latest: bytes | None = None
        key = config.group_id.encode()
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in assigned):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {config.topics.state} took over 60 s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == key:
                        latest = record.value  # None: a tombstone
        if latest is None:
            return None
        snapshot: dict[str, Any] = json.loads(latest)
        return snapshot
    finally:
        consumer.close()


def close_at_once(producer: Any) -> None:
    """Close a producer without waiting for its unsent records. kafka-python
    3.0.12's `close(timeout=0)` flushes first and raises when records are
    still unsent, before it force-closes its sender thread; that thread then
    lives on until the records expire (`delivery_timeout_ms`, 2 min), and a
    fault run's replacement producer crawled until it died. So the sender is
    force-closed here when `close` gives up."""
    try:
        producer.close(timeout=0)
    except Exception as error:  # a stuck producer's own errors are expected
        log.debug("closing a producer: %r", error)
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()


def release_parked_records(consumer: Any) -> None:
    """Work around a kafka-python 3.0.12 fetcher bug (its port of KAFKA-7548).

    Records already fetched for a partition that gets paused are parked, and
    the partition is not fetched again until they are handed back. They are
    handed back only while the fetcher's in-line slot is None, but a drained
    record set stays in that slot (empty, never None): once another
    partition's records have been consumed, the parked partition is never
    read again. That left one partition of a group unread for good after a
    rebalance in the middle of a batch. Emptying a drained slot before each
    poll lets the parked records back. A no-op on a fetcher without these
    fields."""
    fetcher = getattr(consumer, "_fetcher", None)
    in_line = getattr(fetcher, "_next_partition_records", None)
    if in_line is not None and not in_line and getattr(fetcher, "_paused_partition_records", None):
        fetcher._next_partition_records = None  # type: ignore[union-attr]
