"""A cascade engine from a config: fixed thresholds, or learning while it serves."""

from __future__ import annotations

from dataclasses import dataclass

from streamcascade.cascade.engine import CascadeEngine
from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import AppConfig
from streamcascade.learning.learner import CascadeLearner
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.learning.route_learner import RouteLearner
from streamcascade.sandbox import Sandbox


@dataclass
class BuiltEngine:
    engine: CascadeEngine | OnlineCascadeEngine | RoutedCascadeEngine
    learner: OnlineLearner | None
    """Set when the engine learns; its state is what snapshots hold."""


def build_engine(config: AppConfig, sandbox: Sandbox, learn: bool = False) -> BuiltEngine:
    fixed = CascadeEngine.from_config(config, sandbox)
    if not (config.learning.enabled or learn):
        return BuiltEngine(fixed, None)
    labeler = Labeler(sandbox, config.learning.labels, config.learning.max_probes)
    if config.learning.policy == "router":
        router = RouteLearner(config.learning, config.levels)
        return BuiltEngine(
            RoutedCascadeEngine(
                fixed.levels,
                learner=router,
                labeler=labeler,
                fallback=fixed.fallback,
                deadline_s=fixed.deadline_s,
            ),
            router,
        )
    learner = CascadeLearner(config.learning, len(fixed.levels))
    return BuiltEngine(OnlineCascadeEngine(fixed.levels, learner, labeler), learner)
