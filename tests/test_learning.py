"""Online learning: level 0, the learner's state, feedback, imitation, memory, drift."""

from __future__ import annotations

import json
import random
from pathlib import Path

from test_cascade import RIGHT, WRONG, ScriptedBackend, _level

from streamcascade.backends.base import Completion, GenerationParams, Prompt
from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
from streamcascade.config import LearningConfig, MemoryConfig
from streamcascade.learning.deferral import HedgeThresholdPolicy
from streamcascade.learning.drift import DriftMonitor
from streamcascade.learning.imitation import agreement, probe_calls
from streamcascade.learning.learner import CascadeLearner, Pending
from streamcascade.learning.level0 import Level0Router
from streamcascade.learning.memory import ExemplarMemory
from streamcascade.learning.snapshots import SnapshotStore
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest, Feedback

EASY = ["sort", "reverse", "sum", "length", "maximum", "minimum", "count", "append"]
HARD = ["prime", "modular", "fibonacci", "recursive", "dynamic", "graph", "parse", "regex"]


def _request(i: int, words: list[str], rng: random.Random) -> CodeRequest:
    chosen = " ".join(rng.sample(words, 3))
    return CodeRequest(
        id=f"r{i}", prompt=f'def f(x):\n    """{chosen} the input."""\n', entry_point="f"
    )


def test_level0_learns_a_separable_task() -> None:
    rng = random.Random(0)
    router = Level0Router(learning_rate=0.5)
    for i in range(400):
        easy = rng.random() < 0.5
        router.learn_one(_request(i, EASY if easy else HARD, rng), easy)
    held_out = [(rng.random() < 0.5) for _ in range(200)]
    correct = sum(
        (router.predict_one(_request(1000 + i, EASY if e else HARD, rng)) >= 0.5) == e
        for i, e in enumerate(held_out)
    )
    assert correct / len(held_out) >= 0.97


def test_level0_state_round_trips_and_keeps_learning_identically() -> None:
    rng = random.Random(1)
    router = Level0Router()
    for i in range(50):
        router.learn_one(_request(i, EASY if i % 2 else HARD, rng), bool(i % 2))
    clone = Level0Router.from_state_dict(json.loads(json.dumps(router.state_dict())))
    assert clone.state_dict() == router.state_dict()
    probe = _request(999, EASY, rng)
    for model in (router, clone):
        model.learn_one(probe, True)
    assert clone.predict_one(probe) == router.predict_one(probe)


def _drive(learner: CascadeLearner, n: int, seed: int) -> None:
    """Synthetic rounds straight through the learner: level 1 scores and labels."""
    rng = random.Random(seed)
    for i in range(n):
        request = _request(i, EASY if i % 2 else HARD, rng)
        trace = learner.plan(request)
        start = learner.start_position(trace)
        score = rng.random()
        labels: dict[int, bool | None] = {}
        published = 1
        if start == 0:
            decision = learner.decide(trace, 0, score, 0.001)
            labels[0] = score > 0.5
            if decision.accept:
                published = 0
        if published == 1 or start == 1:
            learner.record_top(trace, 1.0, 0.01)
        learner.finish(trace, published, labels, "def f(x):\n    return x", True)


def test_learner_snapshot_round_trips_exactly_and_decides_the_same(tmp_path: Path) -> None:
    config = LearningConfig(enabled=True, mu=50.0, memory=MemoryConfig(enabled=True))
    learner = CascadeLearner(config, 2)
    _drive(learner, 120, seed=2)
    store = SnapshotStore(tmp_path, keep=3)
    number = store.save(learner.state_dict())
    restored = CascadeLearner(config, 2)
    state = store.load()
    assert state is not None
    restored.load_state_dict(state)
    assert restored.state_dict() == learner.state_dict()
    # Same state, same randomness: the next rounds go the same way.
    _drive(learner, 30, seed=3)
    _drive(restored, 30, seed=3)
    assert restored.state_dict() == learner.state_dict()
    assert number == 1


def test_snapshot_store_rolls_back_and_prunes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    for version in range(5):
        store.save({"step": version})
    assert store.numbers() == [3, 4, 5]
    assert store.load() == {"step": 4}
    assert store.rollback(3) == 6
    assert store.load() == {"step": 2}
    assert not list(tmp_path.glob("*.tmp"))


