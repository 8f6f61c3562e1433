"""The batch-first engine and what it does when a backend fails (scripted
backends; the real server and broker runs are in test_openai_server.py)."""

from __future__ import annotations

import zlib

import pytest

from streamcascade.backends.base import BackendError, Completion, GenerationParams, Prompt
from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.cascade import CascadeEngine, Level
from streamcascade.cascade.answer import RequestFailed
from streamcascade.config import LevelConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest

RIGHT = "```python\ndef double(x):\n    return 2 * x\n```"
WRONG = "```python\ndef double(x):\n    return x + 2\n```"
BROKEN = "```python\ndef double(x):\n    return x +\n```"
TESTS = "```python\nassert double(3) == 6\nassert double(0) == 0\n```"


def request(i: int) -> CodeRequest:
    return CodeRequest(
        id=f"r{i}",
        prompt='def double(x):\n    """Twice x."""\n',
        entry_point="double",
        visible_tests=["assert double(2) == 4"] if i % 3 else [],
    )


class ById:
    """Deterministic per request: which answer a request gets depends on its id
    and on this model's `skill`. Records every call's batch size."""

    def __init__(self, name: str, skill: int, fail: bool = False, unknown: str = "") -> None:
        self.name, self.skill, self.fail, self.unknown = name, skill, fail, unknown
        self.batches: list[int] = []

    @property
    def model_name(self) -> str:
        return self.name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        self.batches.append(len(prompts))
        if self.fail:
            raise BackendError(f"{self.name}: connection refused")
        out = []
        for prompt in prompts:
            if prompt.request_id == self.unknown:
                raise KeyError(f"{self.name} has no recording of {prompt.request_id}")
            roll = zlib.crc32(prompt.request_id.encode()) % 4
            if prompt.purpose == "tests":
                texts = [TESTS] * params.n
            else:
                texts = [RIGHT if roll < self.skill else (WRONG, BROKEN)[roll % 2]] * params.n
            out.append([Completion(t, 50 if j == 0 else 0, 10, 0.0) for j, t in enumerate(texts)])
        return out


def level(index: int, backend: ById, sandbox: Sandbox, **fields: object) -> Level:
    config = {
        "name": backend.name,
        "backend": ReplayBackendConfig(format="ladder", path="unused.jsonl"),
        "price_in_usd_per_1m": float(index),
        "price_out_usd_per_1m": float(index),
        **fields,
    }
    return Level(index, LevelConfig.model_validate(config), backend, sandbox)  # type: ignore[arg-type]


def ladder(sandbox: Sandbox, **fail: bool) -> tuple[list[ById], list[Level]]:
    backends = [ById("small", 1, fail.get("small", False)),
                ById("mid", 2, fail.get("mid", False)),
                ById("big", 4, fail.get("big", False))]  # fmt: skip
    levels = [
        level(1, backends[0], sandbox, t_test_generations=1),
        level(2, backends[1], sandbox, t_test_generations=1),
        level(3, backends[2], sandbox, threshold=0.0),
    ]
    return backends, levels


def test_a_batch_gets_the_answers_of_one_at_a_time_in_few_backend_calls(
    sandbox: Sandbox,
) -> None:
    requests = [request(i) for i in range(12)]
    _, alone = ladder(sandbox)
    one_by_one = [CascadeEngine(alone).process_one(r) for r in requests]
    backends, levels = ladder(sandbox)
    batched = CascadeEngine(levels).process_many(requests)
    assert all(not isinstance(b, BaseException) for b in batched)
    for single, many in zip(one_by_one, batched, strict=True):
        assert not isinstance(many, BaseException)
        assert (many.id, many.level, many.code, many.cost_usd) == (
            single.id, single.level, single.code, single.cost_usd
        )  # fmt: skip
        assert [a.model_dump(exclude={"generation_s", "sandbox_s"}) for a in many.attempts] == [
            a.model_dump(exclude={"generation_s", "sandbox_s"}) for a in single.attempts
        ]
    # Each level step was one call for solutions and one for tests, for every
    # request waiting there.
    assert backends[0].batches == [12, 12]
    n_top = sum(a.level == 3 for a in one_by_one)
    assert backends[2].batches == [n_top, n_top]
    assert len({a.level for a in one_by_one}) > 1  # the batch really split


