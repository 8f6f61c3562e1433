"""Online learning for the cascade (issue 3): deferral policies so far."""

from streamcascade.learning.deferral import DeferralDecision, HedgeThresholdPolicy

__all__ = ["DeferralDecision", "HedgeThresholdPolicy"]
