"""A running mean that follows a stream whose values change."""

from __future__ import annotations


class RunningMean:
    """Mean of the first `warmup` values, then an exponential moving average,
    so a cost estimate follows a stream whose costs change."""

    def __init__(self, alpha: float = 0.05, warmup: int = 20) -> None:
        self.alpha, self.warmup = alpha, warmup
        self.value = 0.0
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1
        rate = 1.0 / self.n if self.n <= self.warmup else self.alpha
        self.value += rate * (x - self.value)
