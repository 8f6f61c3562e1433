"""Task kinds through the cascade with scripted backends and the real sandbox:
whole programs on stdin/stdout, functions given by input/output examples,
imitation between programs, grading, metadata carried through, bad requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamcascade.backends.base import Completion, GenerationParams, Prompt
from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.cascade import CascadeEngine, Level
from streamcascade.cascade.labeler import Labeler
from streamcascade.config import LevelConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest, IOExample
from streamcascade.service.codec import Rejected, parse_request
from streamcascade.tasks import Answer, grade_all, task_kind

SUM = "```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
DIFF = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
ABS_SUM = "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```"
IO_TESTS = "```input\n2 3\n```\n```output\n5\n```\n```input\n-1 1\n```\n```output\n0\n```"

PROGRAM = CodeRequest(
    id="p1",
    kind="program",
    prompt="Read two integers a and b and print their sum.",
    examples=[IOExample(input="1 2\n", output="3\n")],
    reference_examples=[
        IOExample(input="-5 7\n", output="2\n"),
        IOExample(input="0 0", output="0"),
    ],
    metadata={"ticket": "T-1"},
)


class Scripted:
    """One answer for solution prompts, one for test prompts; records prompts."""

    def __init__(self, name: str, solution: str, tests: str = "") -> None:
        self.name, self.solution, self.tests = name, solution, tests
        self.prompts: list[Prompt] = []

    @property
    def model_name(self) -> str:
        return self.name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        self.prompts.extend(prompts)
        return [
            [Completion(self.solution if p.purpose == "solutions" else self.tests, 40, 20, 0.0)]
            * params.n
            for p in prompts
        ]


def level(index: int, backend: Scripted, sandbox: Sandbox, **fields: object) -> Level:
    config = {
        "name": backend.name,
        "backend": ReplayBackendConfig(format="ladder", path="unused.jsonl"),
        "t_test_generations": 0,
        "price_in_usd_per_1m": float(index),
        **fields,
    }
    return Level(index, LevelConfig.model_validate(config), backend, sandbox)  # type: ignore[arg-type]


def test_a_program_request_climbs_until_a_program_passes_its_examples(sandbox: Sandbox) -> None:
    small, big = Scripted("small", DIFF), Scripted("big", SUM)
    engine = CascadeEngine([level(1, small, sandbox), level(2, big, sandbox, threshold=0.0)])
    answer = engine.process_one(PROGRAM)
    assert isinstance(answer, CascadeAnswer)
    assert answer.level == 2 and answer.kind == "program"
    assert answer.code.startswith("import sys") and "print(a + b)" in answer.code
    assert answer.attempts[0].score == 0.0 and answer.attempts[0].tests is not None
    assert answer.metadata == {"ticket": "T-1"}
    # The prompt asked for a whole program; the examples shown, the stop kept the script.
    user = small.prompts[0].messages[-1].content
    assert "standard input" in user and "1 2" in user
    assert task_kind("program").grade(sandbox, PROGRAM, Answer(answer.code)) is True
    assert grade_all(sandbox, [(PROGRAM, "print(0)\n"), (PROGRAM, answer.code)]) == [False, True]


def test_generated_input_output_tests_gate_a_program(sandbox: Sandbox) -> None:
    request = PROGRAM.model_copy(update={"examples": []})
    # Without examples, the level's own tests decide: the difference fails them.
    small = Scripted("small", DIFF, IO_TESTS)
    big = Scripted("big", SUM)
    engine = CascadeEngine(
        [level(1, small, sandbox, t_test_generations=1), level(2, big, sandbox, threshold=0.0)]
    )
    answer = engine.process_one(request)
    assert answer.level == 2
    first = answer.attempts[0]
    assert first.n_generated_tests == 2 and first.score == 0.0
    right = Scripted("small", SUM, IO_TESTS)
    engine = CascadeEngine(
        [level(1, right, sandbox, t_test_generations=1), level(2, big, sandbox, threshold=0.0)]
    )
    assert engine.process_one(request).level == 1


def test_imitation_compares_two_programs_outputs_on_probe_inputs(sandbox: Sandbox) -> None:
    labeler = Labeler(sandbox, "imitation")
    kind = task_kind("program")
    high = Answer(kind.extract_program(PROGRAM, SUM))
    same = Answer("print(sum(map(int, input().split())))\n")
    other = Answer(kind.extract_program(PROGRAM, ABS_SUM))
    tests = kind.visible_tests(PROGRAM.model_copy(update={"examples": [
        IOExample(input="1 2", output="3"), IOExample(input="-4 2", output="-2")]}))  # fmt: skip
    assert labeler.imitation(PROGRAM, same.code, high.code, tests) is True
    # Agrees on 1 2, not on -4 2: the probes tell them apart.
    assert labeler.imitation(PROGRAM, other.code, high.code, tests) is False
    assert labeler.imitation(PROGRAM, "", high.code, tests) is False


def test_an_io_function_request_is_specified_by_examples(sandbox: Sandbox) -> None:
    request = CodeRequest(
        id="f1",
        kind="io_function",
        prompt="Return the larger of a and b.",
        entry_point="bigger",
        starter_code="def bigger(a, b):\n\t",
        examples=[IOExample(input=[1, 2], output=2)],
        reference_examples=[IOExample(input=[5, -1], output=5), IOExample(input=[-2, 4], output=4)],
    )
    wrong = Scripted("small", "```python\ndef bigger(a, b):\n    return a\n```")
    right = Scripted("big", "```python\ndef bigger(a, b):\n    return max(a, b)\n```")
    engine = CascadeEngine([level(1, wrong, sandbox), level(2, right, sandbox, threshold=0.0)])
    answer = engine.process_one(request)
    assert answer.level == 2 and answer.attempts[0].score == 0.0
    assert wrong.prompts[0].assistant_prefix == "```python\ndef bigger(a, b):\n"
    assert "assert bigger(1, 2) == 2" in wrong.prompts[0].messages[-1].content
    kind = task_kind("io_function")
    assert kind.grade(sandbox, request, Answer(answer.code)) is True
    assert kind.grade(sandbox, request, Answer("def bigger(a, b):\n    return a\n")) is False


def test_bad_requests_of_each_kind_are_dead_letters_with_reasons(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    def rejected(record: dict[str, object]) -> Rejected:
        parsed = parse_request(json.dumps(record).encode(), 100_000)
        assert isinstance(parsed, Rejected), parsed
        return parsed

    unknown = rejected({"id": "a", "prompt": "p", "kind": "sql"})
    assert unknown.error_type == "Unsupported" and "installed: " in unknown.reason
    no_entry = rejected({"id": "b", "prompt": "p"})
    assert "needs entry_point" in no_entry.reason
    keyword = rejected({"id": "c", "prompt": "p", "entry_point": "class"})
    assert "needs entry_point" in keyword.reason
    bad_io = rejected({"id": "d", "prompt": "p", "kind": "program",
                       "examples": [{"input": [1], "output": 2}]})  # fmt: skip
    assert "stdin text" in bad_io.reason
    # A newer producer's fields are kept and passed through.
    newer = parse_request(
        json.dumps({"id": "e", "prompt": "p", "kind": "program", "schema_version": 2,
                    "priority": "high"}).encode(), 100_000,
    )  # fmt: skip
    assert isinstance(newer, CodeRequest) and newer.metadata == {"priority": "high"}
    # The engine checks too, before any model runs: the failure is the request's own.
    engine = CascadeEngine([level(1, Scripted("only", SUM), sandbox, threshold=0.0)])
    [result] = engine.process_many([CodeRequest(id="f", prompt="p")])
    assert isinstance(result, ValueError) and "needs entry_point" in str(result)


@pytest.mark.parametrize("kind", ["function", "io_function", "program", "label"])
def test_every_builtin_kind_is_an_entry_point(kind: str) -> None:
    assert task_kind(kind).name == kind


def test_the_shipped_program_problems_are_valid_requests() -> None:
    from streamcascade.tasks import check_request

    path = Path(__file__).resolve().parents[1] / "configs" / "tasks" / "programs.jsonl"
    requests = [CodeRequest.model_validate_json(line) for line in path.read_text().splitlines()]
    assert len(requests) == 20 and len({r.id for r in requests}) == 20
    for request in requests:
        check_request(request)
        assert request.kind == "program" and request.examples and request.reference_examples


@pytest.mark.slow
def test_program_requests_through_run_and_the_kafka_service(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Recorded programs (the ladder format's APPS rows) answer program requests
    through `run` and through `serve` on a real broker; a bad one is a dead letter."""
    import threading
    import time

    import yaml

    from streamcascade.cascade.build import build_engine
    from streamcascade.cli import main
    from streamcascade.config import AppConfig
    from streamcascade.service.broker import LocalKafka
    from streamcascade.service.tools import feed, follow
    from streamcascade.service.worker import CascadeService, ensure_topics

    solutions = {"p1": SUM.strip("`").removeprefix("python\n"), "p2": "print(0)\n"}
    for name, rows in (("small", solutions), ("big", {k: solutions["p1"] for k in solutions})):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"task_id": k, "solution": v}) + "\n" for k, v in rows.items())
        )
    levels = [
        {"name": n, "backend": {"kind": "replay", "format": "ladder",
                                "path": str(tmp_path / f"{n}.jsonl")},
         "t_test_generations": 0, "threshold": 1.0 if n == "small" else 0.0}
        for n in ("small", "big")
    ]  # fmt: skip
    requests = [PROGRAM.model_copy(update={"id": i}) for i in ("p1", "p2")]
    lines = [r.model_dump_json() for r in requests] + [
        json.dumps(
            {"id": "p3", "kind": "program", "prompt": "x", "examples": [{"input": 1, "output": 2}]}
        )
    ]
    inputs = tmp_path / "requests.jsonl"
    inputs.write_text("\n".join(lines) + "\n")
    config_path = tmp_path / "cascade.yaml"
    config_path.write_text(yaml.safe_dump({"levels": levels}))
    out, dead = tmp_path / "answers.jsonl", tmp_path / "dead.jsonl"
    main(["run", "--config", str(config_path), "--input", str(inputs), "--out", str(out),
          "--dead-letters", str(dead), "--no-progress"])  # fmt: skip
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["id"], a["level"], a["kind"]) for a in answers] == [
        ("p1", 1, "program"), ("p2", 2, "program")
    ]  # fmt: skip
    assert answers[0]["metadata"] == {"ticket": "T-1"}
    [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert "stdin text" in letter["reason"]

    with LocalKafka(tmp_path / "kafka", partitions=1) as broker:
        kafka = {"bootstrap_servers": [broker.bootstrap_servers], "instance_id": "t0",
                 "partitions": 1}  # fmt: skip
        config = AppConfig.model_validate({"levels": levels, "kafka": kafka})
        ensure_topics(config.kafka)
        feed(config.kafka, [line.encode() for line in lines])
        service = CascadeService(config.kafka, build_engine(config, sandbox).engine)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            deadline = time.monotonic() + 120
            while service.stats.n_answers + service.stats.n_dead_letters < 3:
                assert time.monotonic() < deadline, service.stats.line()
                time.sleep(0.1)
        finally:
            service.stop()
            thread.join(60)
        topics = config.kafka.topics
        served = [json.loads(r.value or b"") for r in follow(config.kafka, topics.answers,
                                                             idle_timeout_s=3)]  # fmt: skip
        assert sorted((a["id"], a["level"]) for a in served) == [("p1", 1), ("p2", 2)]
        [record] = list(follow(config.kafka, topics.deadletter, idle_timeout_s=3))
        assert "stdin text" in record.headers["reason"].decode()
