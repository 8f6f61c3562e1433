"""Scoring solutions by how they fare on the pooled generated tests.

`passed[i][j]` says whether solution i passed test j.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ScoringRule = Literal["pass_rate", "dual_agreement"]


@dataclass(frozen=True)
class Selection:
    """The chosen solution and the acceptance score the threshold is compared with."""

    index: int
    score: float
    # For dual agreement: size of the chosen consensus set and tests it passes.
    consensus_solutions: int = 1
    consensus_tests: int = 0


def pass_rates(passed: Sequence[Sequence[bool]]) -> list[float]:
    return [sum(row) / len(row) if row else 0.0 for row in passed]


def select_by_pass_rate(passed: Sequence[Sequence[bool]]) -> Selection:
    """The seed paper's rule: the highest pass rate wins; ties go to the earlier
    solution (the greedy one when solution 0 is greedy)."""
    if not passed:
        raise ValueError("no solutions to select from")
    rates = pass_rates(passed)
    best = max(range(len(rates)), key=lambda i: (rates[i], -i))
    return Selection(index=best, score=rates[best], consensus_tests=sum(passed[best]))


def select_by_dual_agreement(passed: Sequence[Sequence[bool]]) -> Selection:
    """CodeT's dual execution agreement: solutions that pass exactly the same tests
    form a consensus set, scored by (#solutions in it) x (#tests they pass); the
    best set's first solution wins. Its acceptance score is that solution's pass
    rate, so thresholds mean the same under both rules."""
    if not passed:
        raise ValueError("no solutions to select from")
    groups: dict[tuple[bool, ...], list[int]] = {}
    for i, row in enumerate(passed):
        groups.setdefault(tuple(row), []).append(i)
    signature, members = max(
        groups.items(), key=lambda item: (len(item[1]) * sum(item[0]), -item[1][0])
    )
    best = members[0]
    rate = sum(signature) / len(signature) if signature else 0.0
    return Selection(
        index=best, score=rate, consensus_solutions=len(members), consensus_tests=sum(signature)
    )


def select(passed: Sequence[Sequence[bool]], rule: ScoringRule) -> Selection:
    if rule == "pass_rate":
        return select_by_pass_rate(passed)
    return select_by_dual_agreement(passed)
