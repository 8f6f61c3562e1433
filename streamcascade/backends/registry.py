"""Backend kinds are plug-ins: entry points in the group `streamcascade.backends`.

Each entry point names a `BackendPlugin`: the config model of its kind and how
to build a backend from it. The built-in kinds (llamacpp, replay, openai, vllm)
register the same way, in this project's `pyproject.toml`, so a third-party
package adds a kind by declaring one entry point; nothing here names a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from streamcascade.backends.base import Backend, BackendSettings

GROUP = "streamcascade.backends"


@dataclass(frozen=True)
class BuildContext:
    """What a backend may need from the rest of the config when it is built."""

    model_cache_dir: Path | None = None
    allow_hub: bool = True
    offline: bool = False
    """No network call at all to fetch a model: only what is in the cache."""
    cpu_threads: int | None = None
    """Threads for an in-process model whose config sets none (None: all cores)."""
    secret: Callable[[str], str | None] = lambda name: None
    """Reads a secret (an API key) by the name of the environment variable that
    holds it; `streamcascade.config.read_secret` in service."""


class BackendPlugin(Protocol):
    """One backend kind."""

    config_model: type[BackendSettings]

    def build(self, config: Any, context: BuildContext) -> Backend:
        """Load or connect the backend (called once, when a request first needs it)."""
        ...


class UnknownBackendKind(ValueError):
    """A config names a backend kind no installed package provides."""


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def installed_kinds() -> list[str]:
    return sorted(_entry_points())


@cache
def plugin(kind: str) -> BackendPlugin:
    found = _entry_points()
    if kind not in found:
        raise UnknownBackendKind(
            f"unknown backend kind {kind!r}; installed: {', '.join(installed_kinds())}"
        )
    loaded: BackendPlugin = found[kind].load()
    return loaded


def parse_backend(raw: Any) -> BackendSettings:
    """A backend's config from YAML (a mapping with `kind`), validated by the
    model its kind owns. Errors are one readable line."""
    if isinstance(raw, BackendSettings):
        return raw
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise ValueError(
            f"a backend is a mapping with a 'kind' (one of: {', '.join(installed_kinds())})"
        )
    model = plugin(raw["kind"]).config_model
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'backend'}: {e['msg']}"
            for e in error.errors()
        )
        raise ValueError(f"backend kind {raw['kind']!r}: {problems}") from None
