"""What the service and `run --state-dir` need of a learner, whichever policy it runs."""

from __future__ import annotations

from typing import Any, Protocol

from streamcascade.schemas import Feedback


class OnlineLearner(Protocol):
    """What the service and `run --state-dir` need of a learner: its state,
    the events it shares with replicas, and Feedback."""

    n_requests: int
    on_event: Any

    def apply_event(self, event: dict[str, Any]) -> None: ...

    def learn_one(self, feedback: Feedback) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def gauges(self) -> dict[str, float]:
        """Counters and knobs worth watching (requests seen, labels, drift
        alarms, mu), by name, for the service's metrics."""
        ...
