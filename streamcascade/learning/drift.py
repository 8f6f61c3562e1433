"""Drift detection with river's ADWIN over a 0/1 error stream, with JSON state.

ADWIN's internals live in Rust and do not serialise; but it is deterministic,
so its state is rebuilt exactly by replaying the values seen since the last
detection (kept here, bounded). After a detection the monitor starts a fresh
detector: the old regime's values say nothing about the new one.
"""

from __future__ import annotations

from typing import Any

from river import drift

_MAX_KEPT = 4096  # beyond this a restored detector is approximate (oldest values dropped)


class DriftMonitor:
    def __init__(self, delta: float = 0.002) -> None:
        self.delta = delta
        self.detector = drift.ADWIN(delta=delta)
        self.values: list[float] = []
        self.n_detections = 0
        self.n_seen = 0

    def update(self, error: float) -> bool:
        """Feed one value; True when a change was detected (the window restarts)."""
        self.n_seen += 1
        self.detector.update(error)
        if self.detector.drift_detected:
            self.n_detections += 1
            self.detector = drift.ADWIN(delta=self.delta)
            self.values = []
            return True
        self.values.append(error)
        if len(self.values) > _MAX_KEPT:
            self.values = self.values[-_MAX_KEPT:]
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "values": list(self.values),
            "n_detections": self.n_detections,
            "n_seen": self.n_seen,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DriftMonitor:
        monitor = cls(float(state["delta"]))
        for value in state["values"]:
            monitor.detector.update(float(value))
        monitor.values = [float(v) for v in state["values"]]
        monitor.n_detections = int(state["n_detections"])
        monitor.n_seen = int(state["n_seen"])
        return monitor
