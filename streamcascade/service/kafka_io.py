"""Kafka clients for the service: their settings, the service's topics, the
latest learner snapshot, and workarounds for kafka-python 3.0.12 (bounded
transactional calls, producers that close at once, records parked by the
fetcher). Kept apart from the service loop (`worker`) so that what works
around one client library's bugs is in one place, with the reason for each."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from streamcascade.config import KafkaConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a learner snapshot can be large
CALL_TIMEOUT_MS = 5000
"""The bound on a blocking consumer call in the service loop (kafka-python's
`position` waits for ever without one, while the broker is away)."""


class Stuck(Exception):
    """A Kafka call did not return in time."""


def bounded(
    call: Callable[[], Any],
    timeout_s: float,
    what: str,
    give_up: Callable[[float], str | None] | None = None,
) -> Any:
    """Run a blocking client call with a time limit. kafka-python waits without
    one on transactional calls, and one can hang for good after the broker
    restarts (its cached coordinator is never refreshed); a daemon thread is
    left behind then, never the service. `give_up(elapsed_s)`, asked every
    0.25 s, may end the wait sooner with its reason (`Stuck` either way)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as error:
            box["error"] = error
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
    while not done.wait(0.25):
        elapsed_s = time.monotonic() - started
        if elapsed_s > timeout_s:
            raise Stuck(f"{what} took over {timeout_s} s")
        reason = give_up(elapsed_s) if give_up is not None else None
        if reason is not None:
            raise Stuck(f"{what} given up after {elapsed_s:.1f} s: {reason}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class BrokerWatch:
    """Gives up a transactional call that hangs because a broker went away
    under it: kafka-python waits on the dead connection for its whole request
    timeout, and the transaction is lost anyway. A call is given up once it
    has run `after_s` and some bootstrap server refuses connections (or did,
    since the call began: a broker that came back does not revive it). While
    every server accepts connections only the call's own timeout applies: a
    slow but healthy cluster is never given up on.

    >>> watch = BrokerWatch(["127.0.0.1:1"], after_s=0.0)
    >>> watch.start()
    >>> watch(0.5)
    'a broker went away (127.0.0.1:1)'
    """

    def __init__(self, servers: list[str], after_s: float = 1.0) -> None:
        self.servers = servers
        self.after_s = after_s
        self._down: list[str] = []

    def start(self) -> None:
        """Before a call: forget what earlier calls saw."""
        self._down = []

    def __call__(self, elapsed_s: float) -> str | None:
        down = [server for server in self.servers if not _listening(server)]
        self._down = self._down or down
        if self._down and elapsed_s >= self.after_s:
            return f"a broker went away ({', '.join(self._down)})"
        return None


def _listening(server: str) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def rejoin_after(consumer: Any, error: BaseException) -> None:
    """A transaction's offsets were refused because this member left the group
    (UnknownMemberId, a broker restart) or its generation is old: have the
    next poll rejoin now. kafka-python learns it only from a later heartbeat,
    and until then every transaction fails the same way."""
    coordinator = getattr(consumer, "_coordinator", None)
    text = repr(error)
    if coordinator is None:
        return
    if "UnknownMemberId" in text and hasattr(coordinator, "reset_generation"):
        coordinator.reset_generation()
    elif ("IllegalGeneration" in text or "RebalanceInProgress" in text) and hasattr(
        coordinator, "request_rejoin"
    ):
        coordinator.request_rejoin()


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """What every kafka-python client gets: the servers, a reconnect backoff
    capped at 1 s (Java's default; kafka-python's 30 s meant a client tried
    again up to 30 s after a restarted broker was back: missed heartbeats, a
    lost group membership, transactional calls stuck for their whole
    timeout), and the pass-through settings (security and the like), which
    may override it."""
    return {
        "bootstrap_servers": list(config.bootstrap_servers),
        "reconnect_backoff_max_ms": 1000,
        **config.client,
    }


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


def close_at_once(producer: Any, join_s: float = 0.0) -> None:
    """Close a producer without waiting for its unsent records. kafka-python
    3.0.12's `close(timeout=0)` flushes first and raises when records are
    still unsent, before it force-closes its sender thread; that thread then
    lives on until the records expire (`delivery_timeout_ms`, 2 min), and a
    fault run's replacement producer crawled until it died. So the sender is
    force-closed here when `close` gives up. `join_s`: wait this long for the
    sender thread to end (a force-closed sender sends nothing new, but one
    request may be on its way out)."""
    try:
        producer.close(timeout=0)
    except Exception as error:  # a stuck producer's own errors are expected
        log.debug("closing a producer: %r", error)
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()
    sender = getattr(producer, "_sender", None)
    if join_s > 0 and sender is not None and sender.is_alive():
        sender.join(join_s)


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


def fetch_state(consumer: Any, partition: Any) -> str:
    """What kafka-python's fetcher holds for one partition (for a stalled one's
    log line): why it is not fetched, when it is not."""
    fetcher = getattr(consumer, "_fetcher", None)
    subscriptions = getattr(consumer, "_subscription", None)
    if fetcher is None or subscriptions is None:
        return "?"
    state = getattr(subscriptions, "assignment", {}).get(partition)
    parts = []
    if state is not None:
        parts.append(
            f"paused={state.paused} valid_position={state.has_valid_position} "
            f"awaiting_validation={getattr(state, '_awaiting_validation', '?')} "
            f"pending_revocation={getattr(state, '_pending_revocation', '?')}"
        )
    completed = [f.topic_partition for f in list(getattr(fetcher, "_completed_fetches", []))]
    parts.append(f"completed={completed.count(partition)}")
    parts.append(
        f"parked_completed={partition in getattr(fetcher, '_paused_completed_fetches', {})}"
    )
    in_line = getattr(fetcher, "_next_partition_records", None)
    parts.append(f"in_line={getattr(in_line, 'topic_partition', None) == partition}")
    parts.append(
        f"pending_nodes={sorted(getattr(fetcher, '_nodes_with_pending_fetch_requests', []))}"
    )
    try:
        leader = fetcher._manager.cluster.leader_for_partition(partition)
    except Exception as error:  # a diagnostic must not raise
        leader = repr(error)
    parts.append(f"leader={leader}")
    sessions = getattr(fetcher, "_session_handlers", {})
    parts.append(
        "sessions={"
        + ", ".join(
            f"{node}: {handler.next_metadata} has={partition in handler.session_partitions}"
            for node, handler in sessions.items()
        )
        + "}"
    )
    return " ".join(parts)


def restart_fetching(consumer: Any) -> None:
    """Work around two kafka-python 3.0.12 fetcher bugs met after a broker
    restart, each of which left a partition unread (with records waiting)
    until new records happened to arrive:

    - Incremental fetch sessions (KIP-227): the broker moves a partition's
      offset in the session as it returns records; when the client drops
      those records (the partition was paused, lost or rewound), its session
      still holds the old offset, sees nothing changed, and never asks again.
      Every session is restarted here: the next fetch is a full one, from
      the consumer's positions.
    - Offset validation (KIP-320): one validation task is cached and shared;
      a task whose request died with the connection is never done, so no
      validation is tried again and the partitions wait for it for good. A
      task that is not done is dropped here (a new one is issued).

    A no-op on a fetcher without these fields."""
    fetcher = getattr(consumer, "_fetcher", None)
    for handler in list(getattr(fetcher, "_session_handlers", {}).values()):
        initial = getattr(type(handler.next_metadata), "INITIAL", None)
        if initial is not None:
            handler.next_metadata = initial
    for name in ("_validation_task", "_reset_task"):
        task = getattr(fetcher, name, None)
        if task is not None and not getattr(task, "is_done", True):
            setattr(fetcher, name, None)
