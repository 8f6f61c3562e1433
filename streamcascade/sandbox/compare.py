"""Comparing a program's stdout with the expected output, on the trusted side."""

from __future__ import annotations

import math


def output_tokens(text: str) -> list[list[str]]:
    """Lines of whitespace-separated tokens; blank lines at the end do not count."""
    lines = [line.split() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _same_token(actual: str, expected: str, float_tolerance: float | None) -> bool:
    if actual == expected:
        return True
    if float_tolerance is None:
        return False
    try:
        a, e = float(actual), float(expected)
    except ValueError:
        return False
    return math.isclose(a, e, rel_tol=float_tolerance, abs_tol=float_tolerance)


def same_output(actual: str, expected: str, float_tolerance: float | None = None) -> bool:
    """Whether two outputs match once whitespace is normalised (runs of spaces,
    trailing spaces, CRLF, blank lines at the end); with `float_tolerance`,
    numbers may differ by that much (absolute or relative).

    >>> same_output("1 2\\n3\\n\\n", "1  2\\r\\n3")
    True
    >>> same_output("0.3333333", "0.333333333", float_tolerance=1e-6)
    True
    >>> same_output("YES", "yes")
    False
    """
    got, want = output_tokens(actual), output_tokens(expected)
    if len(got) != len(want):
        return False
    return all(
        len(g) == len(w)
        and all(_same_token(a, e, float_tolerance) for a, e in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )
