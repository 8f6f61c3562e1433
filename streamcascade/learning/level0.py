"""Level 0: an online logistic regression (river) over request features.

It predicts, before any LLM runs, the probability that level 1's answer will
be accepted and right; the cascade skips level 1 when a learned gate says that
probability is too low. Its state is plain JSON (weights by feature name), so
a snapshot can travel through a Kafka topic and be read without unpickling.
"""

from __future__ import annotations

from typing import Any

from river import linear_model, optim

from streamcascade.learning.features import RequestFeaturizer
from streamcascade.schemas import CodeRequest

STATE_VERSION = 1


class Level0Router:
    """`predict_one(request) -> P(level 1 accepted and right)`; `learn_one(request, y)`."""

    def __init__(self, learning_rate: float = 0.1, l2: float = 0.0, n_buckets: int = 1024) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.featurizer = RequestFeaturizer(n_buckets)
        self.model = self._new_model()
        self.n_learned = 0

    def _new_model(self) -> linear_model.LogisticRegression:
        return linear_model.LogisticRegression(
            optimizer=optim.SGD(self.learning_rate), l2=self.l2, intercept_lr=self.learning_rate
        )

    def predict_features(self, features: dict[str, float]) -> float:
        probabilities = self.model.predict_proba_one(features)
        return float(probabilities.get(True, 0.0))

    def learn_features(self, features: dict[str, float], label: bool) -> None:
        self.model.learn_one(features, label)
        self.n_learned += 1

    def predict_one(self, request: CodeRequest) -> float:
        return self.predict_features(self.featurizer.transform_one(request))

    def learn_one(self, request: CodeRequest, label: bool) -> None:
        self.learn_features(self.featurizer.transform_one(request), label)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "n_buckets": self.featurizer.n_buckets,
            "weights": {str(k): float(v) for k, v in self.model._weights.items()},
            "intercept": float(self.model.intercept),
            "optimizer_iterations": int(self.model.optimizer.n_iterations),
            "n_learned": self.n_learned,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Level0Router:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported level-0 state version {state.get('version')!r}")
        router = cls(state["learning_rate"], state["l2"], state["n_buckets"])
        for key, value in state["weights"].items():
            router.model._weights[key] = float(value)
        router.model.intercept = float(state["intercept"])
        router.model.optimizer.n_iterations = int(state["optimizer_iterations"])
        router.n_learned = int(state["n_learned"])
        return router


class Level0Classifier:
    """For classification requests: one-vs-rest river logistic regressions over
    the same features; `predict_one` gives a normalised distribution over the
    labels seen so far. Labels are learned as they arrive, so a stream may
    bring new label sets."""

    def __init__(self, learning_rate: float = 0.1, n_buckets: int = 1024) -> None:
        self.learning_rate = learning_rate
        self.featurizer = RequestFeaturizer(n_buckets)
        self.per_label: dict[str, Level0Router] = {}
        self.n_learned = 0

    def predict_features(self, features: dict[str, float], labels: list[str]) -> dict[str, float]:
        """P(label) over `labels`; uniform where nothing is known yet."""
        raw = {
            label: self.per_label[label].predict_features(features)
            if label in self.per_label
            else 0.5
            for label in labels
        }
        total = sum(raw.values()) or 1.0
        return {label: value / total for label, value in raw.items()}

    def learn_features(self, features: dict[str, float], labels: list[str], right: str) -> None:
        for label in labels:
            if label not in self.per_label:
                self.per_label[label] = Level0Router(
                    self.learning_rate, n_buckets=self.featurizer.n_buckets
                )
            self.per_label[label].learn_features(features, label == right)
        self.n_learned += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "learning_rate": self.learning_rate,
            "n_buckets": self.featurizer.n_buckets,
            "per_label": {k: v.state_dict() for k, v in self.per_label.items()},
            "n_learned": self.n_learned,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Level0Classifier:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported level-0 state version {state.get('version')!r}")
        model = cls(state["learning_rate"], state["n_buckets"])
        model.per_label = {
            k: Level0Router.from_state_dict(v) for k, v in state["per_label"].items()
        }
        model.n_learned = int(state["n_learned"])
        return model
