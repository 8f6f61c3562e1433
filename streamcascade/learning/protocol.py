"""What the service and `run --state-dir` need of a learner, whichever policy it runs."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from streamcascade.schemas import Feedback

EVENT_CAPACITY = 10_000
"""Learning events a learner keeps for whoever takes them (the service takes
them every batch, and a batch holds at most `kafka.max_in_flight` requests)."""


class EventOutbox:
    """A learner's learning events, oldest first, until they are taken (the
    service publishes them with the batch's answers, for replicas to apply).
    Bounded: a learner nobody asks (`run --learn`) keeps only the latest, and
    `n_dropped` counts the rest.

    >>> outbox = EventOutbox(capacity=2)
    >>> for n in range(3):
    ...     outbox.put({"n": n})
    >>> outbox.take(), outbox.n_dropped, outbox.take()
    ([{'n': 1}, {'n': 2}], 1, [])
    """

    def __init__(self, capacity: int = EVENT_CAPACITY) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.n_dropped = 0

    def put(self, event: dict[str, Any]) -> None:
        if len(self._events) == self._events.maxlen:
            self.n_dropped += 1
        self._events.append(event)

    def take(self) -> list[dict[str, Any]]:
        events = list(self._events)
        self._events.clear()
        return events


class OnlineLearner(Protocol):
    """What the service and `run --state-dir` need of a learner: its state,
    the events it shares with replicas, and Feedback."""

    n_requests: int

    def take_events(self) -> list[dict[str, Any]]:
        """The learning events since the last call, oldest first (each one a
        finished request's learning, for `apply_event` on a replica)."""
        ...

    def apply_event(self, event: dict[str, Any]) -> None: ...

    def learn_one(self, feedback: Feedback) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def gauges(self) -> dict[str, float]:
        """Counters and knobs worth watching (requests seen, labels, drift
        alarms, mu), by name, for the service's metrics."""
        ...
