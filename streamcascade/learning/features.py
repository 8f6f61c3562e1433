"""Request features for the level-0 models and the exemplar memory.

A Featurizer turns one request into a sparse dict of floats (river's input
format). Words of the prompt and of the signature are hashed into a fixed
number of buckets (the vocabulary of a stream is open-ended; hashing keeps the
model's size bounded); numeric features are log-scaled so that no single one
dominates a linear model trained by SGD without a scaler.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter

from streamcascade.schemas import CodeRequest

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_CONSTRAINT_WORDS = (
    *("must", "should", "only", "least", "most", "assume", "assumes", "constraint"),
    *("constraints", "note", "guaranteed", "nonempty", "empty", "positive", "negative"),
)
_MAX_CACHED_WORDS = 1 << 16
_CONSTRAINT_SET = frozenset(_CONSTRAINT_WORDS)
_EXAMPLE_MARKS = (">>>", "example", "e.g.", "->", "==>")


def _bucket(token: str, n_buckets: int) -> int:
    # crc32, not hash(): Python salts str hashes per process, and a restored
    # model must see the same bucket for the same word.
    return zlib.crc32(token.encode("utf-8")) % n_buckets


_TOP_DEF = re.compile(r"^def ([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.MULTILINE)


def _split_top_level(text: str) -> list[str]:
    """Split a parameter list at commas outside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _signature(prompt: str, entry_point: str) -> tuple[list[str], str | None, int] | None:
    """(parameter annotations, return annotation, number of top-level defs), read
    with a scan rather than ast.parse: this is level 0's hot path, and a prompt
    need not be valid Python."""
    defs = list(_TOP_DEF.finditer(prompt))
    match = next((m for m in defs if m.group(1) == entry_point), None)
    if match is None:
        return None
    depth, end = 1, match.end()
    while end < len(prompt) and depth:
        depth += {"(": 1, ")": -1}.get(prompt[end], 0)
        end += 1
    params = _split_top_level(prompt[match.end() : end - 1])
    hints = [p.split(":", 1)[1].split("=", 1)[0].strip() for p in params if ":" in p]
    tail = prompt[end : prompt.find(":", end) if ":" in prompt[end:] else end]
    returns = tail.split("->", 1)[1].strip() if "->" in tail else None
    return [h for h in hints if h] + [""] * sum(":" not in p for p in params), returns, len(defs)


class RequestFeaturizer:
    """`transform_one(request) -> {feature: value}`; stateless, so it needs no state."""

    def __init__(self, n_buckets: int = 1024) -> None:
        if n_buckets < 1:
            raise ValueError("n_buckets must be >= 1")
        self.n_buckets = n_buckets
        # word -> its bucket's feature name. Words repeat across a stream and this
        # is level 0's hot path; cleared when it grows past _MAX_CACHED_WORDS.
        self._keys: dict[str, str] = {}

    def words(self, request: CodeRequest) -> Counter[str]:
        """Lower-cased words of the prompt (the memory's similarity uses these too)."""
        return Counter(w for w in _WORD.findall(request.prompt.lower()) if len(w) > 1)

    def transform_one(self, request: CodeRequest) -> dict[str, float]:
        prompt = request.prompt
        lowered = prompt.lower()
        # One pass over the words: bucket counts and constraint words together.
        counts: dict[str, float] = {}
        n_constraints = 0
        keys = self._keys
        for word in _WORD.findall(lowered):
            if len(word) > 1:
                key = keys.get(word)
                if key is None:
                    if len(keys) >= _MAX_CACHED_WORDS:
                        keys.clear()
                    key = keys[word] = f"w{_bucket(word, self.n_buckets)}"
                counts[key] = counts.get(key, 0.0) + 1.0
                if word in _CONSTRAINT_SET:
                    n_constraints += 1
        norm = math.sqrt(sum(c * c for c in counts.values())) or 1.0
        features = {key: count / norm for key, count in counts.items()}
        features["len_chars"] = math.log1p(len(prompt)) / 10
        features["len_lines"] = math.log1p(prompt.count("\n") + 1) / 5
        features["n_examples"] = math.log1p(sum(lowered.count(m) for m in _EXAMPLE_MARKS))
        n_constraints += prompt.count("<=") + prompt.count(">=")
        features["n_constraints"] = math.log1p(n_constraints)
        features[f"lang={request.language}"] = 1.0
        features["n_visible_tests"] = math.log1p(len(request.visible_tests))
        if request.visible_tests:
            mean_len = sum(len(t) for t in request.visible_tests) / len(request.visible_tests)
            features["visible_test_len"] = math.log1p(mean_len) / 5
            joined = " ".join(request.visible_tests)
            for kind, mark in (("list", "["), ("str", '"'), ("float", "."), ("dict", "{")):
                if mark in joined:
                    features[f"visible_has_{kind}"] = 1.0
        signature = _signature(prompt, request.entry_point)
        if signature is None:
            features["no_signature"] = 1.0
        else:
            hints, returns, n_defs = signature
            features["n_args"] = math.log1p(len(hints))
            for hint in hints:
                if hint:
                    features[f"s{_bucket('arg:' + hint, self.n_buckets)}"] = 1.0
            if returns:
                features[f"s{_bucket('ret:' + returns, self.n_buckets)}"] = 1.0
            features["n_helpers"] = math.log1p(n_defs - 1)
        return features
