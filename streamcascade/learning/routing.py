"""Cascade routing on learned quality estimates (Dekoninck et al., ICML 2025).

At every step of a request the router chooses between stopping (answering
with the best answer so far) and running any model not run yet, by expected
quality minus mu times cost. Quality comes from two learned estimators:

- post-hoc, `q[j](T)`: the probability that model j's answer is right, given
  everything seen once the models in T ran: j's score on its tests, whether
  the others passed theirs, and whether each of them behaves like j on probe
  inputs (differential testing, the imitation machinery);
- ex-ante, `e[m](S)`: what model m's post-hoc quality will be if it runs now,
  from the state S it would run in (which levels ran, passed and agreed),
  learned from every run of m with its post-hoc estimate as the target, with
  the observed spread of that guess.

A plan is a set of models not run yet; its value is the expected quality of
the best answer once it has run (a Gaussian per unrun model around its
ex-ante estimate, as wide as its spread; Clark's moments for the max) less
mu times its cost. The width is what lets the router run a cheap model for
the evidence it brings. The best plan's most important model runs next;
the empty plan is stopping.

The estimators are Bayesian logistic regressions (`BayesLogit`) whose prior
is the fixed cascade's belief (a passing answer is probably right, a failing
one wrong). The stop-or-go-on decision uses one Thompson draw of the best
answer's quality, so the router explores where it is unsure and stops
exploring where it has seen enough; a small floor of forced escalations
keeps labels coming, for drift.

Labels for `q` come from the top model's answer (imitation: a lower answer is
right when it behaves like a top answer that passed its own tests), from the
request's reference tests, or from downstream Feedback.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamcascade.learning.bayes import BayesLogit


@dataclass(frozen=True)
class Observation:
    """What one level's attempt showed, before anyone labelled it."""

    position: int
    has_answer: bool
    score: float
    """The best solution's pass rate on the pooled tests (visible and generated)."""
    n_tests: int
    n_chars: int
    cost_usd: float


