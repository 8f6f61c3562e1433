"""Model registry: names to verified GGUF files."""

from streamcascade.models.registry import (
    MODELS,
    HashMismatchError,
    ModelFetchError,
    ModelNotCached,
    ModelSpec,
    UnknownModel,
    check_model,
    resolve_model,
    verify_sha256,
)

__all__ = [
    "MODELS",
    "HashMismatchError",
    "ModelFetchError",
    "ModelNotCached",
    "ModelSpec",
    "UnknownModel",
    "check_model",
    "resolve_model",
    "verify_sha256",
]
