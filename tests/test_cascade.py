"""The cascade's control flow and accounting, with scripted backends (the real
models are in test_real_models.py, the real recordings in test_replay.py)."""

from __future__ import annotations

from streamcascade.backends.base import Completion, GenerationParams, Prompt
from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.cascade import CascadeEngine, Level
from streamcascade.config import LevelConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest

REQUEST = CodeRequest(
    id="t1",
    prompt='def double(x):\n    """Twice x.\n    >>> double(2)\n    4\n    """\n',
    entry_point="double",
    visible_tests=["assert double(2) == 4"],
)


class ScriptedBackend:
    """Answers every solution prompt with `solutions` and every test prompt with `tests`."""

    def __init__(self, name: str, solutions: list[str], tests: list[str]) -> None:
        self.name = name
        self.solutions = solutions
        self.tests = tests
        self.prompts: list[Prompt] = []

    @property
    def model_name(self) -> str:
        return self.name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        self.prompts.extend(prompts)
        out = []
        for prompt in prompts:
            texts = self.solutions if prompt.purpose == "solutions" else self.tests
            out.append(
                [
                    Completion(t, tokens_in=100 if i == 0 else 0, tokens_out=10, seconds=0.01)
                    for i, t in enumerate(texts[: params.n])
                ]
            )
        return out


def _level(index: int, backend: ScriptedBackend, sandbox: Sandbox, **overrides: object) -> Level:
    fields: dict[str, object] = {
        "name": backend.name,
        "backend": ReplayBackendConfig(format="ladder", path="unused.jsonl"),
        "price_in_usd_per_1m": 1.0,
        "price_out_usd_per_1m": 2.0,
    }
    fields.update(overrides)
    return Level(index, LevelConfig.model_validate(fields), backend, sandbox)  # type: ignore[arg-type]


RIGHT = "```python\ndef double(x):\n    return 2 * x\n```"
WRONG = "```python\ndef double(x):\n    return x + 2\n```"
TESTS = "```python\nassert double(3) == 6\nassert double(0) == 0\n```"


def test_small_level_answers_when_its_best_solution_passes(sandbox: Sandbox) -> None:
    small = ScriptedBackend("small", [RIGHT], [TESTS])
    big = ScriptedBackend("big", [RIGHT], [])
    engine = CascadeEngine(
        [_level(1, small, sandbox, t_test_generations=1), _level(2, big, sandbox, threshold=0.0)]
    )
    answer = engine.process_one(REQUEST)
    assert answer.level == 1 and answer.model == "small"
    assert "return 2 * x" in answer.code
    [attempt] = answer.attempts
    assert attempt.n_tests == 3 and attempt.n_generated_tests == 2  # the visible test joined
    assert attempt.score == 1.0 and attempt.accepted
    assert big.prompts == []


def test_failing_level_escalates_and_every_attempt_is_paid(sandbox: Sandbox) -> None:
    # double(2) == 4 holds for x + 2 too: only the generated tests catch it.
    small = ScriptedBackend("small", [WRONG], [TESTS])
    big = ScriptedBackend("big", [RIGHT], [])
    engine = CascadeEngine([_level(1, small, sandbox), _level(2, big, sandbox, threshold=0.0)])
    answer = engine.process_one(REQUEST)
    assert answer.level == 2 and "2 * x" in answer.code
    first, second = answer.attempts
    assert not first.accepted and abs(first.score - 1 / 3) < 1e-9
    assert first.tests is not None and first.tests.first_failure is not None
    # 100 tokens in and 10 out per prompt; the small level asked twice (solutions, tests).
    assert (first.tokens_in, first.tokens_out) == (200, 20)
    assert abs(first.cost_usd - (200 * 1.0 + 20 * 2.0) / 1e6) < 1e-12
    assert abs(answer.cost_usd - first.cost_usd - second.cost_usd) < 1e-12
    assert answer.tokens_in == first.tokens_in + second.tokens_in


def test_top_level_always_answers_even_when_it_fails(sandbox: Sandbox) -> None:
    big = ScriptedBackend("big", [WRONG], ["assert double(5) == 10"])
    engine = CascadeEngine([_level(1, big, sandbox, threshold=1.0)])
    answer = engine.process_one(REQUEST)
    assert answer.level == 1 and not answer.attempts[0].accepted
    assert "x + 2" in answer.code


def test_best_of_k_is_chosen_by_pass_rate(sandbox: Sandbox) -> None:
    small = ScriptedBackend("small", [WRONG, "not code at all", RIGHT], [TESTS])
    engine = CascadeEngine([_level(1, small, sandbox, k_solutions=3, temperature=0.8)])
    answer = engine.process_one(REQUEST)
    assert answer.attempts[0].best_solution_index == 2
    assert "2 * x" in answer.code


def test_empty_test_pool_never_accepts_unless_configured(sandbox: Sandbox) -> None:
    request = REQUEST.model_copy(update={"visible_tests": []})
    small = ScriptedBackend("small", [RIGHT], ["no asserts here"])
    big = ScriptedBackend("big", [RIGHT], [])
    engine = CascadeEngine([_level(1, small, sandbox), _level(2, big, sandbox, threshold=0.0)])
    assert engine.process_one(request).level == 2
    trusting = CascadeEngine(
        [_level(1, small, sandbox, accept_without_tests=True), _level(2, big, sandbox)]
    )
    assert trusting.process_one(request).level == 1
