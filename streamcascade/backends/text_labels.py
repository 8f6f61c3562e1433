"""The cheap learner that answers label requests: an online classifier over
the words and files of a request's text, with a confidence that says how
often it was right when it was this sure.

It is level 0 of a label cascade (the `river` backend): it costs next to
nothing, learns from the labels a better model gave (imitation), and answers
only where its record at that confidence clears the level's threshold, so
the rest climbs to a model that knows better.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, deque
from typing import Any

from river import linear_model, optim

STATE_VERSION = 1
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE = re.compile(r"^diff --git a/(\S+)", re.MULTILINE)
_HUNK = re.compile(r"^@@[^@]*@@[ \t]*(.*)$", re.MULTILINE)
_WORDS_PER_LINE = 30
"""Long lines (minified code, lock files) would drown the rest."""


class DiffFeaturizer:
    """Features of a request's text that say what kind of change a diff is:
    the files it touches (names, extensions, directories, test paths), the
    words it adds and removes (log counts, so one long file does not swamp
    the rest) and its size. Text that is not a diff gives its words.

    Examples
    --------
    >>> features = DiffFeaturizer().transform_one(
    ...     "diff --git a/src/x.ts b/src/x.ts\\n--- a/src/x.ts\\n+++ b/src/x.ts\\n"
    ...     "@@ -1 +1 @@\\n-const a = 1\\n+const a = 2\\n"
    ... )
    >>> features["ext:ts"] > 0, features["+const"] > 0, features["n_files"] > 0
    (True, True, True)
    """

    def transform_one(self, text: str) -> dict[str, float]:
        counts: Counter[str] = Counter()
        files = _FILE.findall(text)
        groups: Counter[str] = Counter()
        for path in files:
            parts = path.split("/")
            name = parts[-1]
            extension = "ext:" + (name.rsplit(".", 1)[-1] if "." in name else "")
            is_test = "__tests__" in path or ".spec." in path or "test" in path
            counts["f:" + name] += 1
            counts[extension] += 1
            for directory in parts[:-1]:
                counts["dir:" + directory] += 1
            if is_test:
                counts["is_test"] += 1
            # What share of the files are tests, docs, in one package: a change
            # only to tests or only to docs is what a label is most sure of.
            kinds = {extension, "top:" + parts[0], "test" if is_test else "source"}
            if len(parts) > 2:
                kinds.add("package:" + "/".join(parts[:2]))
            groups.update(kinds)
        for hunk in _HUNK.findall(text):  # the function each hunk is in
            for word in _WORD.findall(hunk)[:5]:
                counts["hunk:" + word.lower()] += 1
        n_added = n_removed = 0
        for line in text.splitlines():
            if line.startswith(("+++", "---")):
                continue
            if line.startswith("+"):
                n_added += 1
                sign = "+"
            elif line.startswith("-"):
                n_removed += 1
                sign = "-"
            elif files:
                continue  # context lines of a diff say little about the change
            else:
                sign = "w:"
            for word in _WORD.findall(line)[:_WORDS_PER_LINE]:
                counts[sign + word.lower()] += 1
        features = {key: math.log1p(value) for key, value in counts.items()}
        for group, n in groups.items():
            features["share:" + group] = n / len(files)
            if n == len(files):
                features["only:" + group] = 1.0
        features["n_files"] = math.log1p(len(files))
        features["n_added"] = math.log1p(n_added)
        features["n_removed"] = math.log1p(n_removed)
        features["new_file"] = float("new file mode" in text)
        features["deleted_file"] = float("deleted file mode" in text)
        return features


class PrecisionAtConfidence:
    """How often the classifier was right when it was at least this sure: the
    share right among the last `window` predictions whose confidence was at
    least this one (at least `min_support` of them: the most confident, where
    fewer are that sure). It is exactly the precision a threshold rule at
    this confidence had lately, which is what a level's threshold asks of it,
    and a world that changes is forgotten after `window` predictions.

    Examples
    --------
    >>> calibration = PrecisionAtConfidence(window=100, min_support=10)
    >>> for _ in range(50):
    ...     calibration.learn_one(0.95, True)
    ...     calibration.learn_one(0.35, False)
    >>> calibration.predict_one(0.95), calibration.predict_one(0.35)
    (1.0, 0.5)
    """

    def __init__(self, window: int = 2000, min_support: int = 30) -> None:
        self.window = window
        self.min_support = min_support
        self._recent: deque[tuple[float, bool]] = deque()
        self._sorted: list[tuple[float, bool]] = []

    def learn_one(self, confidence: float, right: bool) -> None:
        self._recent.append((confidence, right))
        bisect.insort(self._sorted, (confidence, right))
        if len(self._recent) > self.window:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]

    def predict_one(self, confidence: float) -> float:
        """0.0 until `min_support` predictions are known."""
        n = len(self._sorted)
        if n < self.min_support:
            return 0.0
        start = min(bisect.bisect_left(self._sorted, (confidence, False)), n - self.min_support)
        region = self._sorted[start:]
        return sum(right for _, right in region) / len(region)

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "min_support": self.min_support,
            "recent": [[confidence, right] for confidence, right in self._recent],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrecisionAtConfidence:
        calibration = cls(int(state["window"]), int(state["min_support"]))
        for confidence, right in state["recent"]:
            calibration.learn_one(float(confidence), bool(right))
        return calibration


class OnlineLabeler:
    """One-vs-rest river logistic regressions (plain SGD) over `DiffFeaturizer`
    features, learning label by label as they arrive, and a
    `PrecisionAtConfidence` fed prequentially (each label is first predicted,
    then learned), so its confidence is measured on requests it had not seen.
    Measured on a real commit stream: docs/learning.md, "The cheap learner".

    Examples
    --------
    >>> labeler = OnlineLabeler()
    >>> for _ in range(30):
    ...     labeler.learn_one("+++ b/docs/guide.md\\n+Explain the setup", "docs")
    ...     labeler.learn_one("+++ b/src/x.ts\\n-if (a) b()\\n+if (a && c) b()", "fix")
    >>> labeler.predict_one("+++ b/docs/intro.md\\n+Explain the guide")[0]
    'docs'
    """

    def __init__(
        self, learning_rate: float = 0.01, window: int = 2000, min_support: int = 30
    ) -> None:
        self.learning_rate = learning_rate
        self.featurizer = DiffFeaturizer()
        self.per_label: dict[str, linear_model.LogisticRegression] = {}
        self.calibration = PrecisionAtConfidence(window, min_support)
        self.n_learned = 0

    def _new_model(self) -> linear_model.LogisticRegression:
        return linear_model.LogisticRegression(optimizer=optim.SGD(self.learning_rate))

    def predict_proba_features(self, features: dict[str, float]) -> dict[str, float]:
        """P(label) over the labels learned so far, normalised (empty before any)."""
        raw = {
            label: float(model.predict_proba_one(features).get(True, 0.0))
            for label, model in self.per_label.items()
        }
        total = sum(raw.values())
        if total <= 0.0:
            return {}
        return {label: value / total for label, value in raw.items()}

    def predict_one(self, text: str) -> tuple[str | None, float]:
        """The likeliest label and the precision earlier predictions this sure had
        (None and 0.0 before anything is learned)."""
        proba = self.predict_proba_features(self.featurizer.transform_one(text))
        if not proba:
            return None, 0.0
        label = max(proba, key=lambda name: proba[name])
        return label, self.calibration.predict_one(proba[label])

    def learn_one(self, text: str, label: str) -> None:
        features = self.featurizer.transform_one(text)
        proba = self.predict_proba_features(features)
        if proba:
            guess = max(proba, key=lambda name: proba[name])
            self.calibration.learn_one(proba[guess], guess == label)
        if label not in self.per_label:
            self.per_label[label] = self._new_model()
        for name, model in self.per_label.items():
            model.learn_one(features, name == label)
        self.n_learned += 1

    def learn_wrong(self, text: str, label: str) -> None:
        """`label` was the wrong answer for `text` (the right one unknown): its
        model learns a negative, and the calibration that its guess, if it was
        this label, was wrong."""
        features = self.featurizer.transform_one(text)
        proba = self.predict_proba_features(features)
        if proba and max(proba, key=lambda name: proba[name]) == label:
            self.calibration.learn_one(proba[label], False)
        if label in self.per_label:
            self.per_label[label].learn_one(features, False)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: weights by feature name, per label, and the recent predictions."""
        return {
            "version": STATE_VERSION,
            "learning_rate": self.learning_rate,
            "per_label": {
                label: {
                    "weights": {str(k): float(v) for k, v in model._weights.items()},
                    "intercept": float(model.intercept),
                    "optimizer_iterations": int(model.optimizer.n_iterations),
                }
                for label, model in self.per_label.items()
            },
            "calibration": self.calibration.state_dict(),
            "n_learned": self.n_learned,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OnlineLabeler:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported label-model state version {state.get('version')!r}")
        labeler = cls(state["learning_rate"])
        for label, saved in state["per_label"].items():
            model = labeler._new_model()
            for key, value in saved["weights"].items():
                model._weights[key] = float(value)
            model.intercept = float(saved["intercept"])
            model.optimizer.n_iterations = int(saved["optimizer_iterations"])
            labeler.per_label[label] = model
        labeler.calibration = PrecisionAtConfidence.from_state_dict(state["calibration"])
        labeler.n_learned = int(state["n_learned"])
        return labeler
