"""The learning cascade with the Hedge policy: level 0 gates level 1, learned
thresholds decide who answers, and every answer that a higher level (or a
reference test) can check becomes a label for the levels below it. It runs on
the one decision loop (`RoutedCascadeEngine`) through `HedgeDriver`."""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.cascade.hedge import HedgeDriver, hedge_route
from streamcascade.cascade.labeler import Labeler, LabelSource
from streamcascade.cascade.level import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.learning.learner import CascadeLearner

__all__ = ["LabelSource", "Labeler", "OnlineCascadeEngine", "hedge_route"]


class OnlineCascadeEngine(RoutedCascadeEngine):
    """Like CascadeEngine, but who answers is learned while it serves.

    A level that accepts may still send the request up (forced exploration):
    its answer is published, and the higher level's answer labels it.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        learner: CascadeLearner,
        labeler: Labeler,
        fallback: Level | None = None,
        deadline_s: float | None = None,
    ) -> None:
        super().__init__(
            levels,
            fallback=fallback,
            deadline_s=deadline_s,
            driver=HedgeDriver(learner, labeler, levels),
        )
        self.hedge_learner = learner

    @property
    def learner(self) -> CascadeLearner:  # type: ignore[override]
        """The Hedge learner (its state is what snapshots hold)."""
        return self.hedge_learner