def test_feedback_changes_the_policy_and_unknown_feedback_is_counted() -> None:
    config = LearningConfig(enabled=True, mu=50.0, explore_initial=0.0, explore_min=0.0)
    learner = CascadeLearner(config, 2)
    request = CodeRequest(id="fb", prompt="def f(x):\n    pass\n", entry_point="f")
    trace = learner.plan(request)
    learner.gate.log_weights = [0.0] * len(learner.gate.thresholds)
    trace.gate = None  # level 1 runs
    decision = learner.decide(trace, 0, 1.0, 0.001)
    assert decision.accept  # a perfect score passes every threshold
    learner.finish(trace, 0, {}, "def f(x):\n    return 1", False)
    before_policy = list(learner.policies[0].log_weights)
    before_router = learner.router.state_dict()["weights"]
    assert learner.learn_one(Feedback(id="fb", passed=False, source="ci"))
    assert learner.policies[0].log_weights != before_policy
    assert learner.router.state_dict()["weights"] != before_router
    assert not learner.learn_one(Feedback(id="never-published", passed=True))
    assert learner.n_feedback_unmatched == 1


def test_a_failed_top_level_answer_leaves_the_exemplar_memory() -> None:
    config = LearningConfig(enabled=True, level0=False, memory=MemoryConfig(enabled=True))
    learner = CascadeLearner(config, 2)
    for request_id in ("top-ok", "top-bad"):
        request = CodeRequest(id=request_id, prompt="def f(x):\n    pass\n", entry_point="f")
        trace = learner.plan(request)
        learner.record_top(trace, 1.0, 0.01)
        learner.finish(trace, 1, {}, "def f(x):\n    return 1", True)
    assert {"top-ok", "top-bad"} <= set(learner.memory.entries)
    assert not learner.learn_one(Feedback(id="top-ok", passed=True))  # nothing to learn
    assert learner.learn_one(Feedback(id="top-bad", passed=False))
    assert set(learner.memory.entries) == {"top-ok"}
    assert learner.n_feedback_unmatched == 0


def test_imitation_labels_tell_programs_apart_on_probe_inputs(sandbox: Sandbox) -> None:
    calls = probe_calls(["assert double(2) == 4"], "double")
    assert calls[0] == "double(2)" and len(calls) > 1
    reference = "def double(x):\n    return 2 * x"
    assert agreement(sandbox, reference, "def double(x):\n    return x * 2", calls) is True
    # x + 2 passes the visible test (2 + 2 == 4) but not the probes.
    assert agreement(sandbox, reference, "def double(x):\n    return x + 2", calls) is False
    assert agreement(sandbox, "def double(x):\n    raise ValueError", reference, calls) is None
    assert agreement(sandbox, reference, reference, []) is None


def _double(request_id: str, prompt: str) -> CodeRequest:
    """A request for `double`, with one visible test that x + 2 also passes."""
    return CodeRequest(
        id=request_id, prompt=prompt, entry_point="double", visible_tests=["assert double(2) == 4"]
    )


def test_online_cascade_learns_to_defer_a_level_that_passes_but_is_wrong(
    sandbox: Sandbox,
) -> None:
    small = ScriptedBackend("small", [WRONG], [])
    big = ScriptedBackend("big", [RIGHT], [])
    levels = [
        _level(1, small, sandbox, t_test_generations=0),
        _level(2, big, sandbox, t_test_generations=0, price_in_usd_per_1m=10.0),
    ]
    config = LearningConfig(enabled=True, mu=1.0, level0=False, explore_initial=0.5, seed=4)
    learner = CascadeLearner(config, 2)
    engine = OnlineCascadeEngine(levels, learner, Labeler(sandbox, "imitation"))
    answers = []
    for i in range(40):
        answers.append(engine.process_one(_double(f"d{i}", 'def double(x):\n    """Twice x."""\n')))
    # The small level scores 1.0 on the visible test every time, and is wrong.
    assert learner.policies[0].p_accept(1.0) < 0.2
    assert sum(a.level == 2 for a in answers[-10:]) >= 8
    explored = [a for a in answers if a.explored_levels]
    assert explored, "forced exploration should have sent some accepted answers up"
    for answer in explored:
        assert answer.level == 1 and len(answer.attempts) == 2  # published L1, paid for L2
        assert answer.cost_usd == sum(a.cost_usd for a in answer.attempts)


def test_exemplar_memory_is_bounded_similar_first_and_switchable() -> None:
    config = MemoryConfig(enabled=True, capacity=3, k_examples=1, min_similarity=0.2)
    memory = ExemplarMemory(config)

    def req(i: int, text: str) -> CodeRequest:
        return CodeRequest(id=f"m{i}", prompt=f'def g(x):\n    """{text}"""\n', entry_point="g")

    memory.add(req(0, "fibonacci sequence recursion"), "def g(x):\n    return 0")
    memory.add(req(1, "palindrome reversed string check"), "def g(x):\n    return 1")
    memory.add(req(2, "matrix transpose rows"), "def g(x):\n    return 2")
    shown = memory.similar(req(9, "check whether palindrome"))
    assert [e.request_id for _, e in shown] == ["m1"]
    memory.record_outcome(["m1"], helped=True)
    memory.tick()
    memory.add(req(3, "unrelated topic"), "def g(x):\n    return 3")
    # Full: of the three equally old ones, a useless one goes, the useful one stays.
    assert len(memory) == 3 and memory.n_evicted == 1
    assert {"m1", "m3"} <= set(memory.entries)
    for i in range(4, 12):
        memory.tick()
        memory.add(req(i, f"another topic {i}"), "def g(x):\n    return 4")
    # Age wins in the end: usefulness is discounted by a half-life of `capacity` requests.
    assert "m1" not in memory.entries and memory.n_evicted == 9
    clone = ExemplarMemory(config)
    clone.load_state_dict(json.loads(json.dumps(memory.state_dict())))
    assert clone.state_dict() == memory.state_dict()
    off = ExemplarMemory(MemoryConfig(enabled=False))
    off.add(req(0, "palindrome"), "def g(x):\n    return 1")
    assert len(off) == 0 and off.similar(req(1, "palindrome")) == []


