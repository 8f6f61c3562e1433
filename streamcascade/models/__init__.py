"""Model registry: names to verified GGUF files."""

from streamcascade.models.registry import (
    MODELS,
    CacheEntry,
    HashMismatchError,
    ModelFetchError,
    ModelNotCached,
    ModelSpec,
    UnknownModel,
    cache_status,
    check_model,
    resolve_model,
    verify_sha256,
)

__all__ = [
    "MODELS",
    "CacheEntry",
    "HashMismatchError",
    "ModelFetchError",
    "ModelNotCached",
    "ModelSpec",
    "UnknownModel",
    "cache_status",
    "check_model",
    "resolve_model",
    "verify_sha256",
]
