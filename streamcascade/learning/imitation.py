"""Imitation labels from a higher level's answer, by differential testing.

When a higher level ran, its answer labels what a lower level did: the lower
answer counts as right when it behaves like the higher one. Behaviour is
compared on probe inputs: the arguments of every call to the entry point in
the request's tests, plus mutations of them (neighbouring numbers, reversed,
shortened and empty sequences, ...), because the tests a level already passed
cannot tell two passing programs apart. Both programs run every probe in the
sandbox, which copies each return value out as plain data (`Sandbox.values`),
and the values are compared here, not inside the process that ran the
program: a program cannot forge agreement. Probes on which the higher answer
raises, times out or returns something that is not plain data (or over 1 MB)
say nothing and are skipped.
"""

from __future__ import annotations

import ast
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from streamcascade.pyparse import parse
from streamcascade.sandbox import Sandbox


def normalised(value: Any) -> Any:
    """A plain value with harmless differences removed: floats rounded (noise),
    sets and dicts in a fixed order (per-process string hash order)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return type(value)(normalised(x) for x in value)
    if isinstance(value, (set, frozenset)):
        return ("set", sorted(repr(normalised(x)) for x in value))
    if isinstance(value, dict):
        return (
            "dict",
            sorted((repr(normalised(k)), repr(normalised(v))) for k, v in value.items()),
        )
    return value


def _mutations(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 0, -value, value * 2 + 3]
    if isinstance(value, float):
        return [value * 2, -value, 0.0, value + 0.5]
    if isinstance(value, str):
        return [value[::-1], value[1:], value + value[:1], "", value.upper(), value + " a1"]
    if isinstance(value, (list, tuple)):
        items = list(value)
        variants: list[list[Any]] = [items[::-1], items[1:], items + items[:1], []]
        with contextlib.suppress(TypeError):
            variants.append(sorted(items))
        return [type(value)(v) for v in variants]
    return []


def _literal_args(call: ast.Call) -> tuple[list[Any], dict[str, Any]] | None:
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return args, kwargs


def _render(entry_point: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{entry_point}({', '.join(parts)})"


def probe_calls(
    tests: Sequence[str], entry_point: str, max_probes: int = 16, seed: int = 0
) -> list[str]:
    """Call expressions of the entry point: those in `tests`, then one-argument
    mutations of them, deduplicated, at most `max_probes`."""
    seen: list[tuple[list[Any], dict[str, Any]]] = []
    for test in tests:
        try:
            tree = parse(test)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == entry_point
            ):
                literal = _literal_args(node)
                if literal is not None:
                    seen.append(literal)
    originals = list(dict.fromkeys(_render(entry_point, *s) for s in seen))
    mutated: list[str] = []
    for args, kwargs in seen:
        for position, value in enumerate(args):
            for variant in _mutations(value):
                changed = list(args)
                changed[position] = variant
                mutated.append(_render(entry_point, changed, kwargs))
    mutated = [m for m in dict.fromkeys(mutated) if m not in originals and len(m) < 2_000]
    random.Random(seed).shuffle(mutated)
    return (originals + mutated)[:max_probes]


def agreement(
    sandbox: Sandbox, reference_code: str, candidate_code: str, calls: Sequence[str]
) -> bool | None:
    """Whether `candidate_code` returns what `reference_code` returns on every
    probe where the reference returns something; None when no probe says anything
    (no calls, or the reference fails them all)."""
    if not calls or not reference_code.strip():
        return None
    if not candidate_code.strip():
        return False
    if candidate_code == reference_code:
        return True
    reference, candidate = sandbox.values_many([(reference_code, calls), (candidate_code, calls)])
    if reference.load_status != "ok":
        return None
    informative = [i for i, s in enumerate(reference.test_status) if s == "ran"]
    if not informative:
        return None
    if candidate.load_status != "ok":
        return False
    return all(
        candidate.test_status[i] == "ran"
        and normalised(candidate.values[i]) == normalised(reference.values[i])
        for i in informative
    )
