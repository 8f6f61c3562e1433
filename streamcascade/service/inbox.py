"""The learning inbox: feedback records, and the other replicas' learning events.

Every instance reads both topics with a group of its own, so every replica
sees every feedback record and every other replica's events. The consumer is
assigned, not subscribed: no group rebalance to wait for, and the starting
position ("latest" for a new instance, or what the restored snapshot holds)
is fixed when it opens. What the inbox learns runs on the service's worker
thread (the learner is not thread-safe); malformed records become dead letters.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from streamcascade.config import KafkaConfig
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.schemas import Feedback
from streamcascade.service.codec import Rejected, parse_feedback
from streamcascade.service.delivery import BatchFailed, Delivery, Output
from streamcascade.service.kafka_io import CALL_TIMEOUT_MS, MAX_MESSAGE_BYTES, client_settings
from streamcascade.service.outage import BrokerLink
from streamcascade.service.stats import ServiceStats

log = logging.getLogger(__name__)


class Inbox:
    """Reads feedback and learning events, and has the learner learn from them.

    `on_worker` runs a function on the service's worker thread and returns its
    result; `dead_letter(record, reason, error_type)` makes a dead letter;
    `link` hears of Kafka calls that failed (an outage, waited out by the loop).
    """

    def __init__(
        self,
        config: KafkaConfig,
        instance_id: str,
        session: str,
        learner: OnlineLearner | None,
        stats: ServiceStats,
        delivery: Delivery,
        on_worker: Callable[[Callable[[], Any]], Any],
        dead_letter: Callable[[Any, str, str], Output],
        link: BrokerLink | None = None,
        learn_feedback: Callable[[Feedback], bool] | None = None,
    ) -> None:
        """`learn_feedback`: who learns from a Feedback record (the engine: its
        policy, and a level that learns online when the answer was its own);
        default the learner."""
        self.config = config
        self.instance_id = instance_id
        self.session = session
        self.learner = learner
        self.learn_feedback = learn_feedback or (learner.learn_one if learner is not None else None)
        self.stats = stats
        self.delivery = delivery
        self._on_worker = on_worker
        self._dead_letter = dead_letter
        self.link = link or BrokerLink(None)
        self.consumer: Any = None

    def open(self, restored_offsets: dict[str, int]) -> None:
        """Assign every partition of the inbox topics; start where the restored
        snapshot stopped, or at the end for a new instance."""
        from kafka import KafkaConsumer, TopicPartition

        config = self.config
        self.consumer = KafkaConsumer(
            **client_settings(config),
            group_id=f"{config.group_id}.learn.{self.instance_id}",
            client_id=f"{self.instance_id}-learn",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
            max_poll_records=500,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        )
        topics = [config.topics.feedback]
        if self.learner is not None:
            topics.append(config.topics.learning)
        self.consumer.assign(
            [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(self.consumer.partitions_for_topic(topic) or set())
            ]
        )
        for partition in self.consumer.assignment():
            offset = restored_offsets.get(f"{partition.topic}:{partition.partition}")
            if offset is not None:
                self.consumer.seek(partition, offset)  # the events the snapshot does not hold
            else:
                self.consumer.position(partition)

    def learn(self) -> int:
        """Learn from what has arrived; how many changes to the learner's state."""
        from kafka.errors import KafkaError

        polled = self.consumer.poll(timeout_ms=0)
        if not polled:
            return 0
        dead: list[Output] = []
        feedback: list[Feedback] = []
        events: list[dict[str, Any]] = []
        for records in polled.values():
            for record in records:
                if record.topic == self.config.topics.learning:
                    if dict(record.headers or []).get("session") == self.session.encode():
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
        changes = 0
        if (feedback and self.learn_feedback is not None) or (events and self.learner is not None):
            learned, applied = self._on_worker(lambda: self._apply(feedback, events))
            self.stats.n_feedback_learned += learned
            self.stats.n_events_in += applied
            changes = len(feedback) + applied
        if dead:
            try:
                self.delivery.write(dead)
            except BatchFailed as error:
                # Learned already; only the dead letters are read (and learned) again.
                self.link.failed("inbox dead letters", error)
                for partition, records in polled.items():
                    self.consumer.seek(partition, records[0].offset)
                return changes
            self.stats.n_dead_letters += len(dead)
        try:
            # Only a hint: a restarted instance starts where its snapshot says.
            self.consumer.commit(timeout_ms=CALL_TIMEOUT_MS)
        except KafkaError as error:
            self.link.failed("inbox commit", error)
        return changes

    def _apply(self, feedback: list[Feedback], events: list[dict[str, Any]]) -> tuple[int, int]:
        learner = self.learner
        applied = 0
        if learner is not None:
            for event in events:
                try:
                    learner.apply_event(event)
                    applied += 1
                except (KeyError, TypeError, ValueError) as error:
                    log.warning("a learning event could not be applied: %r", error)
        learn = self.learn_feedback
        return sum(learn(f) for f in feedback) if learn is not None else 0, applied

    def drain(self, timeout_s: float = 10.0) -> tuple[dict[str, int], int]:
        """Learn from everything up to the inbox's current end: the positions
        reached (a snapshot holds everything before them) and the changes."""
        consumer = self.consumer
        partitions = list(consumer.assignment())
        end = consumer.end_offsets(partitions, timeout_ms=CALL_TIMEOUT_MS) if partitions else {}
        deadline = time.monotonic() + timeout_s
        changes = 0
        while any(self._position(p) < end[p] for p in partitions):
            if time.monotonic() > deadline:
                break
            changes += self.learn()
        positions = {f"{p.topic}:{p.partition}": self._position(p) for p in partitions}
        return positions, changes

    def _position(self, partition: Any) -> int:
        from kafka.errors import KafkaTimeoutError

        position = self.consumer.position(partition, timeout_ms=CALL_TIMEOUT_MS)
        if position is None:
            raise KafkaTimeoutError(f"no position for {partition}")
        return int(position)

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # closing must not hide the original error
                log.exception("closing the inbox consumer failed")
