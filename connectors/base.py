"""What sources and sinks are: the `streamcascade.sources` and
`streamcascade.sinks` entry points name factories of these, so that the
command line opens any installed pair by name (`run --source NAME --sink
NAME`) and the library never imports this package."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from pydantic import BaseModel

from streamcascade.schemas import CodeRequest, DeadLetter


@dataclass(frozen=True)
class Record:
    """One input record. Exactly one of `request` and `dead_letter` is set."""

    request: CodeRequest | None = None
    dead_letter: DeadLetter | None = None


class Source(Protocol):
    """Where requests come from, in order. A record that is not a request is
    yielded as a dead letter with its reason; reading goes on."""

    def records(self) -> Iterator[Record]: ...


class Sink(Protocol):
    """Where answers (or dead letters) go, one record at a time; what `write`
    returned from is durable (a crash after it loses nothing written)."""

    def write(self, record: BaseModel) -> None: ...

    def close(self) -> None: ...


class SourceFactory(Protocol):
    """An entry point of `streamcascade.sources`: `location` is what the user
    named (`--input`, or None), `limit` how many requests are wanted (None:
    all). It checks what it can before any model loads: a location that
    cannot be read is an `InputError` here, not mid-stream."""

    def __call__(self, location: str | None, limit: int | None) -> Source: ...


class SinkFactory(Protocol):
    """An entry point of `streamcascade.sinks`: `location` is what the user
    named with `option` (`--out`, or None: `stream`, stdout by default). It
    checks that it can write there before any model loads."""

    def __call__(self, location: str | None, stream: IO[str] | None, option: str) -> Sink: ...
