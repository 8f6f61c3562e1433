"""What a service instance has done so far: counted on the loop's thread, read
by the logs, the metrics and the tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ServiceStats:
    n_requests: int = 0
    """Request records taken from Kafka (bad ones included)."""
    n_answers: int = 0
    n_dead_letters: int = 0
    n_failed: int = 0
    """Requests whose processing raised (they are dead letters too)."""
    n_feedback: int = 0
    n_feedback_learned: int = 0
    n_events_out: int = 0
    """Learning events this instance published for the others."""
    n_events_in: int = 0
    """Other instances' learning events applied here."""
    n_batches: int = 0
    n_batches_retried: int = 0
    n_assignments: int = 0
    """Group rebalances this instance took part in (the first one included)."""
    n_revocations: int = 0
    n_snapshots: int = 0
    restored_from: int | None = None
    """The snapshot's request count this instance started from."""
    started_s: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started_s)
        return (
            f"{self.n_requests} requests ({self.n_requests / elapsed:.1f}/s), "
            f"{self.n_answers} answers, {self.n_dead_letters} dead letters "
            f"({self.n_failed} failed), {self.n_feedback} feedback "
            f"({self.n_feedback_learned} learned), {self.n_batches_retried} batches retried"
        )
