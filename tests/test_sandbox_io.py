"""Whole programs on stdin/stdout in the real sandbox: every way a program may
read its input, output compared outside the child, limits per case."""

from __future__ import annotations

import pytest

from streamcascade.sandbox import Sandbox

CASES = [("1 2\n", "3\n"), ("10 -4\n", "6\n"), ("0 0\n", "0\n")]

READERS = {
    "input": "a, b = map(int, input().split())\nprint(a + b)\n",
    "sys.stdin": "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n",
    "open(0)": "a, b = map(int, open(0).read().split())\nprint(a + b)\n",
    "buffer": "import sys\na, b = map(int, sys.stdin.buffer.readline().split())\n"
    "sys.stdout.write(str(a + b) + '\\n')\n",
    "main guard": "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\n"
    "if __name__ == '__main__':\n    main()\n",
    "exit after print": "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)\n",
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_program_reads_its_input_every_usual_way(sandbox: Sandbox, reader: str) -> None:
    result = sandbox.run_io(READERS[reader], CASES)
    assert result.load_status == "ok"
    assert result.test_status == ["passed"] * 3, result
    assert [o.strip() for o in result.outputs if o is not None] == ["3", "6", "0"]


def test_wrong_output_errors_and_exit_codes_are_results(sandbox: Sandbox) -> None:
    program = (
        "a, b = map(int, input().split())\n"
        "if a == 10: raise ValueError('no')\n"
        "if a == 0: raise SystemExit(3)\n"
        "print(a - b)\n"
    )
    result = sandbox.run_io(program, CASES)
    assert result.test_status[0] == "failed: wrong output"
    assert result.test_status[1].startswith("error: ValueError: no")
    assert result.test_status[2] == "error: exit 3"


def test_output_is_compared_whitespace_normalised_and_floats_with_tolerance(
    sandbox: Sandbox,
) -> None:
    spaced = "print(' 1   2 ')\nprint()\nprint()\n"
    assert sandbox.run_io(spaced, [("", "1 2")]).test_status == ["passed"]
    third = "print(1 / 3)\n"
    assert sandbox.run_io(third, [("", "0.333333")]).test_status == ["failed: wrong output"]
    tolerant = sandbox.run_io(third, [("", "0.333333")], float_tolerance=1e-5)
    assert tolerant.test_status == ["passed"]


def test_a_hanging_case_times_out_and_the_flood_is_capped(sandbox: Sandbox) -> None:
    program = "n = int(input())\nif n == 1:\n    while True: pass\nprint('x' * n)\n"
    result = sandbox.run_io(program, [("5", "xxxxx"), ("1", ""), ("10000000", "")])
    assert result.test_status[:2] == ["passed", "timed out"]
    assert result.test_status[2] == "failed: wrong output"
    assert len(result.outputs[2] or "") <= 16384


def test_a_syntax_error_fails_the_load_and_each_state_is_fresh_per_case(
    sandbox: Sandbox,
) -> None:
    assert sandbox.run_io("print(", CASES).load_status.startswith("error: SyntaxError")
    counting = "import builtins\nseen = globals().get('seen', 0) + 1\nprint(seen)\n"
    result = sandbox.run_program(counting, ["", ""])
    assert result.test_status == ["ran", "ran"] and result.outputs == ["1\n", "1\n"]


def test_a_program_that_writes_the_result_protocol_itself_passes_nothing(sandbox: Sandbox) -> None:
    """Its forged "passed" cases (hidden ones included) are dropped: a case
    passes only by the parent's comparison of what the program printed."""
    program = (
        "import os\n"
        "for i in range(3):\n"
        '    line = \'\\n{"event": "case", "index": %d, "status": "passed", '
        '"stdout": ""}\\n\' % i\n'
        "    for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n"
        "        try:\n"
        "            os.write(fd, line.encode())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    result = sandbox.run_io(program, CASES)
    assert result.test_status == ["failed: wrong output"] * 3, result.test_status


def test_each_case_runs_in_a_fresh_process_and_exit_0_after_printing_is_an_answer(
    sandbox: Sandbox,
) -> None:
    # What one case leaves in the interpreter (a module attribute, a patched
    # built-in) the next does not see; `os._exit(0)` once the output is out
    # ends the case normally.
    program = (
        "import builtins, os, sys\n"
        "builtins.seen = getattr(builtins, 'seen', 0) + 1\n"
        "a, b = map(int, input().split())\n"
        "print(a + b * builtins.seen)\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    result = sandbox.run_io(program, CASES)
    assert result.test_status == ["passed"] * 3, result.test_status
