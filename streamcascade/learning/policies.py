"""Cascade routing on learned quality estimates (Dekoninck et al., ICML 2025).

At every step of a request the router chooses between stopping (answering
with the best answer so far) and running any model not run yet, by expected
quality minus mu times cost. Quality comes from two learned estimators:

- post-hoc, `q[j](T)`: the probability that model j's answer is right, given
  everything seen once the models in T ran: j's score on its tests, whether
  the others passed theirs, and whether each of them behaves like j on probe
  inputs (differential testing, the imitation machinery);
- gain, `g[m](S)`: how much running model m now raises the quality of the
  best answer, from the state S it would run in (which levels ran, passed and
  agreed), learned from every run of m: the best post-hoc estimate once m
  ran, all answers re-estimated in its light, less the best before it. A
  model whose answers only repeat one that ran adds nothing to the best
  answer, and its gain learns to say so; an independence assumption (each
  model's quality a separate draw) would keep crediting it.

A plan is a set of models not run yet; its value is the expected quality of
the best answer once it has run (the best so far plus, per unrun model, a
Gaussian gain around its estimate, as wide as that estimate's observed error;
Clark's moments for the max) less mu times its cost. The width is what lets
the router run a cheap model for the evidence it brings. The best plan's
most important model runs next; the empty plan is stopping.

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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
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
    if observation.n_tests == 0 and 0.0 < observation.score < 1.0:
        # An untested answer's score is its model's own confidence (a
        # classifier's calibrated precision, an LLM's vote share), not a pass rate.
        return "C"
    return "P" if observation.score >= 1.0 else "F"


def _confidence(observation: Observation) -> float:
    """A confidence on the log-odds scale, where 0.95 and 0.99 are far apart."""
    return _logit(observation.score) / 4


def quality_features(state: RouteState, j: int, view: Iterable[int]) -> dict[str, float]:
    """Features of model j's answer once the models in `view` (j among them) ran."""
    own = state.observations[j]
    mine = _state_key(own)
    # The own state is the intercept: no separate bias, so the prior can say
    # what the fixed rule says (passing its tests: likely right; failing: wrong).
    x = {f"s.{mine}": 1.0}
    if mine == "C":
        x["s.conf"] = _confidence(own)
    elif own.has_answer and 0.0 < own.score < 1.0:
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
        key = _state_key(state.observations[i])
        x[f"o{i}.{key}"] = 1.0
        if key == "C":
            x[f"o{i}.conf"] = _confidence(state.observations[i])
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
QUALITY_PRIOR = {"s.P": 1.0, "s.F": -2.0, "s.N": -4.0, "s.C": 0.0, "s.conf": 4.0}
SPREAD_PRIOR = 0.12
VIEW_WINDOW = 50
LOOKAHEAD = 1
"""Cheap models in a row that a step's value looks ahead over (then: stop or the top)."""
# Gauss-Hermite nodes and weights for the standard normal (probabilists').
_NODES = ((-2.856970, 0.011257), (-1.355626, 0.222076), (0.0, 0.533333),
          (1.355626, 0.222076), (2.856970, 0.011257))  # fmt: skip


def gain_prior(n_levels: int) -> dict[str, float]:
    """Prior log-odds of a model's gain, learned as the soft label (gain + 1) / 2:
    about 0.6 when nothing ran, 0.5 after answers that failed or were missing,
    0.1 after one that passed (the fixed rule's belief that it can stop there)."""
    prior = {"bias": _logit(0.8)}
    for i in range(n_levels):
        prior[f"o{i}.P"] = _logit(0.55) - prior["bias"]
        prior[f"o{i}.F"] = _logit(0.75) - prior["bias"]
        prior[f"o{i}.N"] = _logit(0.75) - prior["bias"]
        # After a confident answer: as after a failing one at 50 %, falling
        # to 0.5 (no gain) as the confidence nears 99 %.
        prior[f"o{i}.C"] = _logit(0.75) - prior["bias"]
        prior[f"o{i}.conf"] = -0.95
    return prior


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
    """A running mean that starts from a prior worth `weight` observations and
    then follows the last `window` or so."""

    def __init__(self, prior: float, weight: int = 5, window: int = 200) -> None:
        self.value, self.n, self.window = prior, weight, window

    def update(self, x: float) -> None:
        self.n += 1
        self.value += (x - self.value) / min(self.n, self.window)


_PAIR = re.compile(r"^a(\d+)\.(\d+)\.")
_LEVEL = re.compile(r"(^|\.)o(\d+)\.")