def test_a_failed_level_passes_the_request_on_and_the_answer_says_so(
    sandbox: Sandbox,
) -> None:
    _, levels = ladder(sandbox, small=True)
    answers = CascadeEngine(levels).process_many([request(1), request(2)])
    for answer in answers:
        assert not isinstance(answer, BaseException)
        assert answer.level in (2, 3)
        assert [(f.level, f.name) for f in answer.failed_levels] == [(1, "small")]
        assert "connection refused" in answer.failed_levels[0].reason
        assert answer.attempts[0].level == 2


def test_a_failed_top_goes_to_the_fallback_or_is_a_backend_unavailable_dead_letter(
    sandbox: Sandbox,
) -> None:
    requests = [request(i) for i in range(6)]
    _, levels = ladder(sandbox, big=True)
    results = CascadeEngine(levels).process_many(requests)
    up = [r for r in results if isinstance(r, BaseException)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert up and all(isinstance(r, RequestFailed) for r in up)
    assert all(str(r).startswith("backend_unavailable: level 3 'big'") for r in up)
    assert all(a.level < 3 and not a.failed_levels for a in answered)

    fallback = level(4, ById("hosted", 4), sandbox, threshold=0.0)
    _, levels = ladder(sandbox, big=True)
    results = CascadeEngine(levels, fallback=fallback).process_many(requests)
    assert not any(isinstance(r, BaseException) for r in results)
    served = [r for r in results if not isinstance(r, BaseException) and r.level == 4]
    assert len(served) == len(up)
    assert all(r.model == "hosted" and r.failed_levels[0].name == "big" for r in served)


def test_one_requests_own_error_fails_it_alone(sandbox: Sandbox) -> None:
    backends, levels = ladder(sandbox)
    backends[0].unknown = "r4"
    results = CascadeEngine(levels).process_many([request(i) for i in range(6)])
    assert isinstance(results[4], KeyError)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 4)
    with pytest.raises(KeyError):
        CascadeEngine(levels).process_one(request(4))


def _hedge(levels: list[Level], sandbox: Sandbox, fallback: Level | None = None) -> tuple:
    from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
    from streamcascade.config import LearningConfig
    from streamcascade.learning.learner import CascadeLearner

    learner = CascadeLearner(LearningConfig(enabled=True, level0=False, seed=5), len(levels))
    engine = OnlineCascadeEngine(levels, learner, Labeler(sandbox, "imitation"), fallback=fallback)
    return engine, learner


def test_the_hedge_policy_batches_on_the_one_loop_and_a_failed_level_passes_it_on(
    sandbox: Sandbox,
) -> None:
    """The Hedge policy drives the same loop as the fixed one: a batch is one
    backend call per level step, and a failed level sends requests up."""
    requests = [request(i) for i in range(9)]
    backends, levels = ladder(sandbox)
    engine, learner = _hedge(levels, sandbox)
    answers = engine.process_many(requests)
    assert all(not isinstance(a, BaseException) for a in answers)
    assert backends[0].batches == [9, 9]  # every request starts at level 1, in one call
    assert learner.n_requests == 9
    # Every answer records the Hedge decisions that led to it.
    assert all(a.route and a.route[0].policy == "hedge" for a in answers if a.level < 3)

    backends, levels = ladder(sandbox, small=True)
    engine, learner = _hedge(levels, sandbox)
    answers = engine.process_many(requests)
    for answer in answers:
        assert not isinstance(answer, BaseException)
        assert [f.name for f in answer.failed_levels] == ["small"] and answer.level in (2, 3)
    assert learner.n_requests == 9


def test_under_the_hedge_policy_a_failed_top_goes_to_the_fallback(sandbox: Sandbox) -> None:
    requests = [request(i) for i in range(6)]
    fallback = level(4, ById("hosted", 4), sandbox, threshold=0.0)
    _, levels = ladder(sandbox, big=True)
    engine, learner = _hedge(levels, sandbox, fallback)
    results = engine.process_many(requests)
    assert not any(isinstance(r, BaseException) for r in results)
    served = [r for r in results if not isinstance(r, BaseException) and r.level == 4]
    assert served and all(r.model == "hosted" for r in served)
    # The fallback's answers teach no threshold; the others do.
    assert learner.n_requests == len(requests) - len(served)


def test_the_policy_is_an_entry_point_and_an_unknown_one_lists_the_installed() -> None:
    from pydantic import ValidationError

    from streamcascade.cascade.drivers import policy_names
    from streamcascade.config import LearningConfig

    assert {"hedge", "router"} <= set(policy_names())
    with pytest.raises(ValidationError, match="unknown policy 'bandit': installed are hedge"):
        LearningConfig(policy="bandit")
