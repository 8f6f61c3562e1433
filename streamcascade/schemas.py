"""The records that cross the service's edges, as pydantic v2 models.

Everything a Source yields or a Sink writes is one of these, so malformed input
fails here with a clear validation error instead of deep inside the cascade.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2
"""The newest request schema this version reads. 1: functions and labels; 2 adds
`kind`, input/output examples, starter code and metadata (1 still reads)."""


class IOExample(BaseModel):
    """An example of input and output: for a `program`, its stdin and the stdout
    expected; for an `io_function`, its arguments (a list) and its result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Any
    output: Any


class CodeRequest(BaseModel):
    """One request. Its `kind` says what is asked (see `streamcascade.tasks`):
    `function` (the default: write the function `entry_point` that `prompt`
    describes), `program` (a whole program on stdin/stdout), `io_function` (a
    function given by starter code and argument/result examples), `label` (one
    of `label_set`, e.g. a review verdict on the diff in `prompt`; the default
    when `label_set` is given), or a kind an installed package adds.

    Fields this version does not know are kept in `metadata` and passed through
    to the answer, so that producers can move to a newer schema first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(default=1, ge=1, description="Of the producer's schema.")
    id: str = Field(min_length=1, max_length=512)
    kind: str = Field(
        default="",
        description="function | program | io_function | label | an installed kind; empty: "
        "label when label_set is given, else function.",
    )
    prompt: str = Field(min_length=1, description="Signature and docstring, or a task in prose.")
    entry_point: str = Field(
        default="", description="Name of the function the answer must define (function kinds)."
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
    examples: list[IOExample] = Field(
        default_factory=list,
        description="Visible input/output examples (program, io_function): they join every "
        "level's test pool.",
    )
    reference_examples: list[IOExample] = Field(
        default_factory=list,
        description="Hidden input/output examples: never shown to a model; grade answers.",
    )
    starter_code: str = Field(default="", description="Code the answer starts from (io_function).")
    float_tolerance: float | None = Field(
        default=None, ge=0, description="Numbers in outputs may differ by this much (program)."
    )
    label_set: list[str] | None = Field(
        default=None,
        description="The answers a label request allows, e.g. "
        '["approve", "request changes"]; None for other kinds.',
    )
    reference_label: str | None = Field(
        default=None, description="The right label, hidden from models; grades answers."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Carried through to the answer untouched (unknown fields land here too).",
    )

    @property
    def is_classification(self) -> bool:
        return self.kind == "label"

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields_to_metadata(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = {k: v for k, v in data.items() if k not in cls.model_fields}
        if not unknown and data.get("kind"):
            return data
        data = {k: v for k, v in data.items() if k in cls.model_fields}
        if unknown:
            metadata = data.get("metadata")
            data["metadata"] = {**unknown, **(metadata if isinstance(metadata, dict) else {})}
        if not data.get("kind"):
            data["kind"] = "label" if data.get("label_set") is not None else "function"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CodeRequest:
        if self.label_set is None:
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
    n_passed_untrusted: int = Field(
        default=0,
        description="Passes judged inside the sandboxed process (tests the parent could not "
        "split into calls and a comparison): the program could have forged them.",
    )


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
    accepted: bool = Field(
        default=False,
        description="What the policy made of this attempt, stamped by it (a level returns "
        "scores, never decisions): for the fixed cascade, its answer was published on its "
        "own rule (the top publishes whatever it scored, accepted or not); for the router, "
        "its answer was published; for Hedge, its sampled threshold accepted it.",
    )
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


class RouteStep(BaseModel):
    """One decision of the cascade's policy on a request's way up: what it ran
    next (or that it stopped) and what it saw when it decided."""

    model_config = ConfigDict(extra="forbid")

    next_level: int | None = Field(description="The level run next (its index); None: stop.")
    policy: str = Field(description="Who decided: fixed, router, ...")
    why: str = Field(description="The decision in words, with the figures it weighed.")
    figures: dict[str, float] = Field(
        default_factory=dict, description="Those figures by name (estimates, thresholds, mu)."
    )


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
    kind: str = Field(default="function", description="The request's kind.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The request's metadata, passed through."
    )
    failed_levels: list[LevelFailure] = Field(
        default_factory=list,
        description="Levels whose backend failed on this request; the request went on past them.",
    )
    route: list[RouteStep] = Field(
        default_factory=list,
        description="Each decision of the policy, in order (`streamcascade explain` prints it).",
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
