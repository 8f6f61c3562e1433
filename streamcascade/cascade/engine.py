"""The fixed cascade: levels in order of cost; the first that accepts answers."""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.backends import BackendPool
from streamcascade.cascade.answer import build_answer
from streamcascade.cascade.level import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import AppConfig, LevelConfig
from streamcascade.sandbox import Sandbox

__all__ = ["CascadeEngine", "build_answer"]


class CascadeEngine(RoutedCascadeEngine):
    """Climbs the levels for each request, through the one decision loop with
    the fixed policy: the first level whose best solution reaches its
    threshold answers. Every attempt is paid and recorded.

    The top level always answers, with its best solution, accepted or not.
    """

    def __init__(self, levels: Sequence[Level]) -> None:
        super().__init__(levels)

    @classmethod
    def from_config(
        cls,
        config: AppConfig,
        sandbox: Sandbox,
        pool: BackendPool | None = None,
        only: Sequence[LevelConfig] | None = None,
    ) -> CascadeEngine:
        """Build the levels of `config` (or the subset `only`, e.g. one level alone),
        sharing loaded models through `pool`."""
        pool = pool or BackendPool(config.model_cache_dir, config.allow_hub_download)
        chosen = list(only) if only is not None else config.levels
        levels = [
            Level(config.levels.index(level) + 1, level, pool.get(level.backend), sandbox)
            for level in chosen
        ]
        return cls(levels)
