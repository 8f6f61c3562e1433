"""Verdicts a program cannot forge (issue 13, item 2): the parent splits each
assert into the calls the child evaluates and the comparison it makes itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade.config import SandboxConfig
from streamcascade.evaluation import grade_many
from streamcascade.learning.imitation import agreement
from streamcascade.sandbox import Sandbox
from streamcascade.sandbox.verdicts import BadValue, decode_value, judge, plan_test
from streamcascade.schemas import CodeRequest

# -- splitting, in the parent alone ---------------------------------------------


@pytest.mark.parametrize(
    ("test", "holes"),
    [
        ("assert f(1) == 2", ["f(1)"]),
        ("assert 2 == f(1), 'message'", ["f(1)"]),
        ("assert not f([])", ["f([])"]),
        ("assert f('a') in ['a', 'b']", ["f('a')"]),
        ("assert abs(f(1.5) - 2.25) < 1e-06", ["f(1.5)"]),
        ("import math\nassert math.isclose(f(2), 4.0, rel_tol=0.001)", ["f(2)"]),
        ("assert isinstance(f(1), (int, float)) and type(f(2)) is str", ["f(1)", "f(2)"]),
        ("assert f(1) == EXPECTED", ["f(1)"]),
        ("assert set(f([1, 2])) == set([2, 1])", ["f([1, 2])"]),
        ("assert f(1)[0] == 3", ["f(1)"]),
        ("assert f(1) == 2 and f(2) == 3", ["f(1)", "f(2)"]),
        ("assert f(1) is None", ["f(1)"]),
    ],
)
def test_common_assert_shapes_split_into_holes(test: str, holes: list[str]) -> None:
    plan = plan_test(test)
    assert plan is not None
    assert plan.holes == holes


@pytest.mark.parametrize(
    "test",
    [
        "for x in range(3): assert f(x) == x",
        "x = f(1)\nassert x == 2",
        "assert all(f(x) == x for x in range(3))",
        "assert f(lambda y: y == 1)",
        # Anything but the program's function on literal data would be
        # evaluated where the program has had the run of the interpreter.
        "assert math.isclose(f(2), 4.0)",  # math: the program's, not imported by the test
        "from math import isclose\nassert isclose(f(1), 1)",
        "assert callable(f(1))",
        "assert f(float('inf')) == 1",
        "assert f(x) == 1",
        "assert f(1).lower() == 'a'",
        "import numpy as np\nassert np.allclose(f(1), 1)",
        "f(1)",
        "assert True",
        "assert (",
    ],
)
def test_other_tests_run_the_old_way(test: str) -> None:
    assert plan_test(test) is None


def test_a_humaneval_check_function_splits_with_candidate_renamed() -> None:
    code = (
        'METADATA = {"author": "jt"}\n\n'
        "def check(candidate):\n"
        "    import math\n"
        "    assert candidate([1, 2]) == 3\n"
        "    assert True, 'debugging'\n"
        "    assert abs(candidate([0.5]) - 0.5) < 1e-6\n\n"
        "check(add)\n"
    )
    plan = plan_test(code)
    assert plan is not None
    assert plan.prelude == "import math"
    assert plan.holes == ["add([1, 2])", "add([0.5])"]
    assert judge(plan, [3, 0.5]) == "passed"
    assert judge(plan, [3, 0.6]) == "failed: AssertionError"


def test_a_check_function_calling_itself_is_not_split() -> None:
    """MBPP/56's test calls `check(70)` inside `check`: run the old way, that
    recursion fails; split, it would call the program's own `check`."""
    code = "def check(candidate):\n    assert check(70) == False\ncheck(rev)\n"
    assert plan_test(code) is None
    assert plan_test("M = 3\nassert f(M) == 1") is None


def test_the_judge_keeps_pythons_semantics() -> None:
    plan = plan_test("assert f(1) == 2")
    assert plan is not None
    assert judge(plan, [2.0]) == "passed"
    assert judge(plan, [True]) == "failed: AssertionError"
    ordered = plan_test("assert f(1) < 3")
    assert ordered is not None
    assert judge(ordered, [None]).startswith("error: TypeError")