@dataclass(frozen=True)
class Decision:
    """One decision of a policy, kept to explain the answer (not learned from)."""

    position: int | None
    """The position run next; None: stop."""
    policy: str
    why: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class RouteState:
    """One request on its way up: its features and what has run so far."""

    features: dict[str, float]
    observations: dict[int, Observation] = field(default_factory=dict)
    agree: dict[tuple[int, int], bool | None] = field(default_factory=dict)
    """(lower, higher) position -> whether the two answers behave alike on probes."""
    order: list[int] = field(default_factory=list)
    """Positions in the order they ran."""
    forced: bool = False
    """The top model was called by the exploration floor, not by the estimates."""
    decisions: list[Decision] = field(default_factory=list)
    """Why each step was taken, for `streamcascade explain`."""
    context: Any = None
    """What a policy keeps about this request between its steps (the Hedge
    policy's trace); the loop never reads it."""

    @property
    def ran(self) -> frozenset[int]:
        return frozenset(self.observations)

    def add(self, observation: Observation, agree: dict[int, bool | None]) -> None:
        """`agree[i]`: whether this answer behaves like the one at position i."""
        position = observation.position
        self.observations[position] = observation
        self.order.append(position)
        for other, same in agree.items():
            self.agree[(min(other, position), max(other, position))] = same

    def agreement(self, i: int, j: int) -> bool | None:
        return self.agree.get((min(i, j), max(i, j)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _state_key(observation: Observation) -> str:
    if not observation.has_answer:
        return "N"
    return "P" if observation.score >= 1.0 else "F"


def quality_features(state: RouteState, j: int, view: Iterable[int]) -> dict[str, float]:
    """Features of model j's answer once the models in `view` (j among them) ran."""
    own = state.observations[j]
    mine = _state_key(own)
    # The own state is the intercept: no separate bias, so the prior can say
    # what the fixed rule says (passing its tests: likely right; failing: wrong).
    x = {f"s.{mine}": 1.0}
    if own.has_answer and 0.0 < own.score < 1.0:
        x["s.partial"] = own.score
    if own.n_tests == 0:
        x["s.untested"] = 1.0
    x["s.len"] = (math.log1p(own.n_chars) - 5.5) / 4
    for i in view:
        if i == j:
            continue
        same = state.agreement(i, j)
        tag = "u" if same is None else ("a" if same else "d")
        other = _state_key(state.observations[i])
        # Half weight: with a unit prior on each, the evidence of other models
        # would otherwise make a fresh estimate too wide to act on.
        x[f"o{i}.{other}{tag}"] = 0.5
        x[f"s{mine}.o{i}.{other}{tag}"] = 0.5
    return x


def value_features(
    state: RouteState, view: Iterable[int], ex_ante_scale: float
) -> dict[str, float]:
    """Features of a state, for the ex-ante estimate of what running one more model brings."""
    ran = sorted(view)
    x = {"bias": 1.0}
    for i in ran:
        x[f"o{i}.{_state_key(state.observations[i])}"] = 1.0
    for i, k in itertools.combinations(ran, 2):
        same = state.agreement(i, k)
        x[f"a{i}.{k}.{'u' if same is None else ('a' if same else 'd')}"] = 1.0
    if ex_ante_scale > 0:
        for name, value in state.features.items():
            x[f"r.{name}"] = value * ex_ante_scale
    return x


# Prior log-odds: the fixed visible-tests cascade's beliefs, which data then
# moves. An answer passing its tests is probably right (logit 1.0, 73 %, plus
# up to 0.8 for later levels), one failing them (12 %) or missing is wrong; a
# level's ex-ante quality starts near 60 %, with a spread of 0.35; the top
# model passes its own tests three times in four.
QUALITY_PRIOR = {"s.P": 1.0, "s.F": -2.0, "s.N": -4.0}
VALUE_PRIOR = {"bias": 0.4}
SPREAD_PRIOR = 0.12
TOP_PASSES_PRIOR = {"bias": 1.1}


@dataclass(frozen=True)
class RouterSettings:
    """The router's knobs (see `streamcascade.config.RouterConfig`)."""

    n_levels: int
    prior_precision: float = 10.0
    forgetting: float = 0.999
    explore_floor: float = 0.02
    thompson: bool = True
    top_quality: float = 0.95
    """The quality credited to a top answer that passes its tests, until labels for it arrive."""
    top_quality_failed: float = 0.3
    """... and to one that fails them."""
    ex_ante_scale: float = 0.0
    answer_margin: float = 0.05
    seed: int = 0


class _Mean:
    """A running mean that starts from a prior worth `weight` observations."""

    def __init__(self, prior: float, weight: int = 5) -> None:
        self.value, self.n = prior, weight

    def update(self, x: float) -> None:
        self.n += 1
        self.value += (x - self.value) / min(self.n, 200)


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _clark_max(m1: float, v1: float, m2: float, v2: float) -> tuple[float, float]:
    """Mean and variance of the max of two independent Gaussians (Clark 1961)."""
    theta = math.sqrt(v1 + v2)
    if theta < 1e-9:
        return max(m1, m2), 0.0
    alpha = (m1 - m2) / theta
    p, q, d = _cdf(alpha), _cdf(-alpha), _phi(alpha)
    mean = m1 * p + m2 * q + theta * d
    second = (m1 * m1 + v1) * p + (m2 * m2 + v2) * q + (m1 + m2) * theta * d
    return mean, max(second - mean * mean, 0.0)


def _expected_max(mean: float, variance: float, constant: float) -> float:
    return _clark_max(mean, variance, constant, 0.0)[0]


class CascadePolicy(Protocol):
    """What the engine asks at every step of a request: run which level next
    (None: stop), and which of the levels that ran answers."""

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None: ...

    def answer(self, state: RouteState) -> int: ...


class FixedCascadePolicy:
    """The fixed rule: run the levels in order; the first whose score reaches its
    threshold answers; the top always answers.

    >>> policy = FixedCascadePolicy([1.0, 0.0])
    >>> state = RouteState({})
    >>> policy.decide(state, 0.0, [1.0, 2.0])
    0
    >>> state.add(Observation(0, True, 0.5, 2, 40, 1.0), {})
    >>> policy.decide(state, 0.0, [1.0, 2.0])
    1
    """

    def __init__(self, thresholds: Sequence[float]) -> None:
        self.thresholds = list(thresholds)

    def _accepts(self, observation: Observation) -> bool:
        return observation.has_answer and observation.score >= self.thresholds[observation.position]

    def decide(self, state: RouteState, mu: float, cost_usd: Sequence[float]) -> int | None:
        if not state.order:
            state.decisions.append(Decision(0, "fixed", "start at the cheapest level"))
            return 0
        last = state.order[-1]
        observation = state.observations[last]
        figures = {"score": observation.score, "threshold": self.thresholds[last]}
        if last == len(self.thresholds) - 1:
            why = f"the top answers, whatever it scored ({observation.score:.2f})"
            state.decisions.append(Decision(None, "fixed", why, figures))
            return None
        if self._accepts(observation):
            threshold = self.thresholds[last]
            why = f"scored {observation.score:.2f} >= threshold {threshold:.2f}: it answers"
            state.decisions.append(Decision(None, "fixed", why, figures))
            return None
        why = (
            f"scored {observation.score:.2f} < threshold {self.thresholds[last]:.2f}: up"
            if observation.has_answer
            else "no answer: up"
        )
        state.decisions.append(Decision(last + 1, "fixed", why, figures))
        return last + 1

    def answer(self, state: RouteState) -> int:
        return state.order[-1]


class CascadeRouter:
    """The learned router: post-hoc and ex-ante quality estimators, plan values,
    Thompson draws.

    Examples
    --------
    A two-model cascade whose cheap model is right exactly when it passes its
    tests learns to stop there when it passes and to go up when it fails:

    >>> router = CascadeRouter(RouterSettings(n_levels=2, explore_floor=0.0, seed=1))
    >>> for i in range(300):
    ...     passed = i % 2 == 0
    ...     state = RouteState({})
    ...     state.add(Observation(0, True, 1.0 if passed else 0.0, 1, 50, 0.01), {})
    ...     state.add(Observation(1, True, 1.0, 1, 50, 0.10), {0: passed})
    ...     router.observe(state, {0: passed})
    >>> state = RouteState({})
    >>> state.add(Observation(0, True, 1.0, 1, 50, 0.01), {})
    >>> router.decide(state, 3.0, [0.01, 0.1], explore=False) is None
    True
    >>> state = RouteState({})
    >>> state.add(Observation(0, True, 0.0, 1, 50, 0.01), {})
    >>> router.decide(state, 3.0, [0.01, 0.1], explore=False)
    1
    """

    def __init__(self, settings: RouterSettings) -> None:
        if settings.n_levels < 1:
            raise ValueError("a router needs at least one level")
        self.settings = settings
        n = settings.n_levels
        # Levels come cheapest first, and price follows capability: at equal
        # evidence, a later level's passing answer is trusted a little more.
        self.quality = [
            self._model({**QUALITY_PRIOR, "s.P": QUALITY_PRIOR["s.P"] + 0.8 * m / max(n - 1, 1)})
            for m in range(n - 1)
        ]
        # Imitation cannot label the top model's own answer: until a reference
        # label or Feedback does, its quality is the configured prior.
        self.quality.append(
            self._model(
                {
                    "s.P": _logit(settings.top_quality),
                    "s.F": _logit(settings.top_quality_failed),
                    "s.N": QUALITY_PRIOR["s.N"],
                }
            )
        )
        self.value = [self._model(VALUE_PRIOR) for _ in range(n)]
        # The observed squared error of each ex-ante estimate.
        self.spread = [_Mean(SPREAD_PRIOR) for _ in range(n)]
        # Whether the top model's answer passes its own tests, from the state below it.
        self.top_passes = self._model(TOP_PASSES_PRIOR)
        self.rng = random.Random(settings.seed)
        self.n_decisions = 0
        self.n_forced = 0

    def _model(self, prior_means: dict[str, float]) -> BayesLogit:
        return BayesLogit(self.settings.prior_precision, self.settings.forgetting, prior_means)

    @property
    def top(self) -> int:
        return self.settings.n_levels - 1

    # -- estimates -----------------------------------------------------------------

    def _draw(self, model: BayesLogit, x: dict[str, float], explore: bool) -> float:
        if explore and self.settings.thompson:
            return model.sample_one(x, self.rng)
        return model.predict_one(x)

    def quality_of(self, state: RouteState, j: int, explore: bool = False) -> float:
        """Estimated probability that model j's answer is right, all that ran considered."""
        observation = state.observations[j]
        if not observation.has_answer:
            return 0.0
        return self._draw(self.quality[j], quality_features(state, j, state.ran), explore)

    def _top_quality(self, passed: bool) -> float:
        return self.quality[self.top].predict_one({"s.P" if passed else "s.F": 1.0})

    def plan_values(
        self, state: RouteState, best: float, mu: float, cost_usd: Sequence[float]
    ) -> dict[tuple[int, ...], float]:
        """Every plan (a set of models not run yet) with its value: the expected
        quality of the best answer once the plan's models have run too, less mu
        times their cost. Each unrun cheap model's quality is a Gaussian around
        its ex-ante estimate, as wide as that estimate's observed error: the
        width is what makes a cheap model worth running for the evidence it
        brings (Dekoninck et al., ICML 2025, with Clark's moments for the max).
        The empty plan is stopping now."""
        view = state.ran
        remaining = [m for m in range(self.settings.n_levels) if m not in view]
        x = value_features(state, view, self.settings.ex_ante_scale)
        ex_ante = {m: self.value[m].predict_one(x) for m in remaining if m != self.top}
        passes = self.top_passes.predict_one(x) if self.top in remaining else 0.0
        good, bad = self._top_quality(True), self._top_quality(False)
        # The max's moments over each set of cheap levels, each set built from a
        # smaller one by one more max (sets in increasing order of their members).
        moments: dict[tuple[int, ...], tuple[float, float, float]] = {(): (best, 0.0, 0.0)}
        for m in sorted(ex_ante):
            for plan, (mean, variance, cost) in list(moments.items()):
                mean, variance = _clark_max(mean, variance, ex_ante[m], self.spread[m].value)
                moments[(*plan, m)] = (mean, variance, cost + cost_usd[m])
        values: dict[tuple[int, ...], float] = {}
        with_top = self.top in remaining
        for plan, (mean, variance, cost) in moments.items():
            values[plan] = mean - mu * cost if (plan or view) else -math.inf
            if with_top:
                expected = passes * _expected_max(mean, variance, good) + (
                    1 - passes
                ) * _expected_max(mean, variance, bad)
                values[(*plan, self.top)] = expected - mu * (cost + cost_usd[self.top])
        return values

    # -- acting --------------------------------------------------------------------

    def decide(
        self,
        state: RouteState,
        mu: float,
        cost_usd: Sequence[float],
        explore: bool = True,
    ) -> int | None:
        """The next position to run, or None to stop. `cost_usd[m]`: the expected
        cost of running model m (its running mean). Every set of models not yet
        run is a plan; the best plan's most important model runs next."""
        ran = state.ran
        if self.top in ran:
            state.decisions.append(Decision(None, "router", "the top has run: stop"))
            return None
        self.n_decisions += bool(explore)
        # The best answer so far, as a Thompson draw: where the router is unsure
        # whether to trust it, it sometimes calls the top and so learns.
        best = max((self.quality_of(state, j, explore) for j in ran), default=0.0)
        values = self.plan_values(state, best, mu, cost_usd)
        best_plan = max(values, key=lambda plan: (values[plan], -len(plan)))
        figures = {"best_quality_so_far": best, "best_plan_value": values[best_plan],
                   "mu_per_usd": mu}  # fmt: skip
        if math.isfinite(values.get((), -math.inf)):  # before anything ran, stopping is no plan
            figures["stop_value"] = values[()]
        # Levels are numbered from 1 in answers (position + 1).
        plan_words = "+".join(f"L{m + 1}" for m in best_plan) or "stop"
        seen = (
            f"best answer so far {best:.2f}{' (a Thompson draw)' if explore else ''}; "
            f"best plan {plan_words} worth {values[best_plan]:.3f} at mu {mu:.3g}/USD"
        )
        if not best_plan:
            floor = self.settings.explore_floor
            if explore and floor > 0 and self.rng.random() < floor:
                state.forced = True
                self.n_forced += 1
                why = f"{seen}; the exploration floor ({floor:.0%}) sends it to the top anyway"
                state.decisions.append(Decision(self.top, "router", why, figures))
                return self.top
            state.decisions.append(Decision(None, "router", f"{seen}: stop", figures))
            return None
        cheap = [m for m in best_plan if m != self.top]
        if not cheap:
            why = f"{seen}: run the top"
            state.decisions.append(Decision(self.top, "router", why, figures))
            return self.top

        # The plan's most important cheap model runs first: the one whose absence
        # would cost the plan most. Once it has answered, the rest of the plan
        # may no longer be worth running.
        def loss_without(m: int) -> float:
            return values[best_plan] - values[tuple(k for k in best_plan if k != m)]

        chosen = max(cheap, key=lambda m: (loss_without(m), -m))
        why = f"{seen}: run L{chosen + 1} first (the plan loses most without it)"
        state.decisions.append(Decision(chosen, "router", why, figures))
        return chosen

    def answer(self, state: RouteState) -> int:
        """The answer estimated best; among answers within `answer_margin` of the
        best estimate, the latest level's (the most capable, by the ladder's order)."""
        quality = {j: self.quality_of(state, j) for j in state.ran}
        best = max(quality.values())
        return max(j for j, q in quality.items() if q >= best - self.settings.answer_margin)

    # -- learning ------------------------------------------------------------------

    def observe(
        self, state: RouteState, labels: dict[int, bool | None], weight: float = 1.0
    ) -> None:
        """Learn from a finished request. `labels[j]`: whether model j's answer
        was right (None or absent: unknown). The ex-ante estimators and the top
        model's pass rate learn from every request, labelled or not."""
        ran = state.ran
        self.observe_quality(state, labels, weight)
        if self.top in ran:
            top = state.observations[self.top]
            passed = top.has_answer and (top.score >= 1.0 or top.n_tests == 0)
            for step in range(state.order.index(self.top) + 1):
                x = value_features(state, state.order[:step], self.settings.ex_ante_scale)
                self.top_passes.learn_one(x, passed, weight)
        # Ex-ante: what each model's post-hoc quality turned out to be, from the
        # state it ran in, and how far off the ex-ante estimate was.
        for step, m in enumerate(state.order):
            if m == self.top:
                continue
            before = state.order[:step]
            x = value_features(state, before, self.settings.ex_ante_scale)
            target = self.quality[m].predict_one(quality_features(state, m, [*before, m]))
            error = target - self.value[m].predict_one(x)
            self.spread[m].update(error * error)
            self.value[m].learn_one(x, target, weight)

    def observe_quality(
        self, state: RouteState, labels: dict[int, bool | None], weight: float = 1.0
    ) -> None:
        """Learn whether answers were right, in every view of them the router
        could be in (each subset of the other models that ran)."""
        ran = state.ran
        for j, right in labels.items():
            if right is None or j not in ran or not state.observations[j].has_answer:
                continue
            others = [i for i in ran if i != j]
            for size in range(len(others) + 1):
                for subset in itertools.combinations(others, size):
                    x = quality_features(state, j, (*subset, j))
                    self.quality[j].learn_one(x, right, weight)

    def widen(self, share: float) -> None:
        for model in (*self.quality, *self.value):
            model.widen(share)

    def state_dict(self) -> dict[str, Any]:
        return {
            "quality": [m.state_dict() for m in self.quality],
            "value": [m.state_dict() for m in self.value],
            "spread": [[m.value, m.n] for m in self.spread],
            "top_passes": self.top_passes.state_dict(),
            "rng": list(self.rng.getstate()[1]),
            "n_decisions": self.n_decisions,
            "n_forced": self.n_forced,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.quality = [BayesLogit.from_state_dict(m) for m in state["quality"]]
        self.value = [BayesLogit.from_state_dict(m) for m in state["value"]]
        self.spread = [_Mean(float(v), int(n)) for v, n in state["spread"]]
        self.top_passes = BayesLogit.from_state_dict(state["top_passes"])
        self.rng.setstate((3, tuple(state["rng"]), None))
        self.n_decisions = int(state["n_decisions"])
        self.n_forced = int(state["n_forced"])
