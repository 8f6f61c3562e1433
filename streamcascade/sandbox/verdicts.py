"""Verdicts decided outside the process that runs the untrusted program.

A program shares its process with whatever runs its tests there, so anything
decided in that process can be forged: an object whose ``__eq__`` is always
true, a frame walk that rewrites the tests, a fake result line. So for the
common assert shapes the child is asked only for the values of the calls (as
plain data: numbers, strings, lists, tuples, sets, dicts, never objects), and
the comparison is made here, in the trusted parent. The child never sees the
expected values, so it cannot forge them; it can only report values.

``assert f(1) == 2`` becomes the hole ``f(1)``, evaluated in the child, and the
judgement ``_h0 == 2``, evaluated here by a small evaluator that knows
literals, comparisons, boolean logic, arithmetic on numbers and a few pure
functions (``abs``, ``len``, ``sorted``, ``set``, ``math.isclose``, ...). Any
subexpression it does not know is a hole. A test it cannot split this way (a
loop, an assignment, a comparison inside a hole) runs the old way, in the
child, and its result says it was trusted less.

HumanEval's ``def check(candidate): assert ...`` followed by ``check(f)``
splits too, when its body is asserts (and imports, which the child runs first).

Examples
--------
>>> plan = plan_test("assert abs(f(1.5) - 2.25) < 1e-6, 'f is wrong'")
>>> plan.holes
['f(1.5)']
>>> judge(plan, [2.25])
'passed'
>>> judge(plan, [2.0])
'failed: AssertionError'
>>> plan_test("for x in range(3): assert f(x) == x") is None
True
>>> decode_value(encode_for_test((1, [2.5, "a"], {3: None}, {True})))
(1, [2.5, 'a'], {3: None}, {True})
"""

from __future__ import annotations

import ast
import builtins
import functools
import itertools
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamcascade.pyparse import parse

__all__ = [
    "MAX_VALUE_BYTES",
    "BadValue",
    "TestPlan",
    "decode_value",
    "judge",
    "plan_test",
]

MAX_VALUE_BYTES = 1 << 20
"""A hole's value, encoded, beyond which the child reports an error instead."""

_MAX_INT = 10**100


class BadValue(Exception):
    """A value from the child that is not well-formed plain data."""


@dataclass(frozen=True)
class TestPlan:
    """How to run one test: the child evaluates `prelude` then each hole; the
    parent judges `asserts` (expressions over `_h0`, `_h1`, ...)."""

    prelude: str
    holes: list[str]
    asserts: list[ast.expr]


# -- splitting a test -------------------------------------------------------------

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "len": len, "set": set, "frozenset": frozenset, "sorted": sorted,
    "list": list, "tuple": tuple, "round": round, "min": min, "max": max, "sum": sum,
    "str": str, "int": int, "float": float, "bool": bool, "all": all, "any": any,
    "repr": repr, "dict": dict,
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple,
    "dict": dict, "set": set, "frozenset": frozenset, "complex": complex, "bytes": bytes,
}  # fmt: skip
"""Types a test may check a value against: the values come back as exactly these."""
_JUDGE_ONLY: dict[str, Callable[..., Any]] = {
    "isinstance": lambda value, kinds: isinstance(value, kinds),
    "type": type,
}
"""Built-ins the parent evaluates on plain values (never in the child: the
program may have replaced them there)."""
_BUILTIN_NAMES = frozenset(dir(builtins))
_MATH: dict[str, Any] = {
    "isclose": math.isclose, "fabs": math.fabs, "sqrt": math.sqrt, "floor": math.floor,
    "ceil": math.ceil, "inf": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e,
}  # fmt: skip
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_,
    ast.IsNot: operator.is_not, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip
_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}  # fmt: skip
# Inside a hole these would move a comparison (or a value the parent cannot
# see, like a generator) into the child: such a test is not split.
_NOT_IN_HOLES = (ast.Compare, ast.BoolOp, ast.Lambda, ast.ListComp, ast.SetComp,
                 ast.DictComp, ast.GeneratorExp, ast.NamedExpr, ast.Await, ast.Yield,
                 ast.YieldFrom)  # fmt: skip


class _NotSplittable(Exception):
    pass


def _is_math(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "math"
        and node.attr in _MATH
    )


