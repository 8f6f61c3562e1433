"""The fixed cascade: levels in order of cost; the first that accepts answers."""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.backends import BackendPool, BreakerSettings, BuildContext
from streamcascade.cascade.answer import build_answer
from streamcascade.cascade.level import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import AppConfig, LevelConfig, read_secret
from streamcascade.sandbox import Sandbox

__all__ = ["CascadeEngine", "build_answer"]


def pool_for(config: AppConfig) -> BackendPool:
    """The backends of `config`, each built when a request first needs it."""
    failures = config.failures
    return BackendPool(
        breaker=BreakerSettings(failures.breaker_failures, failures.breaker_cooldown_s),
        call_timeout_s=failures.call_timeout_s,
        context=BuildContext(
            model_cache_dir=config.model_cache_dir,
            allow_hub=config.allow_hub_download,
            offline=config.offline,
            cpu_threads=config.cpu_threads,
            secret=read_secret,
        ),
    )


class CascadeEngine(RoutedCascadeEngine):
    """Climbs the levels for each request, through the one decision loop with
    the fixed policy: the first level whose best solution reaches its
    threshold answers. Every attempt is paid and recorded.

    The top level always answers, with its best solution, accepted or not.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        fallback: Level | None = None,
        deadline_s: float | None = None,
    ) -> None:
        super().__init__(levels, fallback=fallback, deadline_s=deadline_s)

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
        pool = pool or pool_for(config)
        chosen = list(only) if only is not None else config.levels
        levels = [
            Level(config.levels.index(level) + 1, level, pool.get(level.backend), sandbox)
            for level in chosen
        ]
        fallback = config.failures.fallback
        return cls(
            levels,
            fallback=(
                Level(len(config.levels) + 1, fallback, pool.get(fallback.backend), sandbox)
                if fallback is not None and only is None
                else None
            ),
            deadline_s=config.failures.generation_deadline_s,
        )