def test_the_judge_does_no_unbounded_arithmetic() -> None:
    plan = plan_test("assert f(1) * 10 == 20")
    assert plan is not None
    assert judge(plan, [[0]]).startswith("error: TypeError")  # no list * int here
    assert judge(plan, [10**200]).startswith("error: OverflowError")


def test_malformed_values_are_refused() -> None:
    assert decode_value({"t": [1, {"s": [2]}]}) == (1, {2})
    for bad in ({"x": 1}, {"s": [[1]]}, {"t": 1, "s": 2}, {"d": [[1]]}):
        with pytest.raises(BadValue):
            decode_value(bad)


# -- forged passes, in a real sandbox ---------------------------------------------

WRONG = "def f(x):\n    return 'wrong'\n"
FORGERIES = {
    "always-equal object": (
        "class Yes:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = object.__hash__\n"
        "def f(x):\n"
        "    return Yes()\n"
    ),
    "frame walk rewriting the tests": (
        "import sys\n"
        "def f(x):\n"
        "    frame = sys._getframe(1)\n"
        "    while frame is not None:\n"
        "        job = frame.f_locals.get('job')\n"
        "        if isinstance(job, dict):\n"
        "            job['tests'] = ['pass'] * len(job['tests'])\n"
        "            job['evals'] = [None] * len(job['tests'])\n"
        "        frame = frame.f_back\n"
        "    return 'wrong'\n"
    ),
    "result lines written to the pipe": (
        "import os\n"
        "def f(x):\n"
        '    line = b\'{"event": "test", "index": 0, "status": "passed"}\\n\'\n'
        '    line += b\'{"event": "done"}\\n\'\n'
        "    for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
    ),
    "patched json.dumps": (
        "import json, sys\n"
        "_real = json.dumps\n"
        "def _fake(obj, *a, **k):\n"
        "    if isinstance(obj, dict) and obj.get('event') == 'test':\n"
        "        obj = dict(obj, status='passed')\n"
        "    return _real(obj, *a, **k)\n"
        "json.dumps = _fake\n"
        "sys.modules['__main__'].json.dumps = _fake\n"
        "def f(x):\n"
        "    return 'wrong'\n"
    ),
    # A forger that patches compile can make a call's value anything it
    # guesses, no more than a function returning a constant could; what it
    # can no longer do is turn the tests into `pass`.
    "patched compile": (
        "import builtins\n"
        "_real = builtins.compile\n"
        "builtins.compile = lambda src, name, mode, *a, **k: _real("
        "'pass' if mode == 'exec' else repr('wrong'), name, mode, *a, **k)\n"
        "def f(x):\n"
        "    return 'wrong'\n"
    ),
    "an int subclass equal to everything": (
        "class Int(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = int.__hash__\n"
        "def f(x):\n"
        "    return Int(7)\n"
    ),
}


@pytest.fixture(scope="module")
def box() -> Sandbox:
    with Sandbox(SandboxConfig(workers=2, per_test_timeout_s=2.0)) as sandbox:
        yield sandbox


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_no_forgery_passes_a_split_test(box: Sandbox, name: str) -> None:
    result = box.run(FORGERIES[name], ["assert f(1) == 2", "assert f(2) == 3"])
    assert result.trusted == [True, True]
    assert not any(result.passed), result.test_status


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_no_forgery_passes_hidden_tests(box: Sandbox, name: str) -> None:
    request = CodeRequest(
        id="r",
        prompt="def f(x):\n    '''x + 1'''\n",
        entry_point="f",
        reference_tests="def check(candidate):\n    assert candidate(1) == 2\n",
    )
    assert grade_many(box, [(request, FORGERIES[name])]) == [False]


def test_a_right_program_still_passes(box: Sandbox) -> None:
    right = "def f(x):\n    return x + 1\n"
    result = box.run(right, ["assert f(1) == 2", "assert f(2) == 4", "x = f(1)\nassert x == 2"])
    assert result.test_status == ["passed", "failed: AssertionError", "passed"]
    assert result.trusted == [True, True, True]  # the third judged apart