def _is_literal(node: ast.expr) -> bool:
    """Data written out in the test: building it in the child calls nothing
    the program could have replaced."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_literal(k) for k in node.keys) and all(
            _is_literal(v) for v in node.values
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return isinstance(node.operand, ast.Constant)
    return False


class _Splitter:
    """`imported`: names the test's own imports bind (not the program's)."""

    def __init__(self, imported: frozenset[str] = frozenset()) -> None:
        self.holes: list[str] = []
        self.imported = imported

    def hole(self, node: ast.expr) -> ast.expr:
        """Only a call of the program's own function on literal data is asked of
        the child: anything more (a built-in, a library helper, a method, a
        name it reads) would be evaluated in an interpreter the program has
        had the run of, so such a test is not split (and not trusted)."""
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in _BUILTIN_NAMES
            and node.func.id not in self.imported
            and all(_is_literal(a) for a in node.args)
            and all(k.arg is not None and _is_literal(k.value) for k in node.keywords)
        ):
            raise _NotSplittable
        self.holes.append(ast.unparse(node))
        return ast.Name(id=f"_h{len(self.holes) - 1}", ctx=ast.Load())

    def split(self, node: ast.expr) -> ast.expr:
        """The node with every subexpression the parent cannot evaluate made a hole."""
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Name):
            if node.id in _TYPES or node.id in _FUNCTIONS:
                return node  # a type or pure function, resolved in the parent
            if node.id in _BUILTIN_NAMES or node.id in self.imported:
                raise _NotSplittable
            # A name the test reads but never defines: the parent raises
            # NameError, as running the test without the program's help would.
            return ast.Name(id=f"_undefined_{node.id}", ctx=ast.Load())
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            return ast.Subscript(value=self.split(node.value), slice=self.split(node.slice),
                                 ctx=ast.Load())  # fmt: skip
        if isinstance(node, ast.Set):
            return ast.Set(elts=[self.split(e) for e in node.elts])
        if isinstance(node, (ast.List, ast.Tuple)):
            return type(node)(elts=[self.split(e) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return self.hole(node)
            return ast.Dict(
                keys=[self.split(k) for k in node.keys if k is not None],
                values=[self.split(v) for v in node.values],
            )
        if isinstance(node, ast.Compare):
            if not all(type(op) in _COMPARE for op in node.ops):
                raise _NotSplittable
            return ast.Compare(
                left=self.split(node.left), ops=node.ops,
                comparators=[self.split(c) for c in node.comparators],
            )  # fmt: skip
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.split(v) for v in node.values])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            return ast.UnaryOp(op=node.op, operand=self.split(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return ast.BinOp(left=self.split(node.left), op=node.op, right=self.split(node.right))
        if _is_math(node) and "math" in self.imported:
            return node
        if (
            isinstance(node, ast.Call)
            and not any(isinstance(a, ast.Starred) for a in node.args)
            and all(k.arg is not None for k in node.keywords)
        ):
            known = (
                isinstance(node.func, ast.Name)
                and (node.func.id in _FUNCTIONS or node.func.id in _JUDGE_ONLY)
                and node.func.id not in self.imported
            ) or (_is_math(node.func) and "math" in self.imported)
            if known:
                return ast.Call(
                    func=node.func,
                    args=[self.split(a) for a in node.args],
                    keywords=[
                        ast.keyword(arg=k.arg, value=self.split(k.value)) for k in node.keywords
                    ],
                )
        return self.hole(node)


def _check_function(tree: ast.Module) -> tuple[list[ast.stmt], str, str] | None:
    """(body, parameter, function passed) of `def check(p): ...` + `check(f)`."""
    body = [s for s in tree.body if not _is_inert(s)]
    if len(body) != 2:
        return None
    define, call = body
    if not (
        isinstance(define, ast.FunctionDef)
        and define.name == "check"
        and len(define.args.args) == 1
        and not define.decorator_list
        and isinstance(call, ast.Expr)
        and isinstance(call.value, ast.Call)
        and isinstance(call.value.func, ast.Name)
        and call.value.func.id == "check"
        and len(call.value.args) == 1
        and not call.value.keywords
        and isinstance(call.value.args[0], ast.Name)
    ):
        return None
    return define.body, define.args.args[0].arg, call.value.args[0].id


def _is_inert(statement: ast.stmt) -> bool:
    """A docstring, `pass`, or HumanEval's `METADATA = {...}`: nothing to run."""
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True
    names = isinstance(statement, ast.Assign) and all(
        isinstance(t, ast.Name) for t in statement.targets
    )
    if isinstance(statement, ast.Assign) and names:
        try:
            ast.literal_eval(statement.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
        return True
    return False


def _is_import(statement: ast.stmt) -> bool:
    return isinstance(statement, (ast.Import, ast.ImportFrom))


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.new, ctx=node.ctx) if node.id == self.old else node


