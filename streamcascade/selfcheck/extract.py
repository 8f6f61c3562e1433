"""Turning model text into programs and assert lines.

Models answer with prose, code blocks, examples and `print` calls around the
function. A program here is only what defining the function needs: imports,
definitions and constant assignments, taken from the source as written.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable, Sequence

from streamcascade.pyparse import parse

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_BUILTIN_NAMES = frozenset(dir(builtins))
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def code_blocks(text: str) -> list[str]:
    """Fenced code blocks, python (or unlabeled) ones only, in order. An unclosed
    last fence counts: generation often stops at max_tokens inside one."""
    blocks = []
    for match in _FENCE.finditer(text):
        language = match.group(1).lower()
        if language in ("", "python", "py", "python3"):
            blocks.append(match.group(2))
    return blocks


def _parse_prefix(source: str) -> ast.Module | None:
    """Parse the longest prefix of whole lines that parses (a cut-off generation
    loses only its unfinished tail)."""
    lines = source.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            return parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
    return None


def _is_constant_assignment(node: ast.stmt) -> bool:
    if not isinstance(node, ast.Assign | ast.AnnAssign):
        return False
    value = node.value
    # Calls at module level could do anything (print, input, run the examples).
    return value is not None and not any(isinstance(n, ast.Call) for n in ast.walk(value))


def sanitize(source: str) -> str:
    """Keep top-level imports, definitions and call-free assignments, verbatim."""
    tree = _parse_prefix(source)
    if tree is None:
        return ""
    lines = source.splitlines()
    kept: list[str] = []
    for node in tree.body:
        if isinstance(node, _KEEP) or _is_constant_assignment(node):
            start = node.lineno
            decorators = getattr(node, "decorator_list", [])
            if decorators:
                start = min(d.lineno for d in decorators)
            end = node.end_lineno or node.lineno
            text = "\n".join(lines[start - 1 : end])
            if isinstance(node, ast.Import | ast.ImportFrom) and text in kept:
                continue  # the prompt's preamble and the answer often import the same
            kept.append(text)
    return "\n\n".join(kept) + ("\n" if kept else "")


def _defines(source: str, entry_point: str) -> bool:
    return (
        re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", source, re.M) is not None
    )


def _prompt_preamble(prompt: str, entry_point: str) -> str:
    """What the prompt defines before the entry point: imports and helpers."""
    match = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
    return prompt[: match.start()] if match else ""


def extract_program(completion: str, prompt: str, entry_point: str) -> str:
    """The program a completion stands for.

    A completion that defines `entry_point` (in a code block or as raw text) is
    a whole program; the prompt's imports and helpers are put in front of it.
    Otherwise it is taken as the body that continues the prompt.
    """
    blocks = code_blocks(completion)
    candidates = [b for b in blocks if _defines(b, entry_point)]
    if candidates:
        code = candidates[0]
    elif blocks:
        code = blocks[0]
    else:
        code = completion
    if _defines(code, entry_point):
        source = _prompt_preamble(prompt, entry_point) + "\n" + code
    else:
        source = prompt + code
    return sanitize(source)


def _tolerant(line: str) -> str:
    """`assert f(x) == 0.99` fails on 0.9900000000000002; a model writing the test
    means equal up to rounding, so a comparison with a float literal becomes
    math.isclose. Everything else is left exactly as written."""
    try:
        node = parse(line).body[0]
    except (SyntaxError, IndexError):
        return line
    if not isinstance(node, ast.Assert):
        return line
    test = node.test
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
    ):
        return line
    left, right = test.left, test.comparators[0]
    if not any(
        (isinstance(side, ast.Constant) and isinstance(side.value, float))
        or (
            isinstance(side, ast.UnaryOp)
            and isinstance(side.operand, ast.Constant)
            and isinstance(side.operand.value, float)
        )
        for side in (left, right)
    ):
        return line
    message = f", {ast.unparse(node.msg)}" if node.msg is not None else ""
    return (
        f"assert __import__('math').isclose({ast.unparse(left)}, {ast.unparse(right)}, "
        f"rel_tol=1e-6, abs_tol=1e-9){message}"
    )


_ASSERT_START = re.compile(r"(?:^|\n)[ \t]*assert\b")


def extract_asserts(text: str, entry_point: str, max_lines: int) -> list[str]:
    """At most `max_lines` asserts that call `entry_point` and compile, each put
    on one line. An assert a model wrapped over several lines is joined, and
    trailing text after it is cut, so both chat answers and raw continuations
    (CodeT's samples continue "assert ") yield tests."""
    blocks = code_blocks(text)
    source = "\n".join(blocks) if blocks else text
    call = re.compile(rf"\b{re.escape(entry_point)}\s*\(")
    asserts: list[str] = []
    starts = [m.end() for m in _ASSERT_START.finditer(source)]
    for i, begin in enumerate(starts):
        stop = starts[i + 1] - len("assert") if i + 1 < len(starts) else len(source)
        lines = [line.strip() for line in source[begin:stop].splitlines()]
        lines = [line for line in lines if line]
        for count in range(min(len(lines), 8), 0, -1):
            candidate = "assert " + " ".join(lines[:count])
            if not call.search(candidate):
                continue
            try:
                compile(candidate, "<test>", "exec")
            except SyntaxError:
                continue
            asserts.append(_tolerant(candidate))
            break
        if len(asserts) >= max_lines:
            break
    return asserts


def normalize_assert(line: str) -> str:
    """A key under which equivalent asserts dedupe (formatting differences only)."""
    try:
        return ast.dump(parse(line))
    except SyntaxError:
        return " ".join(line.split())


def pool_tests(
    groups: Sequence[Sequence[str]], key: Callable[[str], str] | None = None
) -> list[str]:
    """Concatenate test lists, dropping tests equal by `key` (default: asserts
    equal up to formatting), keeping first-seen order."""
    same = key or normalize_assert
    seen: set[str] = set()
    pooled: list[str] = []
    for group in groups:
        for test in group:
            k = same(test)
            if k not in seen:
                seen.add(k)
                pooled.append(test)
    return pooled


_DOCTEST = re.compile(r"^\s*>>>\s*(?P<call>.+?)\s*\n\s*(?P<want>[^\n>][^\n]*?)\s*$", re.M)
_ARROW = re.compile(
    r"^\s*(?:for\s+)?(?P<call>[A-Za-z_][\w.]*\(.*\))\s*"
    r"(?:==>|==|=>|➞|->|→|=|should\s+return|returns?)\s*(?P<want>.+?)\s*$",
    re.M,
)


def examples_as_asserts(prompt: str, entry_point: str) -> list[str]:
    """Visible tests from a docstring's examples: doctest (`>>> f(x)` then the
    value) or `f(x) == y`, `f(x) ==> y`, `f(x) ➞ y`, `f(x) should return y`
    lines. Only those that call `entry_point` and compile are kept."""
    found: list[str] = []
    calls = re.compile(rf"\b{re.escape(entry_point)}\s*\(")
    for pattern in (_DOCTEST, _ARROW):
        for match in pattern.finditer(prompt):
            call = match.group("call").split(" #", 1)[0].strip()
            want = match.group("want").split(" #", 1)[0].strip().rstrip(".,;")
            if not calls.search(call) or call.startswith(("def ", "return ")):
                continue
            line = f"assert {call} == {want}"
            try:
                tree = parse(line)
            except SyntaxError:
                continue
            # `fib4(n)` or `is_happy(abcd)` in prose are not runnable examples.
            names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            if names - {entry_point} - _BUILTIN_NAMES:
                continue
            found.append(line)
    return pool_tests([found])
