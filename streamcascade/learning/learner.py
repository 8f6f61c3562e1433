"""The Hedge policy's learner, kept apart from running levels.

One CascadeLearner holds everything the Hedge policy learns while serving, in
parts that each own their state: the level-0 gate over level 1 (`gate`), a
deferral track per kind of request (`track`: policies, costs, drift), level
0's classifier and its own answer policy, the exemplar memory and the budget
arms; and the cost weight mu (steered by a budget when one is set).
`state_dict` is JSON with a version number, so a snapshot can be written to
disk or a compacted Kafka topic, restored after a restart, or rolled back.

Losses, per round, for a level's deferral policy (accept vs defer):
  accept: 1 if the level's answer is wrong (a label, partially observed);
  defer:  mu * cost_usd of the next level's attempt (known, or its running mean).
The gate's losses are in `streamcascade.learning.gate`.
"""

from __future__ import annotations

import logging
import math
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from streamcascade.config import LearningConfig
from streamcascade.learning.budget import Arm, LevelArms
from streamcascade.learning.deferral import DeferralDecision, HedgeThresholdPolicy, json_rng_state
from streamcascade.learning.drift import DriftMonitor
from streamcascade.learning.gate import Level0Gate
from streamcascade.learning.level0 import Level0Classifier, Level0Router
from streamcascade.learning.memory import ExemplarMemory
from streamcascade.learning.protocol import EventOutbox
from streamcascade.learning.running import RunningMean
from streamcascade.learning.snapshots import check_snapshot
from streamcascade.learning.track import DeferralTrack
from streamcascade.schemas import CodeRequest, Feedback

log = logging.getLogger(__name__)

STATE_VERSION = 2
_MU_RANGE = (1e-6, 1e9)


@dataclass
class LevelStep:
    """What one level did for one request, as the learner saw it."""

    position: int
    score: float
    decision: DeferralDecision | None  # None at the top level, which always answers
    p_act_accept: float
    cost_usd: float
    right: bool | None = None  # its label, when one is known
    kind: Literal["policy", "arm", "sweep"] = "policy"
    """Who decided: the Hedge policy, a budget arm, or nobody (a validation sweep,
    which always goes up)."""
    arm_index: int | None = None


@dataclass
class RequestTrace:
    """The learner's view of one request, from its plan to its answer."""

    request: CodeRequest
    features: dict[str, float]
    p_level1: float | None = None
    gate: DeferralDecision | None = None
    p_try: float = 1.0
    exemplar_ids: list[str] = field(default_factory=list)
    steps: list[LevelStep] = field(default_factory=list)
    published_position: int | None = None
    published_label_used: bool = False
    # Classification requests: level 0's label, its confidence and the decision
    # whether level 0 answers itself (None: it knows nothing yet, so it does not).
    label0: str | None = None
    confidence: float | None = None
    answer0: DeferralDecision | None = None
    p_answer0: float = 0.0
    teacher_label: str | None = None  # the label the highest level (or the reference) gave
    reference_labels: bool = False
    """Labels come from reference tests, so every level's label is seen."""


@dataclass
class Pending:
    """Kept per published answer until its Feedback arrives (bounded)."""

    features: dict[str, float]
    position: int  # -1: level 0 answered a classification request
    classification: bool
    score: float
    p_published: float
    label_used: bool


EVENT_VERSION = 1


def _decision_from(data: dict[str, Any] | None) -> DeferralDecision | None:
    return DeferralDecision(**data) if data is not None else None


def trace_to_dict(trace: RequestTrace) -> dict[str, Any]:
    """A finished request's trace as JSON: what `finish` learns from."""
    data = asdict(trace)
    data["request"] = trace.request.model_dump(mode="json")
    return data


