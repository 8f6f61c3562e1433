"""The examples in the docstrings run, as river's do."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "streamcascade.backends.guard",
    "streamcascade.sandbox.compare",
    "streamcascade.tasks.function",
    "streamcascade.tasks.io_function",
    "streamcascade.tasks.label",
    "streamcascade.tasks.program",
    "streamcascade.learning.bayes",
    "streamcascade.learning.routing",
    "streamcascade.learning.track",
    "streamcascade.sandbox.verdicts",
    "streamcascade.sandbox.leases",
    "streamcascade.models.hub",
    "streamcascade.pyparse",
    "streamcascade.service.outage",
    "streamcascade.service.kafka_io",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