def test_drift_monitor_detects_a_change_and_restores_exactly() -> None:
    rng = random.Random(5)
    monitor = DriftMonitor(delta=0.002)
    detected_at = None
    for t in range(2000):
        error = float(rng.random() < (0.05 if t < 1000 else 0.6))
        if monitor.update(error) and t >= 1000 and detected_at is None:
            detected_at = t
        if t == 1500:
            clone = DriftMonitor.from_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert detected_at is not None and detected_at < 1100
    tail = [float(rng.random() < 0.6) for _ in range(300)]
    restored = DriftMonitor.from_state_dict(monitor.state_dict())
    assert [monitor.update(x) for x in tail] == [restored.update(x) for x in tail]
    assert clone.n_seen == 1501


def test_budget_raises_mu_while_over_budget() -> None:
    config = LearningConfig(enabled=True, mu=10.0, budget_usd_per_request=0.001, level0=False)
    learner = CascadeLearner(config, 2)
    _drive(learner, 50, seed=6)  # every round costs more than 0.001 USD
    assert learner.mu > 10.0


def test_gate_exploration_tries_the_level_it_would_skip() -> None:
    gate = HedgeThresholdPolicy(mu=1.0, thresholds=[0.9], explore="accept", seed=0)
    decisions = [gate.decide(0.1) for _ in range(2000)]
    assert not any(d.would_accept for d in decisions)
    share = sum(d.accept for d in decisions) / len(decisions)
    assert abs(share - gate.p_explore()) < 0.04
    assert abs(gate.p_act_accept(0.1) - gate.p_explore()) < 1e-12


class ReviewerBackend:
    """A scripted reviewer: approves diffs that add tests; `noise` of its verdicts
    are the other label."""

    def __init__(self, name: str, noise: float, seed: int) -> None:
        self.name, self.noise = name, noise
        self.rng = random.Random(seed)

    @property
    def model_name(self) -> str:
        return self.name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            right = "approve" if "tests added" in prompt.messages[-1].content else "request changes"
            wrong = "request changes" if right == "approve" else "approve"
            texts = [wrong if self.rng.random() < self.noise else right for _ in range(params.n)]
            out.append([Completion(t, 100 if i == 0 else 0, 10, 0.0) for i, t in enumerate(texts)])
        return out


def test_level0_learns_to_answer_classification_requests_itself(sandbox: Sandbox) -> None:
    levels = [
        _level(1, ReviewerBackend("small", 0.3, 1), sandbox, k_solutions=3),  # type: ignore[arg-type]
        _level(2, ReviewerBackend("big", 0.0, 2), sandbox),  # type: ignore[arg-type]
    ]
    # mu such that one small-level call (0.00016 USD) weighs 0.25 of a wrong answer.
    config = LearningConfig(enabled=True, mu=0.25 / 0.00016, seed=3, level0_learning_rate=0.5)
    learner = CascadeLearner(config, 2)
    engine = OnlineCascadeEngine(levels, learner, Labeler(sandbox, "imitation"))
    rng = random.Random(7)
    answers = []
    truths = []
    for i in range(300):
        good = rng.random() < 0.5
        filler = " ".join(rng.sample(["refactor", "rename", "loop", "cache", "docs", "api"], 2))
        diff = f"Review this change: {filler}; " + ("tests added" if good else "no tests")
        request = CodeRequest(id=f"c{i}", prompt=diff, label_set=["approve", "request changes"])
        answers.append(engine.process_one(request))
        truths.append("approve" if good else "request changes")
    late = list(zip(answers[-100:], truths[-100:], strict=True))
    at_level0 = [(a, t) for a, t in late if a.level == 0]
    assert len(at_level0) >= 60, "level 0 should answer most requests once it has learned"
    assert sum(a.label == t for a, t in at_level0) / len(at_level0) >= 0.95
    assert all(a.attempts == [] for a, _ in at_level0 if not a.explored_levels)
    # Everything the stream learned survives a snapshot.
    clone = CascadeLearner(config, 2)
    clone.load_state_dict(json.loads(json.dumps(learner.state_dict())))
    assert clone.state_dict() == learner.state_dict()


