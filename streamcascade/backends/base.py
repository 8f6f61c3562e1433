"""The Backend protocol: batch-first generation with token accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

Purpose = Literal["solutions", "tests", "classification"]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Prompt:
    """One generation request.

    `messages` is what a chat model sees. `request_id` and `purpose` let a
    replay backend find the recorded generation; live backends ignore them.
    """

    request_id: str
    purpose: Purpose
    messages: tuple[ChatMessage, ...]
    assistant_prefix: str = ""
    """Text the answer starts with (prefill). A backend that honours it returns it
    as the start of `Completion.text`; one that cannot ignores it."""


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. Mirrors the common subset of vLLM's SamplingParams."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus sampling mass; ignored when greedy."""
    max_tokens: int = 512
    """Upper bound on generated tokens per completion."""
    stop: tuple[str, ...] = ()
    """Generation stops before any of these strings."""
    seed: int = 0
    """Base seed; completion i of a prompt uses seed + i so samples differ."""


@dataclass(frozen=True)
class Completion:
    text: str
    """The whole assistant message, a prefill included."""
    tokens_in: int
    tokens_out: int
    seconds: float
    finish_reason: str = "stop"
    confidence: float | None = None
    """How likely this answer is right, where the model can say (a classifier's
    measured precision at its confidence); None for a model that cannot. A
    level's vote weighs its share of the votes by it."""


@dataclass
class GenerationStats:
    """Totals a backend accumulates over its lifetime, for benchmarks."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    per_purpose_tokens_out: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A model that turns prompts into completions."""

    @property
    def model_name(self) -> str: ...

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in prompt order."""
        ...


@runtime_checkable
class LearnsFromAnswers(Protocol):
    """A backend that learns while it serves (a cheap online classifier): it is
    shown the answers a more capable level gave to prompts it was, or could
    have been, asked (imitation)."""

    def learn(self, prompts: list[Prompt], answers: list[str]) -> None:
        """Learn that each prompt's right answer is the text beside it."""
        ...

    def learn_outcomes(self, prompts: list[Prompt], answers: list[str], right: list[bool]) -> None:
        """Learn whether each answer it gave was right (downstream Feedback)."""
        ...


class BackendSettings(BaseModel):
    """The config of one backend kind. Each kind (an entry point in the group
    `streamcascade.backends`) owns a subclass; `kind` selects it in YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str

    def prompts_per_call(self) -> int | None:
        """At most this many prompts go to one `generate` call (None: all of a
        level step). A backend that generates one prompt after another says 1,
        so that each call, and its timeout, covers one prompt."""
        return None

    def may_hang(self) -> bool:
        """Whether a call can hang (a model, a server): it then runs on a worker
        thread, bounded by the call timeout. A backend that only looks up what
        it holds says False, and is called on the caller's thread (the hand-off
        costs about 100 us a call)."""
        return True

    def learns_online(self) -> bool:
        """Whether the backend learns from the answers of the levels above it
        (`LearnsFromAnswers`). The default, a model that does not, is never
        built just to be shown them."""
        return False

    def check(self, model_cache_dir: Path | None, offline: bool) -> None:
        """Raise a `streamcascade.errors.UserError` for what is wrong with this
        backend's setup and can be told without loading it (a missing file, a
        model that cannot be fetched offline), so a command fails before any
        model loads. The default checks nothing."""


class BackendError(RuntimeError):
    """A generation call failed: the model could not be reached, answered with
    an error, or took longer than allowed. The cascade passes the request on."""


class BackendUnavailable(BackendError):
    """The backend's circuit breaker is open: it is not called until its cool-down ends."""


class UnknownTaskError(KeyError):
    """A replay backend was asked for a task it has no recording of."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown task"