@functools.lru_cache(maxsize=8192)
def plan_test(test: str) -> TestPlan | None:
    """How to run `test` with the verdict made here, or None: run it the old way."""
    try:
        tree = parse(test)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    statements: list[ast.stmt] = [s for s in tree.body if not _is_inert(s)]
    found = _check_function(tree)
    if found is not None:
        body, parameter, function = found
        renamed = _Rename(parameter, function)
        statements = [renamed.visit(s) for s in body if not _is_inert(s)]
    prelude = [s for s in itertools.takewhile(_is_import, statements)]
    imported = frozenset(
        (alias.asname or alias.name).split(".")[0]
        for statement in prelude
        for alias in statement.names  # type: ignore[attr-defined]
    )
    splitter = _Splitter(imported)
    asserts: list[ast.expr] = []
    for statement in statements[len(prelude) :]:
        if isinstance(statement, ast.Assert):
            try:
                asserts.append(splitter.split(statement.test))
            except (_NotSplittable, RecursionError):
                return None
        else:
            return None
    if not asserts or not splitter.holes:
        return None
    # Names the test itself defines (`check`, `METADATA`) would not exist, or
    # would be the program's, where the child evaluates a hole.
    own = {"check"} if found is not None else set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            own.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    for hole in splitter.holes:
        if any(isinstance(n, ast.Name) and n.id in own for n in ast.walk(parse(hole))):
            return None
    source = ast.unparse(ast.Module(body=prelude, type_ignores=[])) if prelude else ""
    return TestPlan(source, splitter.holes, asserts)


# -- judging ------------------------------------------------------------------------


def _number(value: Any) -> Any:
    if type(value) not in (int, float, bool):
        raise TypeError("arithmetic here is on numbers only")
    if type(value) is int and abs(value) > _MAX_INT:
        raise OverflowError("number too large to judge")
    return value


def _evaluate(node: ast.expr, holes: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in holes:
            return holes[node.id]
        known = _TYPES.get(node.id, _FUNCTIONS.get(node.id))
        if known is None:
            name = node.id.removeprefix("_undefined_")
            raise NameError(f"name {name!r} is not defined")
        return known
    if isinstance(node, ast.Subscript):
        return _evaluate(node.value, holes)[_evaluate(node.slice, holes)]
    if isinstance(node, ast.List):
        return [_evaluate(e, holes) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(e, holes) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_evaluate(e, holes) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {
            _evaluate(k, holes): _evaluate(v, holes)
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None
        }
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, holes)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, holes)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        result: Any = isinstance(node.op, ast.And)
        for value in node.values:
            result = _evaluate(value, holes)
            if bool(result) != isinstance(node.op, ast.And):
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, holes)
        if isinstance(node.op, ast.Not):
            return not operand
        return -_number(operand) if isinstance(node.op, ast.USub) else +_number(operand)
    if isinstance(node, ast.BinOp):
        left, right = _number(_evaluate(node.left, holes)), _number(_evaluate(node.right, holes))
        return _number(_ARITHMETIC[type(node.op)](left, right))
    if isinstance(node, ast.Attribute):
        return _MATH[node.attr]
    if isinstance(node, ast.Call):
        function = (
            _FUNCTIONS.get(node.func.id, _JUDGE_ONLY.get(node.func.id))
            if isinstance(node.func, ast.Name)
            else (_MATH[node.func.attr] if isinstance(node.func, ast.Attribute) else None)
        )
        if function is None:
            raise TypeError("not a function the judge knows")
        args = [_evaluate(a, holes) for a in node.args]
        kwargs = {k.arg: _evaluate(k.value, holes) for k in node.keywords if k.arg}
        return function(*args, **kwargs)
    raise TypeError(f"cannot judge {type(node).__name__}")


def judge(plan: TestPlan, values: Sequence[Any]) -> str:
    """The test's status from its holes' values: "passed", "failed: ..." or
    "error: ..." (what raised here would have raised in the child too)."""
    holes = {f"_h{i}": value for i, value in enumerate(values)}
    for node in plan.asserts:
        try:
            if not _evaluate(node, holes):
                return "failed: AssertionError"
        except Exception as error:
            return f"error: {type(error).__name__}: {str(error)[:200]}"
    return "passed"


# -- values from the child ------------------------------------------------------------


def decode_value(data: Any, depth: int = 0) -> Any:
    """Plain data from the child's JSON (see `_harness._plain`): lists are JSON
    arrays, other containers tagged objects. Raises `BadValue`."""
    if depth > 200:
        raise BadValue("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode_value(x, depth + 1) for x in data]
    if type(data) is dict and len(data) == 1:
        ((tag, inner),) = data.items()
        try:
            if tag == "t":
                return tuple(decode_value(x, depth + 1) for x in inner)
            if tag == "s":
                return {decode_value(x, depth + 1) for x in inner}
            if tag == "fs":
                return frozenset(decode_value(x, depth + 1) for x in inner)
            if tag == "d":
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in inner}
            if tag == "b":
                return bytes.fromhex(inner)
            if tag == "c":
                return complex(float(inner[0]), float(inner[1]))
        except (TypeError, ValueError) as error:
            raise BadValue(f"malformed {tag!r} value: {error}") from None
    raise BadValue(f"not a plain value: {str(data)[:80]}")


def encode_for_test(value: Any) -> Any:
    """The child's encoding, for tests and doctests here (the child has its own
    copy: it imports nothing from streamcascade)."""
    from streamcascade.sandbox import _harness

    return json.loads(json.dumps(_harness._plain(value, [1_000_000], 0)))
