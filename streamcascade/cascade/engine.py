"""The cascade: levels in order of cost; the first that accepts answers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from streamcascade.backends import BackendPool
from streamcascade.cascade.level import Level
from streamcascade.config import AppConfig, LevelConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import Attempt, CascadeAnswer, CodeRequest


def build_answer(
    request: CodeRequest, attempts: Sequence[Attempt], started_s: float, **fields: Any
) -> CascadeAnswer:
    """A CascadeAnswer whose tokens, cost and seconds are summed over every
    attempt paid for (`started_s` from time.perf_counter); `fields` say who answered."""
    return CascadeAnswer(
        id=request.id,
        attempts=list(attempts),
        tokens_in=sum(a.tokens_in for a in attempts),
        tokens_out=sum(a.tokens_out for a in attempts),
        seconds=time.perf_counter() - started_s,
        cost_usd=sum(a.cost_usd for a in attempts),
        **fields,
    )


class CascadeEngine:
    """Climbs the levels for each request. Every attempt is paid and recorded.

    The top level always answers, with its best solution, accepted or not.
    """

    def __init__(self, levels: Sequence[Level]) -> None:
        if not levels:
            raise ValueError("a cascade needs at least one level")
        self.levels = list(levels)

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

    def process_one(self, request: CodeRequest) -> CascadeAnswer:
        started = time.perf_counter()
        attempts = []
        for position, level in enumerate(self.levels):
            if request.is_classification:
                outcome = level.classify(request)
            else:
                outcome = level.attempt(request)
            attempts.append(outcome.attempt)
            if outcome.attempt.accepted or position == len(self.levels) - 1:
                return build_answer(
                    request,
                    attempts,
                    started,
                    code=outcome.code,
                    level=level.index,
                    model=outcome.attempt.model,
                    score=outcome.attempt.score,
                    label=outcome.label,
                )
        raise AssertionError("unreachable: the last level always answers")
