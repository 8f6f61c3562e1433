"""The `river` backend kind: the cascade's cheap learner as a level.

An online classifier (`OnlineLabeler`: one-vs-rest river logistic
regressions over the words and files of the prompt) that answers label
prompts at next to no cost, with the precision its earlier predictions had
at that confidence, and learns from the answers of the levels above it
(imitation). It writes no code: to a prompt for solutions or tests it gives
empty completions, so a code request simply goes up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from streamcascade.backends.base import (
    Backend,
    BackendSettings,
    Completion,
    GenerationParams,
    Prompt,
)
from streamcascade.backends.registry import BuildContext
from streamcascade.backends.text_labels import OnlineLabeler

log = logging.getLogger(__name__)


class RiverBackendConfig(BackendSettings):
    """An online label classifier that learns from the levels above it."""

    kind: Literal["river"] = "river"
    name: str = Field(default="river-labels", description="Model name to report.")
    learning_rate: float = Field(default=0.01, gt=0.0, description="Each label model's SGD step.")
    window: int = Field(
        default=2000, ge=10, description="Predictions its confidence is measured on (the latest)."
    )
    min_support: int = Field(
        default=30, ge=1, description="No confidence above 0 until this many predictions are known."
    )
    state_path: Path | None = Field(
        default=None,
        description="A JSON file it starts from, when there, and writes what it learned to "
        "(every `save_every` labels, atomically): a restart then keeps what it learned.",
    )
    save_every: int = Field(
        default=500, ge=1, description="Labels learned between two saves (one is 0.4 s at 7.6 MB)."
    )

    def may_hang(self) -> bool:
        return False  # arithmetic in memory

    def learns_online(self) -> bool:
        return True


class RiverPlugin:
    """Entry point `river`."""

    config_model = RiverBackendConfig

    def build(self, config: RiverBackendConfig, context: BuildContext) -> Backend:
        return RiverLabelBackend(config)


PLUGIN = RiverPlugin()


def _text(prompt: Prompt) -> str:
    """What the classifier reads: the user's messages (the system prompt is the
    same for every request)."""
    return "\n".join(m.content for m in prompt.messages if m.role == "user")


class RiverLabelBackend:
    """`generate` answers classification prompts with the likeliest label and
    its `confidence`; `learn` takes the labels a more capable level gave.

    Examples
    --------
    >>> from streamcascade.backends.base import ChatMessage
    >>> backend = RiverLabelBackend(RiverBackendConfig(min_support=1))
    >>> def ask(diff):
    ...     return Prompt("r", "classification", (ChatMessage("user", diff),))
    >>> backend.generate([ask("+++ b/README.md\\n+Explain")], GenerationParams())[0][0].text
    ''
    >>> for _ in range(20):
    ...     backend.learn([ask("+++ b/README.md\\n+Explain it"), ask("+++ b/x.ts\\n-a\\n+b")],
    ...                   ["docs", "fix"])
    >>> answer = backend.generate([ask("+++ b/guide.md\\n+Explain")], GenerationParams())[0][0]
    >>> answer.text, answer.confidence is not None, answer.tokens_in
    ('docs', True, 0)
    """

    def __init__(self, config: RiverBackendConfig) -> None:
        self.config = config
        self.labeler = OnlineLabeler(config.learning_rate, config.window, config.min_support)
        path = config.state_path
        if path is not None and path.exists():
            try:
                self.labeler = OnlineLabeler.from_state_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as error:
                # What it learned is lost, not the service: it starts afresh and
                # defers everything until it has learned again.
                log.error("river: cannot read its state from %s (%s): starting afresh", path, error)
            else:
                log.info("river: %d labels learned, from %s", self.labeler.n_learned, path)
        self._unsaved = 0
        # Levels step on their own threads; learning happens when a batch ends.
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.config.name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        results: list[list[Completion]] = []
        for prompt in prompts:
            started = time.perf_counter()
            label: str | None = None
            confidence = 0.0
            if prompt.purpose == "classification":
                with self._lock:
                    label, confidence = self.labeler.predict_one(_text(prompt))
            seconds = time.perf_counter() - started
            completion = Completion(
                text=label or "",
                tokens_in=0,  # no tokens are bought: its cost is the level's price of 0
                tokens_out=0,
                seconds=seconds,
                confidence=confidence if label is not None else None,
            )
            results.append([completion] * params.n)  # deterministic: every sample agrees
        return results

    def learn(self, prompts: list[Prompt], answers: list[str]) -> None:
        with self._lock:
            for prompt, answer in zip(prompts, answers, strict=True):
                if prompt.purpose == "classification" and answer:
                    self.labeler.learn_one(_text(prompt), answer)
                    self._unsaved += 1
            self._maybe_save()

    def learn_outcomes(self, prompts: list[Prompt], answers: list[str], right: list[bool]) -> None:
        """A right answer is a label like the top's; a wrong one teaches that it
        was not this label, and that it was wrong this sure. Feedback on what it
        answered is the only label it gets there: the top never ran."""
        with self._lock:
            for prompt, answer, was_right in zip(prompts, answers, right, strict=True):
                if prompt.purpose != "classification" or not answer:
                    continue
                if was_right:
                    self.labeler.learn_one(_text(prompt), answer)
                else:
                    self.labeler.learn_wrong(_text(prompt), answer)
                self._unsaved += 1
            self._maybe_save()

    def _maybe_save(self) -> None:
        if self.config.state_path is not None and self._unsaved >= self.config.save_every:
            self.save()

    def save(self) -> None:
        """Write what it learned to `state_path` (a temporary file renamed over
        it, so a crash mid-write leaves the previous state whole)."""
        path = self.config.state_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(json.dumps(self.labeler.state_dict()))
        os.replace(staging, path)
        self._unsaved = 0
