"""Does an embedding of the prompt tell the router anything its pass bits do not?

Issue 9 asked to try the smallest LLM's embedding of the prompt as an ex-ante
signal (and a small MLP over it, the one place torch might earn its keep), and
to keep it only if it measurably helps. This probe answers that before any
router code depends on it: for every level of a recorded ladder it streams the
tasks in several random orders and scores, progressively (predict, then
learn), how well an online estimator predicts whether the level's answer is
right (hidden tests) from

- ``pass``: the level's visible-tests pass bit alone (what the router's
  quality estimate starts from), and
- ``pass+emb``: the pass bit and the prompt's embedding, standardised online
  and randomly projected to a few dimensions,

each with the router's online Bayesian logistic regression and with a one-hidden-layer MLP
(numpy: if the MLP does not win here, torch would not either). Lower log-loss
with the embedding is the bar; AUC among passing answers says whether it
separates the wrong passes, the decisions the fixed rule gets wrong.

    python -m streamcascade.benchtools.embedprobe \\
        --ladder ../shared/data/mbpp-ladder-dev --models configs/ladders/mbpp.yaml

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.c_[np.ones(400), rng.integers(0, 2, 400)]
>>> y = x[:, 1].astype(int)
>>> score = progressive(x, y, x[:, 1], lambda d: OnlineLogit(d), n_orders=2)
>>> score.log_loss < 0.3
True
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamcascade.learning.bayes import BayesLogit
from streamcascade.schemas import CodeRequest

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float64]


class Estimator(Protocol):
    def predict_proba_one(self, x: Array) -> float: ...

    def learn_one(self, x: Array, y: int) -> None: ...


class OnlineLogit:
    """The router's own estimator (`BayesLogit`: one Newton step per example,
    a Gaussian per weight) over the columns of a dense row."""

    def __init__(self, n_features: int) -> None:
        self.model = BayesLogit()
        self.names = [f"x{i}" for i in range(n_features)]

    def _sparse(self, x: Array) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.names, x, strict=True) if v != 0.0}

    def predict_proba_one(self, x: Array) -> float:
        return self.model.predict_one(self._sparse(x))

    def learn_one(self, x: Array, y: int) -> None:
        self.model.learn_one(self._sparse(x), bool(y))


class OnlineMLP:
    """One tanh hidden layer, plain SGD, one example at a time."""

    def __init__(self, n_features: int, hidden: int = 16, lr: float = 0.05, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w_in = rng.normal(0.0, 1.0 / math.sqrt(n_features), (hidden, n_features))
        self.w_out = np.zeros(hidden)
        self.bias = 0.0
        self.lr = lr

    def _forward(self, x: Array) -> tuple[Array, float]:
        hidden = np.tanh(self.w_in @ x)
        logit = float(np.clip(self.w_out @ hidden + self.bias, -30, 30))
        return hidden, 1.0 / (1.0 + math.exp(-logit))

    def predict_proba_one(self, x: Array) -> float:
        return self._forward(x)[1]

    def learn_one(self, x: Array, y: int) -> None:
        hidden, p = self._forward(x)
        error = p - y
        grad_in = np.outer(error * self.w_out * (1.0 - hidden**2), x)
        self.w_out -= self.lr * error * hidden
        self.bias -= self.lr * error
        self.w_in -= self.lr * grad_in


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Probability that a random right answer scores above a random wrong one
    (ties count half); NaN when either class is empty."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(above + 0.5 * ties)


@dataclass(frozen=True)
class ProbeScore:
    log_loss: float
    """Mean progressive log-loss (nats) over all orders."""
    auc: float
    auc_passing: float
    """AUC among answers that passed their visible tests."""


def progressive(
    features: Array,
    labels: npt.NDArray[np.int_],
    passed: Array,
    make: Callable[[int], Estimator],
    n_orders: int = 5,
) -> ProbeScore:
    """Predict-then-learn over `n_orders` random orders of the rows."""
    losses: list[float] = []
    aucs: list[float] = []
    aucs_passing: list[float] = []
    for order in range(n_orders):
        rows = np.random.default_rng(order).permutation(len(labels))
        model = make(features.shape[1])
        probs = np.empty(len(rows))
        for k, row in enumerate(rows):
            p = model.predict_proba_one(features[row])
            probs[k] = p
            y = int(labels[row])
            losses.append(-math.log(max(p if y else 1.0 - p, 1e-9)))
            model.learn_one(features[row], y)
        ordered_y, ordered_pass = labels[rows], passed[rows]
        aucs.append(auc(probs.tolist(), ordered_y.tolist()))
        aucs_passing.append(
            auc(probs[ordered_pass == 1].tolist(), ordered_y[ordered_pass == 1].tolist())
        )
    known = [a for a in aucs_passing if not math.isnan(a)]
    passing = float(np.mean(known)) if known else float("nan")
    return ProbeScore(float(np.mean(losses)), float(np.mean(aucs)), passing)


def standardise_online(embeddings: Array) -> Array:
    """Each row standardised by the mean and spread of the rows before it (the
    first rows see zeros): what a stream knows when the request arrives. With
    random orders the row order of the file stands in for arrival order."""
    out = np.zeros_like(embeddings)
    mean = np.zeros(embeddings.shape[1])
    m2 = np.zeros(embeddings.shape[1])
    for k, row in enumerate(embeddings):
        if k > 1:
            out[k] = (row - mean) / np.sqrt(m2 / k + 1e-6)
        delta = row - mean
        mean += delta / (k + 1)
        m2 += delta * (row - mean)
    return out


def prompt_embeddings(requests: Sequence[CodeRequest], model_path: Path, n_threads: int) -> Array:
    """Mean-pooled embeddings of each prompt from a GGUF model (llama.cpp)."""
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

    llm = Llama(
        str(model_path), embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN,
        n_ctx=2048, n_threads=n_threads, verbose=False,
    )  # fmt: skip
    return np.array([np.asarray(llm.embed(r.prompt), dtype=float) for r in requests])


def probe_table(
    embeddings: Array,
    correct: Sequence[Sequence[bool]],
    passes: Sequence[Sequence[bool]],
    names: Sequence[str],
    dim: int = 8,
    n_orders: int = 5,
    scale: float = 1.0 / 3.0,
) -> str:
    """One row per level, variant and estimator: log-loss, AUC, AUC among passes."""
    projection = np.random.default_rng(123).normal(0.0, 1.0, (embeddings.shape[1], dim))
    projected = standardise_online(embeddings) @ projection / math.sqrt(embeddings.shape[1]) * scale
    estimators: dict[str, Callable[[int], Estimator]] = {
        "logit": lambda d: OnlineLogit(d),
        "mlp": lambda d: OnlineMLP(d),
    }
    lines = [
        "| level | inputs | estimator | log-loss | AUC | AUC among passes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, right, passed_list in zip(names, correct, passes, strict=True):
        y = np.asarray(right, dtype=int)
        passed = np.asarray(passed_list, dtype=float)
        base = np.c_[np.ones(len(y)), passed]
        for inputs, x in (("pass", base), ("pass+emb", np.c_[base, projected])):
            for estimator, make in estimators.items():
                s = progressive(x, y, passed, make, n_orders)
                lines.append(
                    f"| {name} | {inputs} | {estimator} | {s.log_loss:.3f} | {s.auc:.3f} "
                    f"| {s.auc_passing:.3f} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from streamcascade.benchtools.learnbench import LadderWorld
    from streamcascade.config import SandboxConfig
    from streamcascade.ladder import ladder_config, parse_ladder_spec, recorded_requests
    from streamcascade.models.registry import resolve_model
    from streamcascade.sandbox import Sandbox

    parser = argparse.ArgumentParser(prog="python -m streamcascade.benchtools.embedprobe")
    parser.add_argument("--ladder", required=True, type=Path)
    parser.add_argument("--models", required=True, help="as for `bench --ladder`")
    parser.add_argument("--embedder", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument(
        "--scale", type=float, default=1.0 / 3.0,
        help="size of each projected embedding feature (a standardised one is ~1)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--embeddings-cache", type=Path, help=".npy file: read if there, else written"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = parse_ladder_spec(args.models)
    config = ladder_config(args.ladder, spec)
    requests, _dead = recorded_requests(args.ladder, spec)
    probe = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
    with Sandbox(probe) as sandbox, Sandbox(SandboxConfig()) as grader:
        world = LadderWorld(config, requests, sandbox, grader)
    cache: Path | None = args.embeddings_cache
    if cache is not None and cache.is_file():
        embeddings = np.load(cache)
    else:
        embeddings = prompt_embeddings(requests, resolve_model(args.embedder), args.threads)
        if cache is not None:
            np.save(cache, embeddings)
    table = probe_table(
        embeddings,
        [[world.correct[m][r.id] for r in requests] for m in range(len(world.levels))],
        [[world.passes[m][r.id] for r in requests] for m in range(len(world.levels))],
        [level.name for level in world.levels],
        args.dim,
        args.orders,
        args.scale,
    )
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