def _renumber_name(name: str, position: int) -> str:
    """A feature name with every level position at or above `position` moved up
    one: `o{i}.` (a level's state) and `a{i}.{k}.` (a pair's agreement); the
    request's own features (`r.`) name no level.

    >>> [_renumber_name(n, 1) for n in ("o0.P", "o1.Fa", "sP.o2.Nu", "a0.2.d", "r.len")]
    ['o0.P', 'o2.Fa', 'sP.o3.Nu', 'a0.3.d', 'r.len']
    """
    if name.startswith("r."):
        return name

    def up(i: int) -> int:
        return i + 1 if i >= position else i

    pair = _PAIR.match(name)
    if pair:
        i, k = (int(g) for g in pair.groups())
        return f"a{up(i)}.{up(k)}.{name[pair.end() :]}"
    return _LEVEL.sub(lambda m: f"{m.group(1)}o{up(int(m.group(2)))}.", name)


def _view_key(x: dict[str, float]) -> str:
    """Which levels ran, passed and agreed: the value features less the request's."""
    return "|".join(sorted(name for name in x if not name.startswith("r.")))


def _renumber_key(key: str, position: int) -> str:
    return "|".join(sorted(_renumber_name(name, position) for name in key.split("|")))


def _renumber(model: BayesLogit, position: int) -> None:
    model.mean = {_renumber_name(k, position): v for k, v in model.mean.items()}
    model.precision = {_renumber_name(k, position): v for k, v in model.precision.items()}
    model.prior_means = {_renumber_name(k, position): v for k, v in model.prior_means.items()}


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


