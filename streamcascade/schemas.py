"""The records that cross the service's edges, as pydantic v2 models.

Everything a Source yields or a Sink writes is one of these, so malformed input
fails here with a clear validation error instead of deep inside the cascade.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CodeRequest(BaseModel):
    """One request. Generation (the default): write the function `entry_point`
    that `prompt` describes. Classification: when `label_set` is given, answer
    with one of its labels (e.g. a review verdict on the diff in `prompt`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    prompt: str = Field(min_length=1, description="Signature and docstring, or a task in prose.")
    entry_point: str = Field(
        default="", description="Name of the function the answer must define (generation)."
    )
    language: Literal["python"] = "python"
    visible_tests: list[str] = Field(
        default_factory=list,
        description="Assert lines the models may see; they join every level's test pool.",
    )
    reference_tests: str | None = Field(
        default=None,
        description="Hidden test code (a `check(candidate)` function, as in HumanEval). "
        "Never shown to a model; used only to grade answers.",
    )
    label_set: list[str] | None = Field(
        default=None,
        description="The answers a classification request allows, e.g. "
        '["approve", "request changes"]; None for a generation request.',
    )
    reference_label: str | None = Field(
        default=None, description="The right label, hidden from models; grades answers."
    )

    @property
    def is_classification(self) -> bool:
        return self.label_set is not None

    @model_validator(mode="after")
    def _consistent(self) -> CodeRequest:
        if self.label_set is None:
            if not _IDENTIFIER.match(self.entry_point):
                raise ValueError(
                    f"entry_point must be a Python identifier, got {self.entry_point!r}"
                )
            if self.reference_label is not None:
                raise ValueError("reference_label needs a label_set")
            return self
        labels = [label.strip() for label in self.label_set]
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise ValueError("label_set needs at least two distinct, non-empty labels")
        if self.reference_label is not None and self.reference_label not in self.label_set:
            raise ValueError(f"reference_label {self.reference_label!r} is not in label_set")
        return self


class TestSummary(BaseModel):
    """How one solution fared against the pooled tests of an attempt."""

    model_config = ConfigDict(extra="forbid")

    n_tests: int
    n_passed: int
    n_timed_out: int = 0
    # Why the first failing test failed, e.g. "AssertionError" or "timed out".
    first_failure: str | None = None


class Attempt(BaseModel):
    """One level's try at a request: what it generated, what that cost, what it scored."""

    model_config = ConfigDict(extra="forbid")

    level: int
    model: str
    n_solutions: int
    n_tests: int = Field(
        description="Distinct test asserts in the pooled suite (visible included)."
    )
    n_generated_tests: int
    best_solution_index: int | None
    score: float = Field(description="Acceptance score of the best solution, in [0, 1].")
    threshold: float
    accepted: bool
    tests: TestSummary | None
    tokens_in: int
    tokens_out: int
    generation_s: float
    sandbox_s: float
    cost_usd: float


class LevelFailure(BaseModel):
    """A level that could not answer a request: its backend failed, timed out or
    was shut off by its circuit breaker."""

    model_config = ConfigDict(extra="forbid")

    level: int
    name: str
    reason: str


class CascadeAnswer(BaseModel):
    """What the cascade publishes for one request."""

    model_config = ConfigDict(extra="forbid")

    id: str
    code: str
    level: int = Field(
        description="Index of the level whose answer this is (0 = the level-0 model, "
        "1 = the first LLM level)."
    )
    model: str
    score: float
    attempts: list[Attempt]
    tokens_in: int
    tokens_out: int
    seconds: float
    cost_usd: float
    explored_levels: list[int] = Field(
        default_factory=list,
        description="Levels that accepted but sent the request up anyway, for a label "
        "(their answer is the one published; the extra cost is in cost_usd).",
    )
    skipped_levels: list[int] = Field(
        default_factory=list, description="Levels the level-0 gate skipped."
    )
    p_level1: float | None = Field(
        default=None, description="Level 0's estimate that level 1 would be accepted and right."
    )
    label: str | None = Field(
        default=None, description="The answer to a classification request (code is empty)."
    )
    failed_levels: list[LevelFailure] = Field(
        default_factory=list,
        description="Levels whose backend failed on this request; the request went on past them.",
    )


class Feedback(BaseModel):
    """An outcome reported later about a published answer (e.g. CI results once merged)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    passed: bool
    level: int | None = None
    source: str = Field(default="downstream", description="Who reported it: tests, ci, user, ...")
    detail: str | None = None


class DeadLetter(BaseModel):
    """A record the service could not process, with the reason, never silently dropped."""

    model_config = ConfigDict(extra="forbid")

    reason: str
    error_type: str
    raw: str = Field(
        description="The input exactly as received (decoded as UTF-8, replacement on error)."
    )
    source: str
