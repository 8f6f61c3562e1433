"""Model registry: names to verified GGUF files."""

from streamcascade.models.registry import (
    MODELS,
    HashMismatchError,
    ModelFetchError,
    ModelSpec,
    resolve_model,
    verify_sha256,
)

__all__ = [
    "MODELS",
    "HashMismatchError",
    "ModelFetchError",
    "ModelSpec",
    "resolve_model",
    "verify_sha256",
]
