"""Backends behind one protocol, found as plug-ins (entry point group
`streamcascade.backends`). Heavy imports (llama_cpp, vllm) happen only when a
request first needs the model."""

from __future__ import annotations

from pathlib import Path

from streamcascade.backends.base import (
    Backend,
    BackendError,
    BackendSettings,
    BackendUnavailable,
    ChatMessage,
    Completion,
    GenerationParams,
    LearnsFromAnswers,
    Prompt,
    UnknownTaskError,
)
from streamcascade.backends.guard import BreakerSettings, GuardedBackend, generation_deadline
from streamcascade.backends.registry import BuildContext, installed_kinds, plugin

__all__ = [
    "Backend",
    "BackendError",
    "BackendPool",
    "BackendSettings",
    "BackendUnavailable",
    "BreakerSettings",
    "BuildContext",
    "ChatMessage",
    "Completion",
    "GenerationParams",
    "GuardedBackend",
    "LearnsFromAnswers",
    "Prompt",
    "UnknownTaskError",
    "generation_deadline",
    "installed_kinds",
]


class BackendPool:
    """One guarded backend per distinct backend config, handed to every level
    that names it, so a model is loaded once per process (and only when a
    request first reaches it) and shares one circuit breaker."""

    def __init__(
        self,
        model_cache_dir: Path | None = None,
        allow_hub: bool = True,
        breaker: BreakerSettings | None = None,
        call_timeout_s: float = 300.0,
        context: BuildContext | None = None,
    ) -> None:
        self._context = context or BuildContext(
            model_cache_dir=model_cache_dir, allow_hub=allow_hub
        )
        self._breaker = breaker or BreakerSettings()
        self._call_timeout_s = call_timeout_s
        self._backends: dict[str, GuardedBackend] = {}

    def get(self, config: BackendSettings) -> GuardedBackend:
        key = config.model_dump_json()
        if key not in self._backends:
            kind = plugin(config.kind)
            context = self._context
            name = getattr(config, "name", None) or getattr(config, "model", None) or config.kind
            self._backends[key] = GuardedBackend(
                lambda: kind.build(config, context),
                name=f"{config.kind}:{name}",
                breaker=self._breaker,
                call_timeout_s=self._call_timeout_s,
                prompts_per_call=config.prompts_per_call(),
                may_hang=config.may_hang(),
                learns_online=config.learns_online(),
            )
        return self._backends[key]

    def load(self, config: BackendSettings) -> Backend:
        """The backend itself, built now (for tools that need the model loaded)."""
        return self.get(config).backend()

    @property
    def guards(self) -> list[GuardedBackend]:
        return list(self._backends.values())
