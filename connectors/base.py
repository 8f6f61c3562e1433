"""What a Source yields: a parsed request, or the raw record and why it is bad."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from streamcascade.schemas import CodeRequest, DeadLetter


@dataclass(frozen=True)
class Record:
    """One input record. Exactly one of `request` and `dead_letter` is set."""

    request: CodeRequest | None = None
    dead_letter: DeadLetter | None = None


class Source(Protocol):
    def records(self) -> Iterator[Record]: ...
