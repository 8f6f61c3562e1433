"""Exemplar memory: the top level's accepted, tested answers, shown to lower
LLM levels as worked examples when a new request resembles past ones.

Similarity is the cosine of the prompts' word counts (the level-0 featurizer's
words). The memory is bounded; when full it evicts the entry with the lowest
usefulness (how often showing it preceded a right lower-level answer, smoothed)
discounted by age, so stale and unhelpful exemplars go first. Its state is
JSON and part of the learner's snapshot.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamcascade.config import MemoryConfig
from streamcascade.learning.features import RequestFeaturizer
from streamcascade.schemas import CodeRequest

STATE_VERSION = 1
_MAX_WORDS = 64  # per exemplar: the most frequent words carry the similarity
# Words every coding prompt has: they would make every pair of prompts look alike.
_STOP_WORDS = (
    "a an and are as at be by def do does each for from given has have if in int into is it "
    "its list number numbers of on or return returns should str string that the then this "
    "to true false none was will with you your example examples function input output "
    "value values which where whether not all any can one two other than"
)
_STOP = frozenset(_STOP_WORDS.split(" "))


@dataclass
class Exemplar:
    request_id: str
    prompt: str
    code: str
    words: dict[str, int]
    added_at: int
    shown: int = 0
    helped: int = 0
    norm: float = field(init=False)

    def __post_init__(self) -> None:
        self.norm = math.sqrt(sum(c * c for c in self.words.values())) or 1.0

    def usefulness(self, now: int, half_life: float) -> float:
        # Beta(1, 1)-smoothed success rate, halved every `half_life` requests of age.
        rate = (self.helped + 1) / (self.shown + 2)
        return float(rate * 0.5 ** ((now - self.added_at) / half_life))


class ExemplarMemory:
    def __init__(self, config: MemoryConfig, featurizer: RequestFeaturizer | None = None) -> None:
        self.config = config
        self.featurizer = featurizer or RequestFeaturizer()
        self.entries: dict[str, Exemplar] = {}
        self.clock = 0
        self.n_evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _words(self, request: CodeRequest) -> dict[str, int]:
        words = Counter(
            {
                w: c
                for w, c in self.featurizer.words(request).items()
                if w not in _STOP and w.isalnum()
            }
        )
        return dict(words.most_common(_MAX_WORDS))

    def tick(self) -> None:
        """One request went by (age is counted in requests)."""
        self.clock += 1

    def add(self, request: CodeRequest, code: str) -> None:
        if not self.config.enabled or not code.strip():
            return
        if len(request.prompt) + len(code) > self.config.max_example_chars:
            return
        self.entries[request.id] = Exemplar(
            request.id, request.prompt, code, self._words(request), self.clock
        )
        while len(self.entries) > self.config.capacity:
            half_life = float(self.config.capacity)
            worst = min(self.entries.values(), key=lambda e: e.usefulness(self.clock, half_life))
            del self.entries[worst.request_id]
            self.n_evicted += 1

    def similar(self, request: CodeRequest) -> list[tuple[float, Exemplar]]:
        """The closest exemplars above the similarity floor, most similar first;
        never the request itself."""
        if not self.config.enabled or not self.entries:
            return []
        words = self._words(request)
        norm = math.sqrt(sum(c * c for c in words.values())) or 1.0
        scored = []
        for entry in self.entries.values():
            if entry.request_id == request.id:
                continue
            dot = sum(count * entry.words.get(word, 0) for word, count in words.items())
            similarity = dot / (norm * entry.norm)
            if similarity >= self.config.min_similarity:
                scored.append((similarity, entry))
        scored.sort(key=lambda pair: (-pair[0], pair[1].request_id))
        return scored[: self.config.k_examples]

    def forget(self, request_id: str) -> bool:
        """Drop an exemplar (its answer turned out wrong); whether it was here."""
        return self.entries.pop(request_id, None) is not None

    def record_outcome(self, shown: list[str], helped: bool) -> None:
        for request_id in shown:
            entry = self.entries.get(request_id)
            if entry is not None:
                entry.shown += 1
                entry.helped += int(helped)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "clock": self.clock,
            "n_evicted": self.n_evicted,
            "entries": [
                {
                    "request_id": e.request_id,
                    "prompt": e.prompt,
                    "code": e.code,
                    "words": e.words,
                    "added_at": e.added_at,
                    "shown": e.shown,
                    "helped": e.helped,
                }
                for e in self.entries.values()
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported memory state version {state.get('version')!r}")
        self.clock = int(state["clock"])
        self.n_evicted = int(state["n_evicted"])
        self.entries = {}
        for raw in state["entries"]:
            entry = Exemplar(
                raw["request_id"],
                raw["prompt"],
                raw["code"],
                {str(k): int(v) for k, v in raw["words"].items()},
                int(raw["added_at"]),
                int(raw["shown"]),
                int(raw["helped"]),
            )
            self.entries[entry.request_id] = entry
