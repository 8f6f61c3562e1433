"""A cascade engine from a config: fixed thresholds, or learning while it serves."""

from __future__ import annotations

from dataclasses import dataclass

from streamcascade.cascade.drivers import driver_for
from streamcascade.cascade.engine import CascadeEngine
from streamcascade.cascade.labeler import Labeler
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import AppConfig
from streamcascade.learning.protocol import OnlineLearner
from streamcascade.sandbox import Sandbox


@dataclass
class BuiltEngine:
    engine: RoutedCascadeEngine
    learner: OnlineLearner | None
    """Set when the engine learns; its state is what snapshots hold."""


def build_engine(config: AppConfig, sandbox: Sandbox, learn: bool = False) -> BuiltEngine:
    """The fixed cascade, or with learning on, the one loop driven by the
    policy `learning.policy` names (an entry point of `streamcascade.policies`)."""
    fixed = CascadeEngine.from_config(config, sandbox)
    if not (config.learning.enabled or learn):
        return BuiltEngine(fixed, None)
    labeler = Labeler(sandbox, config.learning.labels, config.learning.max_probes)
    driver = driver_for(config, fixed.levels, labeler)
    engine = RoutedCascadeEngine(
        fixed.levels, fallback=fixed.fallback, deadline_s=fixed.deadline_s, driver=driver
    )
    return BuiltEngine(engine, driver.learner)
