"""An online Bayesian logistic regression with a diagonal Laplace posterior.

The router needs more than a probability: it needs to know how sure it is, so
that it explores where it is unsure (Thompson sampling) and stops exploring
where it has seen enough. river's LogisticRegression keeps a point estimate
only, so this small model (Chapelle & Li, *An Empirical Evaluation of Thompson
Sampling*, NeurIPS 2011, section 4: a Gaussian per weight, updated by one
Newton step per example) keeps a mean and a precision per feature.

Features are sparse dicts of floats, like river's. State is plain JSON.
"""

from __future__ import annotations

import math
import random
from typing import Any


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class BayesLogit:
    """P(y = 1 | x) with a Gaussian posterior over the weights.

    Parameters
    ----------
    prior_precision
        Precision of every weight's zero-mean Gaussian prior (1 / variance).
    forgetting
        Each update multiplies the precisions of the features it touches by
        this factor first, so old evidence fades and the model can follow a
        drifting stream (1.0 = never forget).
    prior_means
        Prior means of named weights (the rest: 0). This is where what is known
        before any data goes, e.g. that an answer failing its tests is wrong.

    Examples
    --------
    >>> model = BayesLogit()
    >>> for _ in range(200):
    ...     model.learn_one({"bias": 1.0, "x": 1.0}, True)
    ...     model.learn_one({"bias": 1.0, "x": -1.0}, False)
    >>> model.predict_one({"bias": 1.0, "x": 1.0}) > 0.9
    True
    >>> model.predict_one({"bias": 1.0, "x": -1.0}) < 0.1
    True
    >>> round(BayesLogit().predict_one({"bias": 1.0}), 2)
    0.5
    """

    def __init__(
        self,
        prior_precision: float = 1.0,
        forgetting: float = 1.0,
        prior_means: dict[str, float] | None = None,
    ) -> None:
        if prior_precision <= 0:
            raise ValueError("prior_precision must be > 0")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError("forgetting must lie in (0, 1]")
        self.prior_precision = prior_precision
        self.forgetting = forgetting
        self.prior_means = dict(prior_means or {})
        self.mean: dict[str, float] = {}
        self.precision: dict[str, float] = {}
        self.n_learned = 0

    def _mean_of(self, name: str) -> float:
        mean = self.mean.get(name)
        return mean if mean is not None else self.prior_means.get(name, 0.0)

    def logit(self, x: dict[str, float]) -> tuple[float, float]:
        """Mean and variance of the log-odds under the posterior."""
        mean = 0.0
        variance = 0.0
        for name, value in x.items():
            mean += self._mean_of(name) * value
            variance += value * value / self.precision.get(name, self.prior_precision)
        return mean, variance

    def predict_one(self, x: dict[str, float]) -> float:
        """The posterior predictive probability (probit approximation of the
        logistic-Gaussian integral: MacKay 1992)."""
        mean, variance = self.logit(x)
        return _sigmoid(mean / math.sqrt(1.0 + math.pi * variance / 8.0))

    def sample_one(self, x: dict[str, float], rng: random.Random) -> float:
        """One Thompson draw of P(y = 1 | x)."""
        mean, variance = self.logit(x)
        return _sigmoid(rng.gauss(mean, math.sqrt(variance)))

    def learn_one(self, x: dict[str, float], y: float, w: float = 1.0) -> None:
        """One Newton step on the log posterior at the current mean. `y` is a
        label (True/False) or a probability: the target of a soft label."""
        if w <= 0:
            return
        p = _sigmoid(self.logit(x)[0])
        curvature = max(p * (1.0 - p), 1e-4)
        for name, value in x.items():
            if value == 0.0:
                continue
            precision = self.precision.get(name, self.prior_precision) * self.forgetting
            # Never forget below the prior: the prior is where it started.
            precision = max(precision, self.prior_precision) + w * curvature * value * value
            self.precision[name] = precision
            self.mean[name] = self._mean_of(name) + w * (float(y) - p) * value / precision
        self.n_learned += 1

    def widen(self, share: float) -> None:
        """Move `share` of the way back to the prior precision: after a detected
        change, what was learned counts for less and exploration returns."""
        for name, precision in self.precision.items():
            self.precision[name] = precision - share * (precision - self.prior_precision)

    def state_dict(self) -> dict[str, Any]:
        return {
            "prior_precision": self.prior_precision,
            "forgetting": self.forgetting,
            "prior_means": dict(self.prior_means),
            "mean": dict(self.mean),
            "precision": dict(self.precision),
            "n_learned": self.n_learned,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> BayesLogit:
        model = cls(
            float(state["prior_precision"]),
            float(state["forgetting"]),
            {str(k): float(v) for k, v in state["prior_means"].items()},
        )
        model.mean = {str(k): float(v) for k, v in state["mean"].items()}
        model.precision = {str(k): float(v) for k, v in state["precision"].items()}
        model.n_learned = int(state["n_learned"])
        return model
