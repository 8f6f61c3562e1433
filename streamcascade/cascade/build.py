"""A cascade engine from a config: fixed thresholds, or learning while it serves."""

from __future__ import annotations

from dataclasses import dataclass

from streamcascade.cascade.engine import CascadeEngine
from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.config import AppConfig
from streamcascade.learning.learner import CascadeLearner
from streamcascade.sandbox import Sandbox


@dataclass
class BuiltEngine:
    engine: CascadeEngine | OnlineCascadeEngine
    learner: CascadeLearner | None
    """Set when the engine learns; its state is what snapshots hold."""


def build_engine(config: AppConfig, sandbox: Sandbox, learn: bool = False) -> BuiltEngine:
    fixed = CascadeEngine.from_config(config, sandbox)
    if not (config.learning.enabled or learn):
        return BuiltEngine(fixed, None)
    learner = CascadeLearner(config.learning, len(fixed.levels))
    labeler = Labeler(sandbox, config.learning.labels, config.learning.max_probes)
    return BuiltEngine(OnlineCascadeEngine(fixed.levels, learner, labeler), learner)
