"""Shared fixtures. The recorded data in ../shared/data is optional: tests that
need it skip cleanly without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "humaneval-ladder").is_dir():
        pytest.skip(f"recorded generations not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(per_test_timeout_s=2.0)) as box:
        yield box
