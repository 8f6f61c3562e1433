"""Self-checking: extract code and tests from model text, score solutions."""

from streamcascade.selfcheck.extract import (
    examples_as_asserts,
    extract_asserts,
    extract_program,
    pool_tests,
    sanitize,
)
from streamcascade.selfcheck.scoring import ScoringRule, Selection, select

__all__ = [
    "ScoringRule",
    "Selection",
    "examples_as_asserts",
    "extract_asserts",
    "extract_program",
    "pool_tests",
    "sanitize",
    "select",
]