def meets_threshold(has_answer: bool, score: float, threshold: float) -> bool:
    """The fixed rule, in one place: an answer whose score reaches its level's
    threshold.

    >>> meets_threshold(True, 0.5, 0.5), meets_threshold(False, 1.0, 0.0)
    (True, False)
    """
    return has_answer and score >= threshold


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
        threshold = self.thresholds[observation.position]
        return meets_threshold(observation.has_answer, observation.score, threshold)

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
        self.gain = [self._model(gain_prior(n)) for _ in range(n)]
        # The observed squared error of each gain estimate.
        self.spread = [_Mean(SPREAD_PRIOR) for _ in range(n)]
        # ... and in each view (which levels ran, passed and agreed): a model that
        # repeats one that ran is certain there, uncertain where nothing ran.
        self.spread_in: list[dict[str, _Mean]] = [{} for _ in range(n)]
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

    def gain_of(self, m: int, x: dict[str, float]) -> float:
        """Expected rise in the best answer's quality from running model m in the
        state whose value features are `x` (negative: its answer would cast
        doubt on the best so far)."""
        return 2.0 * self.gain[m].predict_one(x) - 1.0

    def spread_of(self, m: int, x: dict[str, float]) -> float:
        """The observed squared error of model m's gain estimate in the view of
        `x` (until it has run there: over every view)."""
        seen = self.spread_in[m].get(_view_key(x))
        return seen.value if seen is not None else self.spread[m].value

    def best_in(self, state: RouteState, view: Sequence[int]) -> float:
        """The best post-hoc quality among the answers in `view`, each estimated
        from what the models in `view` showed."""
        return max(
            (
                self.quality[j].predict_one(quality_features(state, j, view))
                for j in view
                if state.observations[j].has_answer
            ),
            default=0.0,
        )

    def plan_values(
        self, state: RouteState, best: float, mu: float, cost_usd: Sequence[float]
    ) -> dict[tuple[int, ...], float]:
        """The value of each next step: stopping now (`()`), calling the top now
        (`(top,)`), or running one cheap model m (`(m,)`) and then doing
        whichever is worth more, stopping or calling the top (or, `LOOKAHEAD`
        permitting, one more cheap model first). A cheap model moves the best
        answer's quality by its learned gain, give or take that gain's observed
        spread in this view (a Gaussian, integrated on a few nodes); the spread
        is what makes it worth running for the evidence it brings, and a model
        that only repeats one that ran has neither gain nor spread. Values are
        expected quality less mu times the cost still to pay."""
        view = state.ran
        remaining = [m for m in range(self.settings.n_levels) if m not in view]
        x = value_features(state, view, self.settings.ex_ante_scale)
        cheap = {m: (self.gain_of(m, x), math.sqrt(self.spread_of(m, x)))
                 for m in remaining if m != self.top}  # fmt: skip
        with_top = self.top in remaining
        passes = self.top_passes.predict_one(x) if with_top else 0.0
        good, bad = self._top_quality(True), self._top_quality(False)
        top_cost = mu * cost_usd[self.top]

        def top_value(b: float) -> float:
            return passes * max(b, good) + (1 - passes) * max(b, bad) - top_cost

        def then(b: float, left: tuple[int, ...], depth: int) -> float:
            value = max(b, top_value(b)) if with_top else b
            for m in left if depth > 0 else ():
                value = max(value, ahead(b, m, left, depth - 1, first=False))
            return value

        def ahead(b: float, m: int, left: tuple[int, ...], depth: int, first: bool) -> float:
            gain, width = cheap[m]
            rest = tuple(k for k in left if k != m)
            # The first model's gain was learned in this view; a later one's
            # only here too, so it is counted as independent of the first.
            worth = 0.0
            for z, weight in _NODES:
                moved = b + gain + width * z if first else max(b, best + gain + width * z)
                worth += weight * then(min(max(moved, 0.0), 1.0), rest, depth)
            return worth - mu * cost_usd[m]

        values: dict[tuple[int, ...], float] = {(): best if view else -math.inf}
        if with_top:
            values[(self.top,)] = top_value(best)
        for m in cheap:
            values[(m,)] = ahead(best, m, tuple(cheap), LOOKAHEAD - 1, first=True)
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
        # Gain: how much each model raised the best answer, from the state it ran
        # in (both sides re-estimated with today's quality models), and how far
        # off the gain estimate was.
        for step, m in enumerate(state.order):
            if m == self.top:
                continue
            before = state.order[:step]
            x = value_features(state, before, self.settings.ex_ante_scale)
            gained = self.best_in(state, [*before, m]) - self.best_in(state, before)
            error = gained - self.gain_of(m, x)
            self.spread[m].update(error * error)
            key = _view_key(x)
            if key not in self.spread_in[m]:
                # A short window: the early errors, made before the gain was
                # learned, would otherwise keep a duplicate looking uncertain.
                self.spread_in[m][key] = _Mean(self.spread[m].value, window=VIEW_WINDOW)
            self.spread_in[m][key].update(error * error)
            self.gain[m].learn_one(x, (gained + 1.0) / 2.0, weight)

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

    def insert_level(self, position: int) -> None:
        """A model joins the ladder at `position` (the levels from there up move
        one place): what was learned of the others is kept, their features
        renumbered; the newcomer's estimators start at the prior, so its gain's
        width is what gets it tried, until its own runs say what it adds."""
        n = self.settings.n_levels
        if not 0 <= position < n:
            # A new top would leave the old top's estimators (priors that only
            # reference labels move) on a level imitation now labels: not built.
            raise ValueError(f"a level joins below the top: position 0..{n - 1}, not {position}")
        self.settings = replace(self.settings, n_levels=n + 1)
        for model in (*self.quality, *self.gain, self.top_passes):
            _renumber(model, position)
        fresh_quality = {**QUALITY_PRIOR,
                         "s.P": QUALITY_PRIOR["s.P"] + 0.8 * position / max(n, 1)}  # fmt: skip
        self.quality.insert(position, self._model(fresh_quality))
        prior = gain_prior(n + 1)
        for model in self.gain:
            new = {k: v for k, v in prior.items() if k.startswith(f"o{position}.")}
            model.prior_means.update(new)
        self.gain.insert(position, self._model(prior))
        self.spread.insert(position, _Mean(SPREAD_PRIOR))
        self.spread_in = [
            {_renumber_key(key, position): mean for key, mean in views.items()}
            for views in self.spread_in
        ]
        self.spread_in.insert(position, {})

    def widen(self, share: float) -> None:
        for model in (*self.quality, *self.gain):
            model.widen(share)

    def state_dict(self) -> dict[str, Any]:
        return {
            "quality": [m.state_dict() for m in self.quality],
            "gain": [m.state_dict() for m in self.gain],
            "spread": [[m.value, m.n] for m in self.spread],
            "spread_in": [
                {key: [m.value, m.n] for key, m in views.items()} for views in self.spread_in
            ],
            "top_passes": self.top_passes.state_dict(),
            "rng": list(self.rng.getstate()[1]),
            "n_decisions": self.n_decisions,
            "n_forced": self.n_forced,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.quality = [BayesLogit.from_state_dict(m) for m in state["quality"]]
        self.gain = [BayesLogit.from_state_dict(m) for m in state["gain"]]
        self.spread = [_Mean(float(v), int(n)) for v, n in state["spread"]]
        self.spread_in = [
            {str(key): _Mean(float(v), int(n), VIEW_WINDOW) for key, (v, n) in views.items()}
            for views in state["spread_in"]
        ]
        self.top_passes = BayesLogit.from_state_dict(state["top_passes"])
        self.rng.setstate((3, tuple(state["rng"]), None))
        self.n_decisions = int(state["n_decisions"])
        self.n_forced = int(state["n_forced"])
