"""Backends behind one protocol. Heavy imports (llama_cpp) happen only on use."""

from __future__ import annotations

from pathlib import Path

from streamcascade.backends.base import (
    Backend,
    ChatMessage,
    Completion,
    GenerationParams,
    Prompt,
    UnknownTaskError,
)
from streamcascade.config import BackendConfig, LlamaCppBackendConfig, ReplayBackendConfig

__all__ = [
    "Backend",
    "BackendPool",
    "ChatMessage",
    "Completion",
    "GenerationParams",
    "Prompt",
    "UnknownTaskError",
]


class BackendPool:
    """Builds each backend once and hands the same instance to every level that
    names the same model, so a model is loaded once per process."""

    def __init__(self, model_cache_dir: Path | None = None, allow_hub: bool = True) -> None:
        self._model_cache_dir = model_cache_dir
        self._allow_hub = allow_hub
        self._backends: dict[str, Backend] = {}

    def get(self, config: BackendConfig) -> Backend:
        key = config.model_dump_json()
        if key not in self._backends:
            self._backends[key] = self._build(config)
        return self._backends[key]

    def _build(self, config: BackendConfig) -> Backend:
        if isinstance(config, LlamaCppBackendConfig):
            from streamcascade.backends.llamacpp import LlamaCppBackend
            from streamcascade.models import resolve_model

            path = resolve_model(config.model, self._model_cache_dir, self._allow_hub)
            return LlamaCppBackend(
                path,
                model_name=config.model,
                n_ctx=config.n_ctx,
                n_threads=config.n_threads,
                n_batch=config.n_batch,
                seed=config.seed,
            )
        if isinstance(config, ReplayBackendConfig):
            from streamcascade.backends.replay import CodeTReplayBackend, LadderReplayBackend

            if config.format == "ladder":
                return LadderReplayBackend(config.path, name=config.name)
            return CodeTReplayBackend(config.path, name=config.name)
        raise TypeError(f"unknown backend config {config!r}")
