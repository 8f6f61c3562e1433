"""Any ladder: the models, their order and prices named by the user; bad rows
are dead letters, never a crash (a ladder written here, so no shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamcascade.backends import GenerationParams, Prompt, UnknownTaskError
from streamcascade.backends.replay import LadderReplayBackend
from streamcascade.evaluation import grade_many, reference_test
from streamcascade.ladder import (
    ladder_config,
    parse_ladder_spec,
    parse_price,
    problems_file,
    recorded_requests,
)
from streamcascade.sandbox import Sandbox

PROMPT = 'def inc(x):\n    """Add one."""\n'
# MBPP style: the test calls check itself, with the function its asserts name.
TEST = "\ndef check(candidate):\n    assert inc(1) == 2\ncheck(inc)\n"


def _row(task: str, solution: str | None = "def inc(x):\n    return x + 1\n") -> dict:
    row = {"task_id": task, "prompt": PROMPT, "entry_point": "inc", "test": TEST,
           "given_tests": ["assert inc(1) == 2"]}  # fmt: skip
    if solution is not None:
        row["solution"] = solution
    return row


def _ladder(tmp_path: Path) -> Path:
    (tmp_path / "problems.jsonl").write_text(
        "\n".join(json.dumps(_row(f"t{i}", None)) for i in range(4))
        + '\n{"task_id": "t9", "prompt": "x"}\nnot json\n'
    )
    (tmp_path / "small.jsonl").write_text(
        "\n".join(json.dumps(_row(f"t{i}")) for i in range(3))  # no row for t3
        + "\n"
        + json.dumps({"task_id": "t2"})
        + "\n"  # a second t2 row, without a solution
    )
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(_row(f"t{i}")) for i in range(4)))
    return tmp_path


def test_inline_and_yaml_specs_name_models_order_and_prices(tmp_path: Path) -> None:
    inline = parse_ladder_spec("small=0.3/0.3,big=10/30")
    assert [m.name for m in inline.models] == ["small", "big"]
    assert inline.models[1].price_out_usd_per_1m == 30.0
    path = tmp_path / "spec.yaml"
    path.write_text("models:\n  - {name: small, file: s.jsonl, price_in_usd_per_1m: 1, "
                    "price_out_usd_per_1m: 2}\n")  # fmt: skip
    spec = parse_ladder_spec(str(path))
    assert spec.models[0].filename == "s.jsonl"
    assert parse_price("1.5/2") == (1.5, 2.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("small=0.3", "NAME=PRICE_IN/PRICE_OUT"),
        ("missing.yaml", "not found"),
        ("small=-1/2", "greater than or equal to 0"),
    ],
)
def test_a_bad_spec_is_a_one_line_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ladder_spec(value)


def test_a_missing_model_file_names_what_is_there(tmp_path: Path) -> None:
    directory = _ladder(tmp_path)
    with pytest.raises(ValueError, match=r"no huge\.jsonl .*found: big\.jsonl, problems\.jsonl"):
        ladder_config(directory, parse_ladder_spec("small=1/1,huge=2/2"))


def test_bad_and_unrecorded_rows_are_dead_letters(tmp_path: Path) -> None:
    directory = _ladder(tmp_path)
    spec = parse_ladder_spec("small=1/1,big=2/2")
    assert problems_file(directory, spec).name == "problems.jsonl"
    requests, dead = recorded_requests(directory, spec)
    # t2's second row lacks a solution: the backend keeps the first, good one.
    assert [r.id for r in requests] == ["t0", "t1", "t2"]
    reasons = sorted(d.reason for d in dead)
    assert any("lacks entry_point" in r for r in reasons)
    assert any(r.startswith("not JSON") for r in reasons)
    assert any("small has no recording for task 't3': no row for it" in r for r in reasons)
    backend = LadderReplayBackend(directory / "small.jsonl", "small")
    with pytest.raises(UnknownTaskError, match="no row for it"):
        backend.generate([Prompt("t3", "solutions", ())], GenerationParams())


def test_a_recording_without_a_solution_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"task_id": "t0"}) + "\n{oops\n")
    backend = LadderReplayBackend(path, "m")
    assert not backend.has("t0")
    with pytest.raises(UnknownTaskError, match=r"m\.jsonl:1 has no solution string"):
        backend.generate([Prompt("t0", "solutions", ())], GenerationParams())


def test_reference_tests_that_call_check_themselves_run_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    requests, _ = recorded_requests(_ladder(tmp_path), parse_ladder_spec("big=1/1"))
    request = requests[0]
    assert reference_test(request) == TEST
    right, wrong = grade_many(
        sandbox,
        [(request, "def inc(x):\n    return x + 1\n"), (request, "def inc(x):\n    return x\n")],
    )
    assert right is True and wrong is False


def _apps_row(task: str, model_code: str | None = None, starter: str = "") -> dict:
    row: dict = {
        "id": task,
        "description": "Print the sum of the two integers on the input.",
        "difficulty": "introductory",
        "sample_io": [{"input": "1 2\n", "output": ["3\n"]}],
        "test_list": "[{'input': '5 5\\n', 'output': ['10\\n']}, {'input': '0 -1', 'output': [-1]}]",
        "starter_code": starter,
    }
    if model_code is not None:
        row.update({"task_id": task, "source_codes": repr([model_code]),
                    "prompt_tokens": "[100]", "completion_tokens": "[20]"})  # fmt: skip
    return row


def test_an_apps_ladder_replays_programs_with_their_recorded_tokens(tmp_path: Path) -> None:
    right = "a, b = map(int, input().split())\nprint(a + b)\n"
    wrong = "print(0)\n"
    (tmp_path / "problems.jsonl").write_text(
        "\n".join(json.dumps(_apps_row(t)) for t in ("a1", "a2"))
        + "\n" + json.dumps({"id": "a3", "description": "x", "test_list": "not a list"}) + "\n"
    )  # fmt: skip
    (tmp_path / "small.jsonl").write_text(
        json.dumps(_apps_row("a1", wrong)) + "\n" + json.dumps(_apps_row("a2", right)) + "\n"
    )
    (tmp_path / "big.jsonl").write_text(
        json.dumps(_apps_row("a1", right)) + "\n" + json.dumps(_apps_row("a2", right)) + "\n"
    )
    spec = parse_ladder_spec("small=1/2,big=10/30")
    requests, dead = recorded_requests(tmp_path, spec)
    assert [r.id for r in requests] == ["a1", "a2"] and all(r.kind == "program" for r in requests)
    assert (
        requests[0].examples[0].output == "3\n" and requests[0].reference_examples[1].output == "-1"
    )
    assert [d.source for d in dead] == ["problems.jsonl:3"] and "test_list" in dead[0].reason
    backend = LadderReplayBackend(tmp_path / "small.jsonl")
    [[completion]] = backend.generate([Prompt("a1", "solutions", ())], GenerationParams())
    assert completion.text == wrong and (completion.tokens_in, completion.tokens_out) == (100, 20)
    from streamcascade.cascade import CascadeEngine
    from streamcascade.tasks import grade_all

    with Sandbox(ladder_config(tmp_path, spec).sandbox) as box:
        engine = CascadeEngine.from_config(ladder_config(tmp_path, spec), box)
        answers = [engine.process_one(r) for r in requests]
        assert [a.level for a in answers] == [2, 1]  # a1's small answer fails its example
        assert grade_all(box, [(r, a.code) for r, a in zip(requests, answers, strict=True)]) == [
            True, True
        ]  # fmt: skip
