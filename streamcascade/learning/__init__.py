"""Online learning for the cascade (issue 3): deferral policies so far."""

from streamcascade.learning.deferral import Decision, HedgeThresholdPolicy

__all__ = ["Decision", "HedgeThresholdPolicy"]
