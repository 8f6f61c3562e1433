"""`ast.parse` for the whole process, one call at a time.

CPython 3.11 before 3.11.8 keeps the AST constructor's recursion depth in
interpreter-wide state (python/cpython#106905): two threads parsing at once can
corrupt it, and `ast.parse` then raises a spurious SystemError ("AST
constructor recursion depth mismatch"). The service parses tests on the
sandbox's threads while the engine's threads extract code, and a fresh-clone
test run met it, so every parse in this package takes one lock, and a
SystemError is retried once.

>>> type(parse("assert f(1) == 2").body[0]).__name__
'Assert'
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str) -> ast.Module:
    with _LOCK:
        try:
            return ast.parse(source)
        except SystemError:
            return ast.parse(source)
