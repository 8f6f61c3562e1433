"""Cost and quality accounting over a stream of answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamcascade.schemas import CascadeAnswer


@dataclass
class RunSummary:
    """What a run of one configuration over a stream came to."""

    name: str
    n_requests: int = 0
    n_graded: int = 0
    n_passed: int = 0
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    answered_at: Counter[int] = field(default_factory=Counter)
    n_dead_letters: int = 0

    def add(self, answer: CascadeAnswer, passed: bool | None) -> None:
        self.n_requests += 1
        self.cost_usd += answer.cost_usd
        self.tokens_in += answer.tokens_in
        self.tokens_out += answer.tokens_out
        # Model and sandbox seconds of every attempt: comparable whether the
        # attempts ran live or were replayed from a benchmark's cache.
        self.seconds += sum(a.generation_s + a.sandbox_s for a in answer.attempts)
        self.answered_at[answer.level] += 1
        if passed is not None:
            self.n_graded += 1
            self.n_passed += int(passed)

    @property
    def pass_at_1(self) -> float | None:
        return self.n_passed / self.n_graded if self.n_graded else None

    @property
    def mean_latency_s(self) -> float:
        return self.seconds / self.n_requests if self.n_requests else 0.0

    def share_at(self, level: int) -> float:
        return self.answered_at[level] / self.n_requests if self.n_requests else 0.0

    def as_dict(self, reference_cost_usd: float | None = None) -> dict[str, object]:
        return {
            "name": self.name,
            "n_requests": self.n_requests,
            "n_graded": self.n_graded,
            "pass_at_1": self.pass_at_1,
            "cost_usd": self.cost_usd,
            "cost_pct_of_top": 100 * self.cost_usd / reference_cost_usd
            if reference_cost_usd
            else None,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "mean_latency_s": self.mean_latency_s,
            "answered_at": {str(k): v for k, v in sorted(self.answered_at.items())},
            "n_dead_letters": self.n_dead_letters,
        }


def format_table(
    summaries: Sequence[RunSummary], levels: Sequence[int], reference_cost_usd: float | None
) -> str:
    """A plain-text table, one row per configuration."""
    header = ["configuration", "pass@1", "cost USD", "% of top", "latency s", "tok in", "tok out"]
    header += [f"@L{level}" for level in levels]
    rows = [header]
    for s in summaries:
        p1 = s.pass_at_1
        pct = 100 * s.cost_usd / reference_cost_usd if reference_cost_usd else None
        row = [
            s.name,
            f"{100 * p1:.1f}%" if p1 is not None else "-",
            f"{s.cost_usd:.6f}",
            f"{pct:.1f}%" if pct is not None else "-",
            f"{s.mean_latency_s:.2f}",
            str(s.tokens_in),
            str(s.tokens_out),
        ]
        row += [f"{100 * s.share_at(level):.0f}%" for level in levels]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