def test_classification_request_validation() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least two distinct"):
        CodeRequest(id="x", prompt="diff", label_set=["approve", "approve"])
    with pytest.raises(ValidationError, match="not in label_set"):
        CodeRequest(id="x", prompt="diff", label_set=["a", "b"], reference_label="c")
    from streamcascade.tasks import check_request

    with pytest.raises(ValueError, match="entry_point"):
        check_request(CodeRequest(id="x", prompt="def f(): pass"))
    with pytest.raises(ValueError, match="needs label_set"):
        check_request(CodeRequest(id="x", prompt="diff", kind="label"))


def test_top_share_budget_steers_mu_both_ways() -> None:
    def mu_after(share: float) -> float:
        config = LearningConfig(enabled=True, mu=10.0, budget_top_share=share, level0=False)
        learner = CascadeLearner(config, 2)
        _drive(learner, 60, seed=8)  # the top level runs on about half of these rounds
        return learner.mu

    assert mu_after(0.1) > 10.0 > mu_after(0.9)


def test_a_level_with_nothing_to_answer_is_never_accepted(sandbox: Sandbox) -> None:
    levels = [
        _level(
            1,
            ScriptedBackend("mute", ["I cannot help with that."], []),
            sandbox,
            t_test_generations=0,
        ),
        _level(2, ScriptedBackend("big", [RIGHT], []), sandbox, t_test_generations=0),
    ]
    config = LearningConfig(enabled=True, mu=1.0, level0=False, explore_initial=0.5)
    learner = CascadeLearner(config, 2)
    learner.policies[0].log_weights = [0.0] + [-50.0] * (len(config.thresholds) - 1)  # accept all
    engine = OnlineCascadeEngine(levels, learner, Labeler(sandbox, "imitation"))
    for i in range(5):
        # A prose request: a refusal leaves no program at all.
        answer = engine.process_one(_double(f"n{i}", "Write double(x) that returns twice x."))
        assert answer.level == 2 and "2 * x" in answer.code and not answer.explored_levels


def test_feedback_on_a_classification_answer_teaches_the_classification_track() -> None:
    learner = CascadeLearner(LearningConfig(enabled=True), 2)
    features = {"w": 1.0}
    learner._remember("c0", Pending(features, -1, True, 0.9, 0.5, False))
    learner._remember("c1", Pending(features, 0, True, 0.8, 0.5, False))
    generation = [list(p.log_weights) for p in learner.policies]
    answer0, votes = list(learner.answer0.log_weights), list(learner.class_policies[0].log_weights)
    assert learner.learn_one(Feedback(id="c0", passed=False))
    assert learner.learn_one(Feedback(id="c1", passed=False))
    assert learner.answer0.log_weights != answer0
    assert learner.class_policies[0].log_weights != votes
    assert [p.log_weights for p in learner.policies] == generation


def test_a_replica_learns_the_same_from_another_replicas_events(sandbox: Sandbox) -> None:
    small = ScriptedBackend("small", [WRONG], [])
    big = ScriptedBackend("big", [RIGHT], [])
    levels = [
        _level(1, small, sandbox, t_test_generations=0),
        _level(2, big, sandbox, t_test_generations=0, price_in_usd_per_1m=10.0),
    ]
    config = LearningConfig(enabled=True, mu=1.0, seed=4, memory=MemoryConfig(enabled=True))
    serving = CascadeLearner(config, 2)
    engine = OnlineCascadeEngine(levels, serving, Labeler(sandbox, "imitation"))
    for i in range(30):
        engine.process_one(_double(f"e{i}", 'def double(x):\n    """Twice x."""\n'))
    events = [json.dumps(event) for event in serving.take_events()]  # as over Kafka
    assert serving.take_events() == []
    replica = CascadeLearner(config, 2)
    for event in events:
        replica.apply_event(json.loads(event))
    assert replica.n_events_applied == 30
    ours, theirs = serving.state_dict(), replica.state_dict()
    # Acting (sampling decisions) moves random states and counters; learning is the same.
    for key in ("mu", "router", "next_cost", "above_level1_cost", "budget_mean", "memory"):
        assert theirs[key] == ours[key], key
    for mine, other in zip(ours["policies"] + [ours["gate"]],
                           theirs["policies"] + [theirs["gate"]], strict=True):  # fmt: skip
        assert other["log_weights"] == mine["log_weights"]
    # It remembers the other replica's answers, so Feedback on them teaches it too.
    published_below_top = [e for e in map(json.loads, events) if e["published_position"] < 1]
    assert published_below_top
    request_id = published_below_top[-1]["trace"]["request"]["id"]
    assert replica.learn_one(Feedback(id=request_id, passed=False))
