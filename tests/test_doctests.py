"""The examples in the docstrings run, as river's do: every module of the
package and its connectors is collected, so an example cannot be left out."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import connectors
import streamcascade

# Run by path in the sandbox (never imported by the package), and the entry point.
NOT_MODULES = {
    "streamcascade.sandbox._harness",
    "streamcascade.__main__",
    "streamcascade.cli.__main__",
}


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(streamcascade.__path__, "streamcascade.")]
    names += [m.name for m in pkgutil.walk_packages(connectors.__path__, "connectors.")]
    return sorted(set(names) - NOT_MODULES)


def test_every_module_is_collected() -> None:
    names = _modules()
    assert "streamcascade.sandbox.verdicts" in names and "connectors.jsonl" in names
    assert len(names) > 60


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