def test_values_come_back_as_plain_data(box: Sandbox) -> None:
    program = (
        "from collections import OrderedDict, namedtuple\n"
        "P = namedtuple('P', 'x y')\n"
        "def f(x):\n"
        "    return [x, (x, 'a'), {x}, OrderedDict(a=x), P(1, 2), 1.5, None, True, b'z']\n"
        "def g():\n"
        "    return object()\n"
    )
    result = box.values(program, ["f(1)", "g()", "h()"])
    assert result.test_status[0] == "ran"
    assert result.values[0] == [1, (1, "a"), {1}, {"a": 1}, (1, 2), 1.5, None, True, b"z"]
    assert result.test_status[1].startswith("error: _NotPlain: not plain data: object")
    assert result.test_status[2].startswith("error: NameError")


def test_imitation_cannot_be_forged_by_a_program_that_is_equal_to_everything(box: Sandbox) -> None:
    reference = "def f(x):\n    return x + 1\n"
    assert agreement(box, reference, FORGERIES["always-equal object"], ["f(1)", "f(2)"]) is False
    assert agreement(box, reference, "def f(x):\n    return 1 + x\n", ["f(1)", "f(2)"]) is True


def test_a_levels_summary_counts_passes_judged_inside_the_sandbox(box: Sandbox) -> None:
    from streamcascade.cascade.level import _summary

    result = box.run("def f(x):\n    return x + 1\n",
                     ["assert f(1) == 2", "y = f(1)\nassert y == 2", "assert f(1) == 5"])  # fmt: skip
    summary = _summary(result, [0, 1, 2])
    assert (summary.n_passed, summary.n_passed_untrusted) == (2, 0)
    result.trusted = [True, False, True]  # a result recorded before tests were judged apart
    assert _summary(result, [0, 1, 2]).n_passed_untrusted == 1


# Forgeries that replace what a test calls besides the function under test, or
# define a name the test reads: each beside the test it targets. Judged in the
# parent, none passes; a correct program gets the same verdict as before.
SHAPED = {
    "a replaced isinstance": (
        "import builtins\nbuiltins.isinstance = lambda *a: True\ndef f(x):\n    return 'wrong'\n",
        "assert isinstance(f(1), int)",
    ),
    "a replaced len": (
        "import builtins\nbuiltins.len = lambda *a: 2\ndef f(x):\n    return []\n",
        "assert len(f(1)) == 2",
    ),
    "a replaced math.isclose": (
        "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return -1.0\n",
        "import math\nassert math.isclose(f(2), 4.0)",
    ),
    "a list method replaced through the garbage collector": (
        "import gc\n"
        "gc.get_referents(list.__dict__)[0]['__eq__'] = lambda self, other: True\n"
        "def f(x):\n    return [0]\n",
        "assert f(1) == [1, 2]",
    ),
    "a name the test reads, defined by the program": (
        "EXPECTED = 'wrong'\ndef f(x):\n    return 'wrong'\n",
        "assert f(1) == EXPECTED",
    ),
    "a subscript on an object that lies": (
        "class L(list):\n    def __getitem__(self, i):\n        return 3\n"
        "def f(x):\n    return L()\n",
        "assert f(1)[0] == 3",
    ),
}


@pytest.mark.parametrize("name", sorted(SHAPED))
def test_no_forgery_of_what_a_test_calls_besides_the_function_passes(
    box: Sandbox, name: str
) -> None:
    program, test = SHAPED[name]
    result = box.run(program, [test])
    assert not result.passed[0], result.test_status
    assert result.trusted == [True]


def test_a_correct_program_passes_the_same_shapes_and_an_undefined_name_is_an_error(
    box: Sandbox,
) -> None:
    right = "import math\ndef f(x):\n    return [x, x + 1] if x < 0 else x * 2\n"
    tests = [
        "assert isinstance(f(1), int) and f(1) > 1",
        "assert len(f(-1)) == 2 and f(-1)[0] == -1",
        "import math\nassert math.isclose(f(2), 4.0)",
        "assert f(1) == EXPECTED",
    ]
    result = box.run(right, tests)
    assert result.test_status[:3] == ["passed"] * 3
    assert result.test_status[3] == "error: NameError: name 'EXPECTED' is not defined"