def trace_from_dict(data: dict[str, Any]) -> RequestTrace:
    fields = dict(data)
    fields["request"] = CodeRequest.model_validate(data["request"])
    fields["gate"] = _decision_from(data["gate"])
    fields["answer0"] = _decision_from(data["answer0"])
    fields["steps"] = [
        LevelStep(**{**step, "decision": _decision_from(step["decision"])})
        for step in data["steps"]
    ]
    return RequestTrace(**fields)


class CascadeLearner:
    def __init__(self, config: LearningConfig, n_levels: int) -> None:
        if n_levels < 1:
            raise ValueError("n_levels must be >= 1")
        self.config = config
        self.n_levels = n_levels
        self.mu = config.mu
        seed = config.seed
        # Generation and classification requests learn on tracks of their own.
        self.generation = DeferralTrack(
            config, n_levels, seed, "above_level1_cost", self._new_policy
        )
        self.level0 = Level0Gate(config, self._new_policy(seed + 1000, explore="accept"))
        self.use_gate = config.level0 and n_levels > 1
        self.budget_mean = RunningMean()  # recent spend, or share reaching the top
        # Classification requests have their own track: level 0 may answer
        # them itself, and LLM levels score them by vote share, not tests.
        self.classifier = Level0Classifier(config.level0_learning_rate, config.level0_buckets)
        self.answer0 = self._new_policy(seed + 2000)
        self.classification = DeferralTrack(
            config, n_levels, seed + 3000, "class_level1_cost", self._new_policy
        )
        self.answer0_drift = DriftMonitor(config.drift_delta)
        self.n_answered0 = 0
        self.memory = ExemplarMemory(config.memory, self.router.featurizer)
        # The budget heuristic's arms, on one level, when configured.
        arms_on = config.arms.enabled and config.arms.position < n_levels - 1
        self.arms = LevelArms(config.arms) if arms_on else None
        self._arms_rng = random.Random(seed + 4000)
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.n_requests = 0
        self.n_feedback = 0
        self.n_feedback_unmatched = 0
        self.n_explored = 0
        self.n_skipped = 0
        self.last_trace: RequestTrace | None = None
        self.outbox = EventOutbox()
        """Each learning event (see `apply_event`), until the service takes it."""
        self.n_events_applied = 0

    def _new_policy(
        self, seed: int, explore: Literal["defer", "accept"] = "defer"
    ) -> HedgeThresholdPolicy:
        return HedgeThresholdPolicy(
            mu=1.0,  # losses arrive already weighted by self.mu
            thresholds=self.config.thresholds,
            explore_initial=self.config.explore_initial,
            explore_min=self.config.explore_min,
            seed=seed,
            explore=explore,
        )

    @property
    def router(self) -> Level0Router:
        """Level 0's estimate of whether level 1 answers a request well."""
        return self.level0.router

    @property
    def gate(self) -> HedgeThresholdPolicy:
        return self.level0.policy

    @property
    def policies(self) -> list[HedgeThresholdPolicy]:
        """The generation track's policies, one per non-top level."""
        return self.generation.policies

    @property
    def class_policies(self) -> list[HedgeThresholdPolicy]:
        return self.classification.policies

    # -- acting ------------------------------------------------------------------

    def plan(self, request: CodeRequest) -> RequestTrace:
        """Before any level runs: level 0's estimate, the gate, and exemplars."""
        features = self.router.featurizer.transform_one(request)
        trace = RequestTrace(request, features)
        if request.label_set is not None:
            if self.config.level0 and self.classifier.n_learned:
                probabilities = self.classifier.predict_features(features, request.label_set)
                trace.label0 = max(request.label_set, key=lambda k: probabilities[k])
                trace.confidence = probabilities[trace.label0]
                trace.p_answer0 = self.answer0.p_act_accept(trace.confidence)
                trace.answer0 = self.answer0.decide(trace.confidence)
                if trace.answer0.explored:
                    self.n_explored += 1
                self.n_answered0 += trace.answer0.accept
            return trace
        if self.use_gate:
            trace.p_level1, trace.p_try, trace.gate = self.level0.plan(features)
            if not trace.gate.accept:
                self.n_skipped += 1
        return trace

    def start_position(self, trace: RequestTrace) -> int:
        return 0 if trace.gate is None or trace.gate.accept else 1

    def exemplars(self, trace: RequestTrace) -> list[tuple[str, str]]:
        similar = self.memory.similar(trace.request)
        trace.exemplar_ids = [e.request_id for _, e in similar]
        return [(e.prompt, e.code) for _, e in similar]

    def level0_answers(self, trace: RequestTrace) -> bool:
        """Whether level 0's label is the published answer (classification only)."""
        return trace.answer0 is not None and (trace.answer0.accept or trace.answer0.explored)

    def decide(
        self, trace: RequestTrace, position: int, score: float, cost_usd: float
    ) -> DeferralDecision:
        track = self.classification if trace.request.is_classification else self.generation
        decision, p_act_accept = track.decide(position, score)
        if decision.explored:
            self.n_explored += 1
        trace.steps.append(LevelStep(position, score, decision, p_act_accept, cost_usd))
        return decision

    def arms_at(self, position: int) -> LevelArms | None:
        """The budget arms that run the level at `position`, if any."""
        if self.arms is not None and self.config.arms.position == position:
            return self.arms
        return None

    def decide_arm(
        self,
        trace: RequestTrace,
        position: int,
        score: float,
        cost_usd: float,
        arm_index: int,
        arm: Arm,
    ) -> DeferralDecision:
        """The arm's threshold decides; an accepted answer is still sent up for a
        label with probability `label_share` (it stays the published answer)."""
        share = self.config.arms.label_share
        would_accept = score >= arm.threshold
        explored = would_accept and self._arms_rng.random() < share
        if explored:
            self.n_explored += 1
        decision = DeferralDecision(would_accept and not explored, would_accept, arm.threshold,
                            explored, share)  # fmt: skip
        trace.steps.append(
            LevelStep(
                position, score, decision, float(would_accept), cost_usd, None, "arm", arm_index
            )
        )
        return decision

    def decide_sweep(
        self, trace: RequestTrace, position: int, score: float, cost_usd: float
    ) -> DeferralDecision:
        """A validation sweep never answers: the level above must label every arm."""
        decision = DeferralDecision(False, False, 1.01, False, 0.0)  # 1.01: above every score
        trace.steps.append(LevelStep(position, score, decision, 0.0, cost_usd, None, "sweep"))
        return decision

    def record_top(self, trace: RequestTrace, score: float, cost_usd: float) -> None:
        trace.steps.append(LevelStep(self.n_levels - 1, score, None, 1.0, cost_usd))

    # -- learning ----------------------------------------------------------------

    def _loss_cost(self, cost_usd: float) -> float:
        return min(1.0, self.mu * cost_usd)

    def finish(
        self,
        trace: RequestTrace,
        published_position: int,
        labels: dict[int, bool | None],
        published_code: str,
        top_answer_tested: bool,
    ) -> None:
        """Learn from one request. `labels[position]` says whether that level's
        answer was right (None: no label)."""
        self._finish(trace, published_position, labels, published_code, top_answer_tested)
        self.outbox.put(
            {
                "version": EVENT_VERSION,
                "trace": trace_to_dict(trace),
                "published_position": published_position,
                "labels": {str(k): v for k, v in labels.items()},
                "published_code": published_code,
                "top_answer_tested": top_answer_tested,
            }
        )

    def take_events(self) -> list[dict[str, Any]]:
        """The learning events since the last call, oldest first (for replicas)."""
        return self.outbox.take()

    def apply_event(self, event: dict[str, Any]) -> None:
        """Learn what another replica learned from one of its requests (its
        escalation outcome: every level's score, decision, cost and label), as if
        this learner had served it; its answer is remembered for Feedback too."""
        if event.get("version") != EVENT_VERSION:
            raise ValueError(f"unsupported learning event version {event.get('version')!r}")
        labels = {int(k): v for k, v in event["labels"].items()}
        self._finish(
            trace_from_dict(event["trace"]),
            int(event["published_position"]),
            labels,
            str(event["published_code"]),
            bool(event["top_answer_tested"]),
        )
        self.n_events_applied += 1

    def _finish(
        self,
        trace: RequestTrace,
        published_position: int,
        labels: dict[int, bool | None],
        published_code: str,
        top_answer_tested: bool,
    ) -> None:
        trace.published_position = published_position
        steps = {s.position: s for s in trace.steps}
        for step in trace.steps:
            step.right = labels.get(step.position)
        if trace.request.is_classification:
            self._finish_classification(trace, published_position, labels)
            self.n_requests += 1
            self.last_trace = trace
            return
        self.generation.update_next_costs({p: s.cost_usd for p, s in steps.items()})
        if 0 in steps and 1 in steps:
            self.generation.level1_cost.update(
                sum(s.cost_usd for s in trace.steps if s.position >= 1)
            )
        for step in trace.steps:
            if step.decision is None:
                continue
            if step.kind == "policy":
                self._update_policy(step, self.generation)
            elif step.kind == "arm":
                self._update_arm(trace, step, labels, published_position)
        if self.use_gate and trace.gate is not None and trace.p_level1 is not None:
            first = steps.get(0)
            # A validation sweep says nothing about what level 1 would have done.
            self._update_gate(trace, first if first is None or first.kind != "sweep" else None)
        self._update_budget(trace)
        published = steps[published_position]
        if published.decision is not None:
            self._remember(trace.request.id, Pending(
                trace.features, published_position, False, published.score,
                min(1.0, max(published.p_act_accept, 1e-3)), published.right is not None,
            ))  # fmt: skip
        else:  # the top level: no policy to teach, but a failed answer is no exemplar
            self._remember(trace.request.id, Pending(
                trace.features, published_position, False, published.score, 1.0, False,
            ))  # fmt: skip
        # Memory: the top level's tested answers; credit exemplars that were shown.
        first = steps.get(0)
        if trace.exemplar_ids and first is not None and first.right is not None:
            self.memory.record_outcome(trace.exemplar_ids, first.right)
        if published_position == self.n_levels - 1 and top_answer_tested:
            self.memory.add(trace.request, published_code)
        self.memory.tick()
        self.n_requests += 1
        self.last_trace = trace

    def _remember(self, request_id: str, pending: Pending) -> None:
        """Keep a published answer's context for its Feedback, oldest out first."""
        self.pending[request_id] = pending
        while len(self.pending) > self.config.pending_capacity:
            self.pending.popitem(last=False)

    def _finish_classification(
        self, trace: RequestTrace, published_position: int, labels: dict[int, bool | None]
    ) -> None:
        """`labels[-1]` says whether level 0's label was right; `trace.steps` are
        the LLM levels that ran."""
        request = trace.request
        assert request.label_set is not None
        steps = {s.position: s for s in trace.steps}
        track = self.classification
        track.update_next_costs({p: s.cost_usd for p, s in steps.items()})
        if 0 in steps:
            track.level1_cost.update(steps[0].cost_usd)
        for step in trace.steps:
            if step.decision is not None:
                self._update_policy(step, track)
        teacher = trace.teacher_label
        if teacher is not None:
            self.classifier.learn_features(trace.features, request.label_set, teacher)
        if trace.answer0 is not None and trace.confidence is not None:
            defer_loss = self._loss_cost(track.level1_cost.value)
            right0 = labels.get(-1)
            if right0 is None:
                self.answer0.update_losses(trace.confidence, None, defer_loss)
            else:
                # Level 0's label is checked when the request went up anyway
                # (always, with reference labels).
                p_label = (
                    1.0 if trace.answer0.accept else min(1.0, max(1e-3, 1.0 - trace.p_answer0))
                )
                self.answer0.update_losses(trace.confidence, float(not right0), defer_loss, p_label)
                if self.config.drift and self.answer0_drift.update(float(not right0)):
                    self.answer0.restart_exploration(self.config.drift_share)
        if published_position == -1:
            self._remember(request.id, Pending(
                trace.features, -1, True, trace.confidence or 0.0,
                min(1.0, max(trace.p_answer0, 1e-3)), labels.get(-1) is not None,
            ))  # fmt: skip
        elif (published := steps.get(published_position)) and published.decision is not None:
            self._remember(request.id, Pending(
                trace.features, published_position, True, published.score,
                min(1.0, max(published.p_act_accept, 1e-3)), published.right is not None,
            ))  # fmt: skip

    def _update_policy(self, step: LevelStep, track: DeferralTrack) -> None:
        assert step.decision is not None
        track.update(step.position, step.score, step.right, step.decision, step.p_act_accept,
                     self._loss_cost)  # fmt: skip

    def _update_arm(
        self,
        trace: RequestTrace,
        step: LevelStep,
        labels: dict[int, bool | None],
        published_position: int,
    ) -> None:
        """The arm's round: what the cascade from this level up cost, and an
        unbiased estimate of whether its answer was right."""
        assert self.arms is not None and step.decision is not None and step.arm_index is not None
        decision = step.decision
        right: float | None
        above_usd = sum(s.cost_usd for s in trace.steps if s.position > step.position)
        extra_usd = 0.0
        if decision.would_accept:
            # The arm's answer; a label arrives always with reference labels,
            # else only when it was also sent up (probability label_share).
            cost_usd = step.cost_usd
            extra_usd = above_usd  # the label's price: the budget pays it, the arm does not
            p_seen = 1.0 if trace.reference_labels else decision.p_explore
            if step.right is not None:
                right = float(step.right) / p_seen
            elif decision.explored or trace.reference_labels:
                right = None  # it went up, but nothing could label it
            else:
                right = 0.0  # unseen: counts as 0, which the 1/p above balances
        else:
            cost_usd = step.cost_usd + above_usd
            above = labels.get(published_position)
            highest = max(s.position for s in trace.steps)
            if above is None and published_position == highest and step.right is not None:
                above = True  # an imitation teacher: it labelled this level, so it is tested
            right = None if above is None else float(above)
        self.arms.update(step.arm_index, right, cost_usd, extra_usd)

    def _update_gate(self, trace: RequestTrace, first: LevelStep | None) -> None:
        assert trace.gate is not None and trace.p_level1 is not None
        ran = None
        if first is not None and first.decision is not None:
            ran = (first.decision, first.cost_usd, first.right)
        self.level0.update(trace.features, trace.p_level1, trace.p_try, ran,
                           self.generation.level1_cost.value, self._loss_cost)  # fmt: skip

    def _update_budget(self, trace: RequestTrace) -> None:
        """Dual ascent on the budget: while the running mean of the spend (or of
        the share reaching the top level) is over target, cost weighs more."""
        config = self.config
        if config.budget_usd_per_request is not None:
            target = config.budget_usd_per_request
            self.budget_mean.update(sum(s.cost_usd for s in trace.steps))
        elif config.budget_top_share is not None:
            target = config.budget_top_share
            reached_top = any(s.position == self.n_levels - 1 for s in trace.steps)
            self.budget_mean.update(float(reached_top))
        else:
            return
        signal = max(-1.0, min(1.0, self.budget_mean.value / target - 1.0))
        self.mu = min(
            _MU_RANGE[1], max(_MU_RANGE[0], self.mu * math.exp(config.budget_step * signal))
        )

    def learn_one(self, feedback: Feedback) -> bool:
        """Learn from a downstream outcome of a published answer. False when the
        answer is unknown here (too old, or published before a restart), or when
        there was nothing to learn from it."""
        self.n_feedback += 1
        pending = self.pending.pop(feedback.id, None)
        if pending is None:
            self.n_feedback_unmatched += 1
            log.warning("feedback for unknown or expired answer %s: not learned", feedback.id)
            return False
        if not pending.classification and pending.position == self.n_levels - 1:
            # The top level answered: downstream saying it failed takes it out of
            # the exemplar memory, so it is never shown as an example again.
            if feedback.passed or not self.memory.forget(feedback.id):
                log.debug("feedback on top-level answer %s: nothing to learn", feedback.id)
                return False
            return True
        wrong = float(not feedback.passed)
        if pending.classification:
            # Level 0's own label, or an LLM level's vote, on a classification request.
            if pending.position == -1:
                policy, monitor = self.answer0, self.answer0_drift
            else:
                policy = self.classification.policies[pending.position]
                monitor = self.classification.drift[pending.position]
            policy.update_losses(pending.score, wrong, None, pending.p_published)
        else:
            track = self.generation
            policy, monitor = track.policies[pending.position], track.drift[pending.position]
            # A level run by budget arms decides by its arm's threshold, not this policy.
            if self.arms_at(pending.position) is None:
                # Only the accepting side is seen: it was published because it accepted.
                policy.update_losses(pending.score, wrong, None, pending.p_published)
            if pending.position == 0:
                self.level0.learn_feedback(pending.features, feedback.passed)
        if self.config.drift and monitor.update(wrong):
            policy.restart_exploration(self.config.drift_share)
        return True

    def gauges(self) -> dict[str, float]:
        return {
            "requests": self.n_requests,
            "feedback": self.n_feedback,
            "answered_at_level0": self.n_answered0,
            "explorations": self.n_explored,
            "skips": self.n_skipped,
            "drift_alarms": self.generation.n_drift_alarms
            + self.level0.drift.n_detections
            + self.classification.n_drift_alarms,
            "mu_per_usd": self.mu,
        }

    # -- state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": "hedge",
            "n_levels": self.n_levels,
            "mu": self.mu,
            **self.generation.state_dict(""),
            **self.level0.state_dict(),
            "budget_mean": [self.budget_mean.value, self.budget_mean.n],
            "memory": self.memory.state_dict(),
            "classifier": self.classifier.state_dict(),
            "answer0": self.answer0.state_dict(),
            **self.classification.state_dict("class_"),
            "answer0_drift": self.answer0_drift.state_dict(),
            "arms": self.arms.state_dict() if self.arms is not None else None,
            "arms_rng": json_rng_state(self._arms_rng.getstate()),
            "counters": {
                "n_requests": self.n_requests,
                "n_feedback": self.n_feedback,
                "n_feedback_unmatched": self.n_feedback_unmatched,
                "n_explored": self.n_explored,
                "n_skipped": self.n_skipped,
                "n_answered0": self.n_answered0,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot (pending feedback is not part of it)."""
        check_snapshot(state, "hedge", "hedge", STATE_VERSION, self.n_levels)
        self.mu = float(state["mu"])
        self.generation.load_state_dict(state, "")
        self.level0.load_state_dict(state)
        self.budget_mean.value = float(state["budget_mean"][0])
        self.budget_mean.n = int(state["budget_mean"][1])
        self.memory = ExemplarMemory(self.config.memory, self.router.featurizer)
        self.memory.load_state_dict(state["memory"])
        self.classifier = Level0Classifier.from_state_dict(state["classifier"])
        self.answer0 = HedgeThresholdPolicy.from_state_dict(state["answer0"])
        self.classification.load_state_dict(state, "class_")
        self.answer0_drift = DriftMonitor.from_state_dict(state["answer0_drift"])
        if self.arms is not None:
            self.arms = LevelArms(self.config.arms)
            if state["arms"] is not None:
                self.arms.load_state_dict(state["arms"])
        version, internal, gauss = state["arms_rng"]
        self._arms_rng.setstate((version, tuple(internal), gauss))
        for key, value in state["counters"].items():
            setattr(self, key, int(value))