def test_the_regrade_check_reports_every_verdict_and_what_changed(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check run before and after a sandbox change, here on a few APPS tasks."""
    import json

    from streamcascade.benchtools.regrade import main

    ladder = shared_data / "apps-ladder-dev"
    if not ladder.is_dir():
        pytest.skip(f"{ladder} not found")
    out = tmp_path / "after.json"
    models = Path(__file__).parent.parent / "configs" / "ladders" / "apps.yaml"
    assert main([f"{ladder}={models}", "--out", str(out), "--limit", "3"]) == 0
    after = json.loads(out.read_text())["apps-ladder-dev"]
    assert len(after["correct"]) == 2 and all(len(c) == 3 for c in after["correct"])
    before = json.loads(out.read_text())
    first = next(iter(after["correct"][0]))
    before["apps-ladder-dev"]["correct"][0][first] = not after["correct"][0][first]
    (tmp_path / "before.json").write_text(json.dumps(before))
    capsys.readouterr()
    assert main(["--compare", str(tmp_path / "before.json"), str(out)]) == 0
    report = capsys.readouterr().out
    assert f"1 changed: {first}" in report and report.count("same") == 3


def test_the_regrade_check_says_in_one_line_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamcascade.benchtools.regrade import main

    with pytest.raises(SystemExit) as exit_info:
        main([f"{tmp_path / 'nope'}=configs/ladders/apps.yaml", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "ladder directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "No such file" in capsys.readouterr().err


# -- tests judged apart: a fork of the harness, the program's functions remote ----------

PROGRAM = (
    "class Bad(Exception):\n    pass\n"
    "LIMIT = 3\n"
    "def f(x):\n"
    "    if x < 0:\n        raise ValueError('negative')\n"
    "    if x == 99:\n        raise Bad('ninety-nine')\n"
    "    return x + 1\n"
    "def sort_in_place(xs):\n    xs.sort()\n"
    "def make():\n    return object()\n"
    "def helper(x):\n    return 2 * x\n"
)


@pytest.mark.parametrize(
    ("test", "status"),
    [
        ("for x in range(5):\n    assert f(x) == x + 1", "passed"),
        ("for x in range(5):\n    assert f(x) == x", "failed: AssertionError"),
        # the program's other functions (HumanEval's `poly`, `encode_cyclic`) are its own
        ("y = helper(3)\nassert f(y) == 7", "passed"),
        ("try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False", "passed"),
        ("y = f(99)", "error: Bad: ninety-nine"),
        ("xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]", "passed"),
        # not callable: not the test's, so undefined, as for a program without it
        ("y = f(1)\nassert y < LIMIT", "error: NameError: name 'LIMIT' is not defined"),
        ("y = f(lambda: 1)", "error: TypeError: f: an argument that cannot be sent"),
        ("y = make()", "error: _NotPlain: not plain data: object"),
    ],
)
def test_a_test_that_cannot_be_split_is_judged_apart(box: Sandbox, test: str, status: str) -> None:
    assert plan_test(test) is None
    result = box.run(PROGRAM, [test])
    assert result.test_status[0].startswith(status), result.test_status
    assert result.trusted == [True]


def test_what_the_program_does_to_its_interpreter_stays_there(box: Sandbox) -> None:
    # Run in one interpreter, each of these tests would pass for this program.
    program = (
        "import builtins, sys\n"
        "builtins.len = lambda o, real=len: 7 if o == 'x' else real(o)\n"
        "builtins.EXPECTED = 'x'\n"
        "sys.modules['math'] = type(sys)('math')\n"
        "sys.modules['math'].isclose = lambda *a, **k: True\n"
        "def f(x):\n    return 'x'\n"
    )
    tests = [
        "y = f(1)\nassert len(y) == 7",
        "y = f(1)\nassert y == EXPECTED",
        "import math\ny = f(1)\nassert math.isclose(len(y), 3.0)",
    ]
    result = box.run(program, tests)
    assert result.test_status[0] == "failed: AssertionError"
    assert result.test_status[1].startswith("error: NameError")
    assert result.test_status[2] == "failed: AssertionError"
